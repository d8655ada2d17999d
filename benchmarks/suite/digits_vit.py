"""A small vision transformer on scikit-learn's digits (8x8 images).

The images of ``digits_cnn`` (same split) cut into 16 patches of 2x2 pixels,
each an ``nnx.Linear`` token (d_model 48) plus a learned position; 2 pre-norm
blocks of ``nnx.MultiHeadAttention`` (4 heads, no mask) and a GELU MLP; mean
pooling, ``nnx.LayerNorm`` and an ``nnx.Linear`` classifier. Batch 64, 300
steps. Targets: train cross-entropy, held-out cross-entropy and accuracy.
"""

import functools

import jax
from flax import nnx

from benchmarks.suite.digits_cnn import BATCH, digits
from benchmarks.suite.docs_lm import Block
from benchmarks.suite.workload import Workload, dataset_batches, dataset_held_out, nnx_model

PATCH, NUM_PATCHES = 2, 16


def patches(images: jax.Array) -> jax.Array:
  """(n, 8, 8, 1) images -> (n, 16, 4) flattened 2x2 patches, row-major."""
  n = images.shape[0]
  grid = images.reshape(n, 4, PATCH, 4, PATCH).transpose(0, 1, 3, 2, 4)
  return grid.reshape(n, NUM_PATCHES, PATCH * PATCH)


class ViT(nnx.Module):
  """Patch tokens, attention blocks without a mask, mean pooling."""

  def __init__(self, d_model: int, num_layers: int, rngs: nnx.Rngs):
    self.patch_embed = nnx.Linear(PATCH * PATCH, d_model, rngs=rngs)
    self.positions = nnx.Embed(NUM_PATCHES, d_model, rngs=rngs)
    self.blocks = nnx.List([Block(d_model, 4, rngs) for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.classifier = nnx.Linear(d_model, 10, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = self.patch_embed(patches(images)) + self.positions.embedding[...]
    for block in self.blocks:
      x = block(x, None)
    return self.classifier(self.norm(x.mean(axis=1)))


@functools.cache
def workload(steps: int = 300, d_model: int = 48, num_layers: int = 2) -> Workload:
  train, test = digits()
  return Workload(
      name="digits_vit", family="vit",
      description=f"NNX ViT d{d_model}x{num_layers}, 2x2 patches, on sklearn load_digits",
      init=nnx_model(lambda rngs: ViT(d_model, num_layers, rngs)),
      batches=dataset_batches(*train, BATCH),
      held_out=dataset_held_out(*test),
      steps=steps,
  )
