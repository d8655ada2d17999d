"""A Flax Linen character LM whose parameters carry Linen's automatic names.

Every submodule is created inline in ``@nn.compact`` methods, so the tree an
optimizer sees is ``Embed_0``, ``Block_0/Dense_0`` (fused qkv), ``Dense_1``
(attention out), ``LayerNorm_0``, ..., and the read-out is just the last
``Dense_N``: no name says "embedding" or "head" beyond Linen's ``embedding``
leaf. Data: the docstrings of numpy's public names (sorted by name; real
English and code that ships with numpy), characters as in ``char_lm``, last
10% held out. d_model 64, 2 layers, 4 heads, context 64, batch 16, 300 steps.
Targets: train cross-entropy, held-out cross-entropy and accuracy.
"""

import functools
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.suite.workload import Workload, text_batches, text_held_out, text_split
from examples import char_lm

BATCH, CONTEXT, CORPUS_CHARS = 16, 64, 600_000


def corpus() -> str:
  """numpy's public docstrings in name order, the first ``CORPUS_CHARS`` characters."""
  docs = (inspect.getdoc(getattr(np, name)) or "" for name in sorted(dir(np))
          if not name.startswith("_"))
  return "\n".join(docs)[:CORPUS_CHARS]


class Block(nn.Module):
  """Pre-norm block: causal attention from one fused Dense, a GELU MLP."""

  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, d_model = x.shape
    qkv = nn.Dense(3 * d_model)(nn.LayerNorm()(x)).reshape(batch, length, 3, self.num_heads, -1)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True)
    x = x + nn.Dense(d_model)(out.reshape(batch, length, d_model))
    return x + nn.Dense(d_model)(jax.nn.gelu(nn.Dense(4 * d_model)(nn.LayerNorm()(x))))


class LinenLM(nn.Module):
  """Token embedding plus learned positions, blocks, a final norm and Dense."""

  d_model: int
  num_layers: int
  num_heads: int

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(char_lm.VOCAB_SIZE, self.d_model)(tokens)
    positions = self.param("positions", nn.initializers.normal(0.02), (CONTEXT, self.d_model))
    x = x + positions[: tokens.shape[-1]]
    for _ in range(self.num_layers):
      x = Block(self.num_heads)(x)
    return nn.Dense(char_lm.VOCAB_SIZE)(nn.LayerNorm()(x))


def linen_init(model: nn.Module):
  """``init`` for a Linen model: its ``params`` collection and ``apply`` (host-cached
  per seed, a fresh device copy per call, as ``workload.nnx_model``)."""

  @functools.cache
  def built(seed: int):
    dummy = jnp.zeros((1, CONTEXT), jnp.int32)
    return jax.device_get(jax.jit(model.init)(jax.random.key(seed), dummy)["params"])

  return lambda seed: (jax.device_put(built(seed)), lambda p, x: model.apply({"params": p}, x))


@functools.cache
def workload(steps: int = 300, d_model: int = 64, num_layers: int = 2) -> Workload:
  train, held_out = text_split(corpus())
  return Workload(
      name="linen_lm", family="linen transformer",
      description=f"Linen char LM d{d_model}x{num_layers} (automatic names) on numpy docstrings",
      init=linen_init(LinenLM(d_model, num_layers, 4)),
      batches=text_batches(train, BATCH, CONTEXT),
      held_out=text_held_out(held_out, BATCH, CONTEXT),
      steps=steps,
  )
