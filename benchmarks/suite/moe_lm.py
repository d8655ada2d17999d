"""A character transformer with a mixture-of-experts MLP, experts stacked in one array.

Each block: ``nnx.MultiHeadAttention`` (causal), then a top-2 mixture of 4
GELU experts whose kernels are two ``nnx.Param`` arrays, (experts, d, hidden)
and (experts, hidden, d), routed by an ``nnx.Linear`` gate (softmax, the two
largest gates renormalised; every expert is computed densely, which is
cheaper than dispatch at this size; no load-balancing loss). Data: the
``pydoc_data.topics`` text of ``docs_lm``. d_model 64, expert hidden 128, 2
layers, context 32, batch 16, 300 steps. Targets: train cross-entropy,
held-out cross-entropy and accuracy.

Every parameter declares its logical axis names as a MaxText/Flax user's
would (``nnx.with_partitioning`` and ``nnx.Param(..., out_sharding=...)``:
exp, embed, mlp, heads, kv, vocab, norm), so every optimizer's default
routing sees one matrix per expert and the (embed, exp) router as one matrix;
the workload passes no matrix view.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.suite import docs_lm
from benchmarks.suite.workload import Workload, nnx_model, text_batches, text_held_out, text_split
from examples import char_lm

BATCH, CONTEXT, NUM_EXPERTS, TOP_K = 16, 32, 4, 2
named = nnx.with_partitioning
ones, zeros = nnx.initializers.ones_init(), nnx.initializers.zeros_init()
kernel = nnx.initializers.lecun_normal()


def layer_norm(d_model: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(d_model, scale_init=named(ones, ("norm",)),
                       bias_init=named(zeros, ("norm",)), rngs=rngs)


class MoE(nnx.Module):
  """Top-2 of ``num_experts`` GELU MLPs, their kernels stacked."""

  def __init__(self, d_model: int, hidden: int, num_experts: int, rngs: nnx.Rngs):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))
    self.router = nnx.Linear(d_model, num_experts, kernel_init=named(kernel, ("embed", "exp")),
                             bias_init=named(zeros, ("exp",)), rngs=rngs)
    self.experts_in = nnx.Param(init(rngs.params(), (num_experts, d_model, hidden)),
                                out_sharding=("exp", "embed", "mlp"))
    self.experts_out = nnx.Param(init(rngs.params(), (num_experts, hidden, d_model)),
                                 out_sharding=("exp", "mlp", "embed"))

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
    self.attention_norm = layer_norm(d_model, rngs)
    self.attention = nnx.MultiHeadAttention(
        num_heads=4, in_features=d_model, decode=False,
        kernel_init=named(kernel, ("embed", "heads", "kv")),
        out_kernel_init=named(kernel, ("heads", "kv", "embed")),
        bias_init=named(zeros, ("heads", "kv")), out_bias_init=named(zeros, ("embed",)),
        rngs=rngs)
    self.moe_norm = layer_norm(d_model, rngs)
    self.moe = MoE(d_model, hidden, NUM_EXPERTS, rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.moe(self.moe_norm(x))


class MoETransformer(nnx.Module):
  """Embeddings, ``num_layers`` mixture blocks, a read-out."""

  def __init__(self, d_model: int, hidden: int, num_layers: int, rngs: nnx.Rngs):
    embed = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    self.tokens = nnx.Embed(char_lm.VOCAB_SIZE, d_model,
                            embedding_init=named(embed, ("vocab", "embed")), rngs=rngs)
    self.positions = nnx.Embed(CONTEXT, d_model,
                               embedding_init=named(embed, (None, "embed")), rngs=rngs)
    self.blocks = nnx.List([MoEBlock(d_model, hidden, rngs) for _ in range(num_layers)])
    self.norm = layer_norm(d_model, rngs)
    self.readout = nnx.Linear(d_model, char_lm.VOCAB_SIZE,
                              kernel_init=named(kernel, ("embed", "vocab")),
                              bias_init=named(zeros, ("vocab",)), rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.readout(self.norm(x))


def build(d_model: int, hidden: int, num_layers: int, rngs: nnx.Rngs) -> MoETransformer:
  with nnx.use_eager_sharding(False):  # axis names without a device mesh
    return MoETransformer(d_model, hidden, num_layers, rngs)


@functools.cache
def workload(steps: int = 300, d_model: int = 64, hidden: int = 128,
             num_layers: int = 2) -> Workload:
  train, held_out = text_split(docs_lm.corpus())
  return Workload(
      name="moe_lm", family="mixture of experts",
      description=f"top-{TOP_K} of {NUM_EXPERTS} experts (E, d, f) kernels,"
      f" d{d_model}x{num_layers}, on pydoc_data.topics",
      init=nnx_model(functools.partial(build, d_model, hidden, num_layers)),
      batches=text_batches(train, BATCH, CONTEXT),
      held_out=text_held_out(held_out, BATCH, CONTEXT),
      steps=steps,
  )
