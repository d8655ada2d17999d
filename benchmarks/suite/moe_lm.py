"""A character transformer with a mixture-of-experts MLP, experts stacked in one array.

Each block: ``nnx.MultiHeadAttention`` (causal), then a top-2 mixture of 4
GELU experts whose kernels are two ``nnx.Param`` arrays, (experts, d, hidden)
and (experts, hidden, d), routed by an ``nnx.Linear`` gate (softmax, the two
largest gates renormalised; every expert is computed densely, which is
cheaper than dispatch at this size; no load-balancing loss). Data: the
``pydoc_data.topics`` text of ``docs_lm``. d_model 64, expert hidden 128, 2
layers, context 32, batch 16, 300 steps. Targets: train cross-entropy,
held-out cross-entropy and accuracy.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.suite import docs_lm
from benchmarks.suite.workload import Workload, nnx_model, text_batches, text_held_out, text_split
from examples import char_lm
from gradtx import transforms as gt

BATCH, CONTEXT, NUM_EXPERTS, TOP_K = 16, 32, 4, 2

# The matrix view given to the optimizers that take one: the expert kernels'
# leading axis indexes experts; the attention kernels keep Flax's view. (Issue
# 17's Flax metadata may make this automatic; this is the one place to change.)
MATRIX_VIEW = gt.stacked_matrix_view(
    where=lambda path, leaf: "experts" in jax.tree_util.keystr(path))


class MoE(nnx.Module):
  """Top-2 of ``num_experts`` GELU MLPs, their kernels stacked."""

  def __init__(self, d_model: int, hidden: int, num_experts: int, rngs: nnx.Rngs):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))
    self.router = nnx.Linear(d_model, num_experts, rngs=rngs)
    self.experts_in = nnx.Param(init(rngs.params(), (num_experts, d_model, hidden)))
    self.experts_out = nnx.Param(init(rngs.params(), (num_experts, hidden, d_model)))

  def __call__(self, x: jax.Array) -> jax.Array:
    gates = jax.nn.softmax(self.router(x))
    kth = jnp.sort(gates, axis=-1)[..., -TOP_K, None]
    weights = jnp.where(gates >= kth, gates, 0.0)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    hidden = jax.nn.gelu(jnp.einsum("btd,edf->btef", x, self.experts_in[...]))
    out = jnp.einsum("btef,efd->bted", hidden, self.experts_out[...])
    return jnp.einsum("bte,bted->btd", weights, out)


class MoEBlock(nnx.Module):
  """Pre-norm block: causal ``nnx.MultiHeadAttention``, then the mixture."""

  def __init__(self, d_model: int, hidden: int, rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        num_heads=4, in_features=d_model, decode=False, rngs=rngs)
    self.moe_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.moe = MoE(d_model, hidden, NUM_EXPERTS, rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.moe(self.moe_norm(x))


class MoETransformer(nnx.Module):
  """Embeddings, ``num_layers`` mixture blocks, a read-out."""

  def __init__(self, d_model: int, hidden: int, num_layers: int, rngs: nnx.Rngs):
    self.tokens = nnx.Embed(char_lm.VOCAB_SIZE, d_model, rngs=rngs)
    self.positions = nnx.Embed(CONTEXT, d_model, rngs=rngs)
    self.blocks = nnx.List([MoEBlock(d_model, hidden, rngs) for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.readout = nnx.Linear(d_model, char_lm.VOCAB_SIZE, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.readout(self.norm(x))


@functools.cache
def workload(steps: int = 300, d_model: int = 64, hidden: int = 128,
             num_layers: int = 2) -> Workload:
  train, held_out = text_split(docs_lm.corpus())
  return Workload(
      name="moe_lm", family="mixture of experts",
      description=f"top-{TOP_K} of {NUM_EXPERTS} experts (E, d, f) kernels,"
      f" d{d_model}x{num_layers}, on pydoc_data.topics",
      init=nnx_model(lambda rngs: MoETransformer(d_model, hidden, num_layers, rngs)),
      batches=text_batches(train, BATCH, CONTEXT),
      held_out=text_held_out(held_out, BATCH, CONTEXT),
      steps=steps,
      matrix_view=MATRIX_VIEW,
  )
