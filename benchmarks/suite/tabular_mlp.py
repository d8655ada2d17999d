"""An MLP on scikit-learn's breast-cancer table (ships with scikit-learn).

``sklearn.datasets.load_breast_cancer``: 569 tumours, 30 features,
standardised with the training split's mean and deviation; a fixed shuffled
20% held out (114). ``nnx.Linear`` 30 -> 64 -> 64 -> 2, GELU. Batch 32, 300
steps. Targets: train cross-entropy, held-out cross-entropy and accuracy.
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

BATCH = 32


@functools.cache
def breast_cancer():
  """``((x_train, y_train), (x_test, y_test))``, features standardised on train."""
  data = datasets.load_breast_cancer()
  (x, y), (x_test, y_test) = split_dataset(data.data, data.target.astype(np.int32))
  mean, std = x.mean(axis=0), x.std(axis=0)
  scale = lambda v: ((v - mean) / std).astype(np.float32)
  return (scale(x), y), (scale(x_test), y_test)


class MLP(nnx.Module):
  """Two hidden GELU layers."""

  def __init__(self, features: int, hidden: int, rngs: nnx.Rngs):
    self.hidden1 = nnx.Linear(features, hidden, rngs=rngs)
    self.hidden2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.output = nnx.Linear(hidden, 2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.output(jax.nn.gelu(self.hidden2(jax.nn.gelu(self.hidden1(x)))))


@functools.cache
def workload(steps: int = 300, hidden: int = 64) -> Workload:
  train, test = breast_cancer()
  return Workload(
      name="tabular_mlp", family="mlp",
      description=f"NNX MLP 30-{hidden}-{hidden}-2 on sklearn load_breast_cancer",
      init=nnx_model(lambda rngs: MLP(30, hidden, rngs)),
      batches=dataset_batches(*train, BATCH),
      held_out=dataset_held_out(*test),
      steps=steps,
  )
