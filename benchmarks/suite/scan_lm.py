"""A character transformer whose blocks are one stacked module, run by ``nnx.scan``.

The blocks of ``docs_lm`` (``nnx.MultiHeadAttention``, GELU MLP), created
once under ``nnx.vmap`` so every parameter of the 4 layers is one array with a
leading layer axis ((4, 64, 4, 16) query kernels, (4, 64, 256) MLP kernels),
and applied with ``nnx.scan``. Data: the stdlib source of ``stdlib_lm``.
d_model 64, 4 layers, 4 heads, context 32, batch 16, 300 steps. Targets:
train cross-entropy, held-out cross-entropy and accuracy.

Every parameter declares its logical axis names as a MaxText/Flax user's
would (``nnx.with_partitioning``: embed, heads, kv, mlp, vocab, norm), and
``nnx.vmap`` / ``nnx.scan`` add the ``layers`` axis
(``transform_metadata={nnx.PARTITION_NAME: "layers"}``). The optimizer is
handed the ``nnx.State`` of ``nnx.Param`` variables that carry them, so every
optimizer's default routing sees one matrix per layer: the workload passes
no matrix view.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.suite.docs_lm import Block
from benchmarks.suite.workload import Workload, nnx_model, text_batches, text_held_out
from examples import char_lm

BATCH, CONTEXT = 16, 32
LAYERS = {nnx.PARTITION_NAME: "layers"}  # the stacked axis's name, for nnx.vmap and nnx.scan


class ScannedTransformer(nnx.Module):
  """Token and position embeddings, ``num_layers`` stacked blocks, a read-out."""

  def __init__(self, d_model: int, num_layers: int, num_heads: int, rngs: nnx.Rngs):
    named = nnx.with_partitioning
    embed = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    self.tokens = nnx.Embed(char_lm.VOCAB_SIZE, d_model,
                            embedding_init=named(embed, ("vocab", "embed")), rngs=rngs)
    self.positions = nnx.Embed(CONTEXT, d_model,
                               embedding_init=named(embed, (None, "embed")), rngs=rngs)

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=LAYERS)
    def blocks(rngs: nnx.Rngs) -> Block:
      return Block(d_model, num_heads, rngs, axis_names=True)

    self.blocks = blocks(rngs)
    self.norm = nnx.LayerNorm(
        d_model, scale_init=named(nnx.initializers.ones_init(), ("norm",)),
        bias_init=named(nnx.initializers.zeros_init(), ("norm",)), rngs=rngs)
    self.readout = nnx.Linear(
        d_model, char_lm.VOCAB_SIZE,
        kernel_init=named(nnx.initializers.lecun_normal(), ("embed", "vocab")),
        bias_init=named(nnx.initializers.zeros_init(), ("vocab",)), rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
    mask = nnx.make_causal_mask(tokens)

    @nnx.scan(in_axes=(0, nnx.Carry, None), out_axes=nnx.Carry, transform_metadata=LAYERS)
    def forward(block: Block, x: jax.Array, mask: jax.Array) -> jax.Array:
      return block(x, mask)

    return self.readout(self.norm(forward(self.blocks, x, mask)))


def build(d_model: int, num_layers: int, rngs: nnx.Rngs) -> ScannedTransformer:
  with nnx.use_eager_sharding(False):  # axis names without a device mesh
    return ScannedTransformer(d_model, num_layers, 4, rngs)


@functools.cache
def workload(steps: int = 300, d_model: int = 64, num_layers: int = 4,
             corpus_mb: float = 0.5) -> Workload:
  train, held_out = char_lm.load_corpus(corpus_mb)
  return Workload(
      name="scan_lm", family="stacked transformer",
      description=f"nnx.vmap/nnx.scan stacked transformer d{d_model}x{num_layers}"
      " on stdlib source",
      init=nnx_model(functools.partial(build, d_model, num_layers)),
      batches=text_batches(train, BATCH, CONTEXT),
      held_out=text_held_out(held_out, BATCH, CONTEXT),
      steps=steps,
  )
