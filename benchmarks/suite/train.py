"""One run of the suite: a workload trained by a registry optimizer, timed and scored.

The optimizer is benchmarks/registry.py's entry at ``lr_factor``
times its peak learning rates (``registry.variant``), under one of two
schedules: ``warmup_cosine``, the entries' own (linear warm-up over 10% of the
steps, cosine decay to a tenth of the peak), or ``constant``: the same
warm-up, then the peak held to the end. Steps run in jitted ``lax.scan``
chunks of ``eval_every`` steps, each followed by a held-out evaluation.
"""

import contextlib
import inspect
import time
from typing import Any, Callable, Optional
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import registry
from benchmarks.suite.workload import Workload
from gradtx import optimizers as go


def warmup_constant(entry_schedule: Callable[[float, int], optax.Schedule]):
  """A stand-in for ``registry.warmup_cosine``: the same peak, held after warm-up.

  The peak is the one the entry's own schedule reaches at the end of its
  warm-up, so ``registry.variant``'s factor applies unchanged.
  """

  def schedule(peak: float, steps: int) -> optax.Schedule:
    warmup = max(1, steps // 10)
    return optax.linear_schedule(0.0, float(entry_schedule(peak, steps)(warmup)), warmup)

  return schedule


def takes_keywords(name: str) -> bool:
  """Whether registry entry ``name`` passes keyword arguments on to its factory."""
  parameters = inspect.signature(registry.OPTIMIZERS[name]).parameters.values()
  return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# Registry entries whose update needs more than gradients (sam's ``grad_fn``,
# kfac's and qk_clip's ``records``), which the suite's step does not give.
NEEDS_EXTRA_ARGS = ("sam", "kfac", "muon:qk_clip")


def make_optimizer(name: str, lr_factor: float, schedule: str, steps: int,
                   matrix_view: Optional[Callable] = None) -> optax.GradientTransformation:
  """Registry entry ``name`` at ``lr_factor`` times its peaks, on ``schedule``.

  ``matrix_view`` is passed to entries that take keywords (see ``takes_keywords``).
  Entries that need extra update arguments (sam's ``grad_fn``, kfac's and
  qk_clip's ``records``) are not supported.
  """
  if schedule not in ("constant", "warmup_cosine"):
    raise ValueError(f"schedule must be 'constant' or 'warmup_cosine', got {schedule!r}")
  kwargs = {"matrix_view": matrix_view} if matrix_view and takes_keywords(name) else {}
  build = registry.variant(name, lr_factor, **kwargs)
  hook = (mock.patch.object(registry, "warmup_cosine", warmup_constant(registry.warmup_cosine))
          if schedule == "constant" else contextlib.nullcontext())
  with hook:
    return build(steps)


def cross_entropy_and_accuracy(logits: jax.Array, labels: jax.Array) -> tuple:
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses.mean(), (logits.argmax(-1) == labels).mean()


def chunk_step(apply: Callable, tx: optax.GradientTransformation) -> Callable:
  """Jitted ``(params, state, inputs, labels) -> (params, state, losses)`` over a chunk."""
  loss_fn = lambda p, x, y: cross_entropy_and_accuracy(apply(p, x), y)[0]

  def step(carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  def run(params, state, inputs, labels):
    (params, state), losses = jax.lax.scan(step, (params, state), (inputs, labels))
    return params, state, losses

  return jax.jit(run, donate_argnums=(0, 1))


def evaluation_point(state: optax.OptState, params: optax.Params) -> optax.Params:
  """The parameters a held-out evaluation reads: Schedule-Free's averaged x
  (``go.schedule_free_eval_params``) where the state holds a
  ``ScheduleFreeState``, else ``params``. (Its training loss, which the suite
  scores, is taken at the gradient's point y, as the official code reports it.)"""
  holds = lambda node: isinstance(node, go.ScheduleFreeState)
  if any(holds(node) for node in jax.tree.leaves(state, is_leaf=holds)):
    return go.schedule_free_eval_params(state, params)
  return params


def evaluator(apply: Callable) -> Callable:
  """Jitted ``(params, inputs, labels) -> (loss, accuracy)`` over a stack of batches.

  The batches are evaluated as one (a model under ``nnx.scan`` cannot be
  merged inside ``lax.map``).
  """

  def evaluate(params, inputs, labels):
    flat = lambda a: a.reshape(-1, *a.shape[2:])
    return jnp.stack(cross_entropy_and_accuracy(apply(params, flat(inputs)), flat(labels)))

  return jax.jit(evaluate)


def train(workload: Workload, tx: optax.GradientTransformation, seed: int,
          eval_every: int = 50) -> dict[str, Any]:
  """Trains ``workload`` from ``seed`` with ``tx``; returns curves and timings.

  ``ms_per_step``: the median over chunks after the first (which compiles) of
  a chunk's wall-clock per step; with one chunk, that chunk's.
  """
  params, apply = workload.init(seed)
  inputs, labels = workload.batches(seed, workload.steps)
  held_out = workload.held_out()
  step, evaluate = chunk_step(apply, tx), evaluator(apply)
  state = jax.jit(tx.init)(params)
  train_loss, eval_step, eval_loss, eval_accuracy, chunk_ms = [], [], [], [], []
  start = time.perf_counter()
  for begin in range(0, workload.steps, eval_every):
    end = min(begin + eval_every, workload.steps)
    tick = time.perf_counter()
    params, state, losses = step(params, state, inputs[begin:end], labels[begin:end])
    train_loss += np.asarray(losses, np.float64).tolist()
    chunk_ms.append(1e3 * (time.perf_counter() - tick) / (end - begin))
    loss, accuracy = np.asarray(
        evaluate(evaluation_point(state, params), *held_out), np.float64)
    eval_step.append(end)
    eval_loss.append(float(loss))
    eval_accuracy.append(float(accuracy))
  return {
      "train_loss": train_loss, "eval_step": eval_step, "eval_loss": eval_loss,
      "eval_accuracy": eval_accuracy, "ms_per_step": float(np.median(chunk_ms[1:] or chunk_ms)),
      "seconds": time.perf_counter() - start,
  }
