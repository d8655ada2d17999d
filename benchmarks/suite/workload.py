"""The interface every workload of the suite implements, and the data helpers they share.

A workload is a classifier of integer labels (next characters, digits, tumours):
``init(seed)`` gives its parameters and ``apply(params, inputs) -> logits``; the
runner trains ``params`` with any optax ``GradientTransformation`` through
``tx.init`` / ``tx.update`` on mean cross-entropy, and scores held-out
cross-entropy and accuracy. NNX models are split into their ``nnx.Param``
state (what the optimizer sees, with NNX's key paths) and the rest; Linen
models hand over their ``params`` collection (Linen's key paths).
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import numpy as np
from flax import nnx

from examples import char_lm

Batches = tuple[np.ndarray, np.ndarray]  # inputs (steps, batch, ...), labels (steps, batch, ...)
Apply = Callable[[Any, jax.Array], jax.Array]  # (params, inputs) -> logits
SCHEDULES = ("constant", "warmup_cosine")
HELD_OUT_SEED = 10_000  # held-out batches are the same for every run of a workload


@dataclasses.dataclass(frozen=True)
class Workload:
  """One training problem, run the same way for every optimizer.

  Attributes:
    name: the id used on the command line and in the run files.
    family: what kind of model (``"transformer"``, ``"cnn"``, ``"vit"``, ``"mlp"``, ...).
    description: model, data and sizes, one line.
    init: ``seed -> (params, apply)``; the same seed gives the same weights.
    batches: ``(seed, steps) -> (inputs, labels)``, one batch per step.
    held_out: ``() -> (inputs, labels)``, a stack of held-out batches (a
      deterministic split, the same for every run).
    steps: the step budget.
    lr_scale: every optimizer's registry peak learning rates are multiplied by
      it on this workload (so AdamW's reference peak is ``6e-3 * lr_scale``);
      the rulesets' factors apply on top. 1 unless AdamW's grid needs moving.
    matrix_view: the matrix-view rule given to registry entries that take one
      (``None``: their default). The one place a workload chooses it.
    schedules: the learning-rate schedules it is run with.
  """

  name: str
  family: str
  description: str
  init: Callable[[int], tuple[Any, Apply]]
  batches: Callable[[int, int], Batches]
  held_out: Callable[[], Batches]
  steps: int
  lr_scale: float = 1.0
  matrix_view: Optional[Callable] = None
  schedules: tuple[str, ...] = SCHEDULES


def nnx_model(build: Callable[[nnx.Rngs], nnx.Module]) -> Callable[[int], tuple[Any, Apply]]:
  """``init`` for an NNX model: its ``nnx.Param`` state and a pure ``apply``.

  The model of a seed is built once, under ``nnx.jit`` (one compilation, not
  one per op), and kept on the host; every call returns a fresh device copy
  (the runner donates it).
  """

  @functools.cache
  def built(seed: int):
    model = nnx.jit(lambda: build(nnx.Rngs(jax.random.key(seed))))()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return jax.device_get(params), lambda p, x: nnx.merge(graphdef, p, rest)(x)

  def init(seed: int):
    params, apply = built(seed)
    return jax.device_put(params), apply

  return init


# ------------------------------------------------------------------ text


def text_split(text: str) -> tuple[np.ndarray, np.ndarray]:
  """Characters to tokens (``char_lm.encode``), the last 10% held out."""
  tokens = char_lm.encode(text)
  split = int(len(tokens) * (1 - char_lm.VAL_FRACTION))
  return tokens[:split], tokens[split:]


def text_batches(tokens: np.ndarray, batch_size: int, context: int) -> Callable:
  """``batches`` over a token stream: random windows, next-character labels."""
  return lambda seed, steps: char_lm.sample_batches(tokens, steps, batch_size, context, seed)


def text_held_out(tokens: np.ndarray, batch_size: int, context: int, num: int = 8) -> Callable:
  """``held_out``: ``num`` batches of windows from the held-out tokens."""
  return lambda: char_lm.sample_batches(tokens, num, batch_size, context, HELD_OUT_SEED)


# ----------------------------------------------------------- fixed datasets


def split_dataset(x: np.ndarray, y: np.ndarray, held_out: float = 0.2):
  """A deterministic shuffled split: ``(x_train, y_train), (x_test, y_test)``."""
  order = np.random.default_rng(0).permutation(len(x))
  cut = int(len(x) * (1 - held_out))
  train, test = order[:cut], order[cut:]
  return (x[train], y[train]), (x[test], y[test])


def dataset_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Callable:
  """``batches`` over a fixed training set: examples drawn uniformly per step."""

  def batches(seed: int, steps: int) -> Batches:
    index = np.random.default_rng(seed).integers(0, len(x), (steps, batch_size))
    return x[index], y[index]

  return batches


def dataset_held_out(x: np.ndarray, y: np.ndarray) -> Callable:
  """``held_out``: the whole held-out set as one batch."""
  return lambda: (x[None], y[None])
