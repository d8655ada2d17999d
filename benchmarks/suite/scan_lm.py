"""A character transformer whose blocks are one stacked module, run by ``nnx.scan``.

The blocks of ``docs_lm`` (``nnx.MultiHeadAttention``, GELU MLP), created
once under ``nnx.vmap`` so every parameter of the 4 layers is one array with a
leading layer axis ((4, 64, 4, 16) query kernels, (4, 64, 256) MLP kernels),
and applied with ``nnx.scan``. Data: the stdlib source of ``stdlib_lm``.
d_model 64, 4 layers, 4 heads, context 32, batch 16, 300 steps. Targets:
train cross-entropy, held-out cross-entropy and accuracy.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.suite.docs_lm import Block
from benchmarks.suite.workload import Workload, nnx_model, text_batches, text_held_out
from examples import char_lm
from gradtx import transforms as gt

BATCH, CONTEXT = 16, 32

# The matrix view given to the optimizers that take one: every leaf under
# "blocks" has a leading layer axis. (Issue 17's Flax metadata may make this
# automatic; this is the one place to change.)
MATRIX_VIEW = gt.stacked_matrix_view(
    where=lambda path, leaf: "blocks" in jax.tree_util.keystr(path))


class ScannedTransformer(nnx.Module):
  """Token and position embeddings, ``num_layers`` stacked blocks, a read-out."""

  def __init__(self, d_model: int, num_layers: int, num_heads: int, rngs: nnx.Rngs):
    self.tokens = nnx.Embed(char_lm.VOCAB_SIZE, d_model, rngs=rngs)
    self.positions = nnx.Embed(CONTEXT, d_model, rngs=rngs)

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs: nnx.Rngs) -> Block:
      return Block(d_model, num_heads, rngs)

    self.blocks = blocks(rngs)
    self.norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.readout = nnx.Linear(d_model, char_lm.VOCAB_SIZE, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
    mask = nnx.make_causal_mask(tokens)

    @nnx.scan(in_axes=(0, nnx.Carry, None), out_axes=nnx.Carry)
    def forward(block: Block, x: jax.Array, mask: jax.Array) -> jax.Array:
      return block(x, mask)

    return self.readout(self.norm(forward(self.blocks, x, mask)))


@functools.cache
def workload(steps: int = 300, d_model: int = 64, num_layers: int = 4,
             corpus_mb: float = 0.5) -> Workload:
  train, held_out = char_lm.load_corpus(corpus_mb)
  return Workload(
      name="scan_lm", family="stacked transformer",
      description=f"nnx.vmap/nnx.scan stacked transformer d{d_model}x{num_layers}"
      " on stdlib source",
      init=nnx_model(lambda rngs: ScannedTransformer(d_model, num_layers, 4, rngs)),
      batches=text_batches(train, BATCH, CONTEXT),
      held_out=text_held_out(held_out, BATCH, CONTEXT),
      steps=steps,
      matrix_view=MATRIX_VIEW,
  )
