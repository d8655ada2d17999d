"""A small CNN on scikit-learn's handwritten digits (8x8, ships with scikit-learn).

``sklearn.datasets.load_digits``: 1,797 grey 8x8 images of the digits 0-9,
pixels scaled to [0, 1]; a fixed shuffled 20% held out (360 images). The
model, the Flax MNIST tutorial's shape at 8x8: ``nnx.Conv`` 16 and 32
channels (3x3) with ReLU and 2x2 average pooling, ``nnx.Linear`` 128 -> 64 ->
10. Batch 64, 300 steps (about 13 epochs). Targets: train cross-entropy,
held-out cross-entropy and accuracy.
"""

import functools

import jax
import numpy as np
from flax import nnx
from sklearn import datasets

from benchmarks.suite.workload import (
  Workload,
  dataset_batches,
  dataset_held_out,
  nnx_model,
  split_dataset,
)

BATCH = 64


@functools.cache
def digits():
  """``((x_train, y_train), (x_test, y_test))``: images (n, 8, 8, 1) in [0, 1]."""
  data = datasets.load_digits()
  images = (data.images / 16.0).astype(np.float32)[..., None]
  return split_dataset(images, data.target.astype(np.int32))


class CNN(nnx.Module):
  """Two conv/pool stages and a two-layer classifier."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
    self.linear1 = nnx.Linear(32 * 2 * 2, 64, rngs=rngs)
    self.linear2 = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pool = lambda y: nnx.avg_pool(y, window_shape=(2, 2), strides=(2, 2))
    x = pool(jax.nn.relu(self.conv1(x)))
    x = pool(jax.nn.relu(self.conv2(x)))
    return self.linear2(jax.nn.relu(self.linear1(x.reshape(x.shape[0], -1))))


@functools.cache
def workload(steps: int = 300) -> Workload:
  train, test = digits()
  return Workload(
      name="digits_cnn", family="cnn",
      description="NNX CNN (conv 16, 32; linear 64) on sklearn load_digits 8x8",
      init=nnx_model(CNN),
      batches=dataset_batches(*train, BATCH),
      held_out=dataset_held_out(*test),
      steps=steps,
  )
