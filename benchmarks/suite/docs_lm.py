"""A transformer from Flax's own modules on Python's documentation.

``nnx.Embed`` (tokens and positions), pre-norm blocks of
``nnx.MultiHeadAttention`` (causal mask; (in, heads, head_dim) query/key/value
kernels) and an ``nnx.Linear`` GELU MLP, ``nnx.LayerNorm``, an untied
``nnx.Linear`` read-out. Data: the text of ``pydoc_data.topics`` (the
language reference pages ``help()`` shows, ~0.45 MB of English and code that
ships with Python), topics sorted by name, characters as in ``char_lm``,
last 10% held out. d_model 64, 2 layers, 4 heads, context 64, batch 16, 300
steps. Targets: train cross-entropy, held-out cross-entropy and accuracy.
"""

import functools
from pydoc_data import topics

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.suite.workload import Workload, nnx_model, text_batches, text_held_out, text_split
from examples import char_lm

BATCH, CONTEXT = 16, 64


def corpus() -> str:
  """Python's ``help()`` topics, concatenated in name order."""
  return "\n".join(topics.topics[name] for name in sorted(topics.topics))


class Block(nnx.Module):
  """Pre-norm block: ``nnx.MultiHeadAttention`` (causal) and a GELU MLP.

  ``axis_names``: declare each parameter's logical axis names (MaxText's:
  embed, heads, kv, mlp, norm) with ``nnx.with_partitioning``, as a Flax user
  who shards would; the initial values are the same either way. Build a named
  block under ``nnx.use_eager_sharding(False)`` when there is no mesh.
  """

  def __init__(self, d_model: int, num_heads: int, rngs: nnx.Rngs, *, axis_names: bool = False):
    named = lambda init, *names: nnx.with_partitioning(init, names) if axis_names else init
    ones, zeros, kernel = (nnx.initializers.ones_init(), nnx.initializers.zeros_init(),
                           nnx.initializers.lecun_normal())
    norm = lambda: nnx.LayerNorm(d_model, scale_init=named(ones, "norm"),
                                 bias_init=named(zeros, "norm"), rngs=rngs)
    self.attention_norm = norm()
    self.attention = nnx.MultiHeadAttention(
        num_heads=num_heads, in_features=d_model, decode=False,
        kernel_init=named(kernel, "embed", "heads", "kv"),
        out_kernel_init=named(kernel, "heads", "kv", "embed"),
        bias_init=named(zeros, "heads", "kv"), out_bias_init=named(zeros, "embed"), rngs=rngs)
    self.mlp_norm = norm()
    self.mlp_in = nnx.Linear(d_model, 4 * d_model, kernel_init=named(kernel, "embed", "mlp"),
                             bias_init=named(zeros, "mlp"), rngs=rngs)
    self.mlp_out = nnx.Linear(4 * d_model, d_model, kernel_init=named(kernel, "mlp", "embed"),
                              bias_init=named(zeros, "embed"), rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class DocsTransformer(nnx.Module):
  """Decoder-only character transformer from Flax's stock modules."""

  def __init__(self, d_model: int, num_layers: int, num_heads: int, rngs: nnx.Rngs):
    self.tokens = nnx.Embed(char_lm.VOCAB_SIZE, d_model, rngs=rngs)
    self.positions = nnx.Embed(CONTEXT, d_model, rngs=rngs)
    self.blocks = nnx.List([Block(d_model, num_heads, rngs) for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.readout = nnx.Linear(d_model, char_lm.VOCAB_SIZE, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.readout(self.norm(x))


@functools.cache
def workload(steps: int = 300, d_model: int = 64, num_layers: int = 2) -> Workload:
  train, held_out = text_split(corpus())
  return Workload(
      name="docs_lm", family="transformer",
      description=f"nnx.MultiHeadAttention transformer d{d_model}x{num_layers}"
      " on pydoc_data.topics",
      init=nnx_model(lambda rngs: DocsTransformer(d_model, num_layers, 4, rngs)),
      batches=text_batches(train, BATCH, CONTEXT),
      held_out=text_held_out(held_out, BATCH, CONTEXT),
      steps=steps,
  )
