"""Hyper-parameter rules: the learning rate for a new batch size, weight-decay schedules.

Both return values that every gradtx factory takes as they are: a number or an
``optax`` schedule for ``learning_rate``, a schedule for ``weight_decay``.
``notebooks/06_batch_size.ipynb`` measures where the batch-size rules hold.
"""

from typing import Optional

import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate

BATCH_SIZE_RULES = ("linear", "sqrt")
WEIGHT_DECAY_RULES = ("cosine_growth", "learning_rate")


def _check_rule(rule: str, allowed: tuple) -> None:
  if rule not in allowed:
    raise ValueError(f"rule must be one of {allowed}, got {rule!r}")


def learning_rate_for_batch_size(
    reference_learning_rate: optax.ScalarOrSchedule,
    *,
    reference_batch_size: int,
    batch_size: int,
    rule: str = "linear",
) -> optax.ScalarOrSchedule:
  r"""Transfers a learning rate tuned at one batch size to another.

  .. math::
    η(B) = η_0 \frac{B}{B_0}\ \ (\texttt{"linear"}),\qquad
    η(B) = η_0 \sqrt{\frac{B}{B_0}}\ \ (\texttt{"sqrt"})

  The linear rule is SGD's (Goyal et al. 2017; it follows from the expected
  one-step decrease of an L-smooth loss), the square-root rule Adam's
  (Malladi et al. 2022, from the SDE of adaptive methods). Both describe
  batches below the critical batch size only: the step that maximises the
  expected one-step decrease,
  :math:`η^* = 2\|∇f\|^2 / (L(\|∇f\|^2 + σ^2/B))`, is linear in B while
  :math:`σ^2/B \gg \|∇f\|^2` and saturates at 2/L above it (McCandlish et
  al. 2018, the critical batch size; ``notebooks/06_batch_size.ipynb``
  measures the saturation).

  Args:
    reference_learning_rate: η₀, a non-negative number or a schedule, tuned
      at ``reference_batch_size``.
    reference_batch_size: B₀, an integer >= 1.
    batch_size: B, the new batch size, an integer >= 1.
    rule: ``"linear"`` or ``"sqrt"``.

  Returns:
    A float for a number, otherwise a schedule (the same one, scaled).

  Example:
    >>> from gradtx import optimizers as go
    >>> go.learning_rate_for_batch_size(1e-3, reference_batch_size=256,
    ...                                 batch_size=1024, rule="sqrt")
    0.002

  Reference: Goyal et al., "Accurate, Large Minibatch SGD", 2017; Malladi et
  al., "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms",
  NeurIPS 2022; McCandlish et al., "An Empirical Model of Large-Batch
  Training", 2018 (the critical batch size).
  """
  _validate.check_scalar_or_schedule(
      "reference_learning_rate", reference_learning_rate)
  reference_batch_size = _validate.check_integer(
      "reference_batch_size", reference_batch_size)
  batch_size = _validate.check_integer("batch_size", batch_size)
  _check_rule(rule, BATCH_SIZE_RULES)
  ratio = batch_size / reference_batch_size
  factor = ratio if rule == "linear" else float(np.sqrt(ratio))
  if not callable(reference_learning_rate):
    reference_learning_rate = float(reference_learning_rate)
  return _tree.scale_schedule(reference_learning_rate, factor)


def _peak(learning_rate: optax.ScalarOrSchedule, total_steps: int) -> float:
  if not callable(learning_rate):
    values = np.asarray(learning_rate, np.float64)
  else:
    values = np.asarray(learning_rate(np.arange(total_steps)), np.float64)
  peak = float(np.max(values))
  if not peak > 0:
    raise ValueError(
        "learning_rate must be positive at some step below total_steps, got"
        f" a largest value of {peak!r}")
  return peak


def weight_decay_schedule(
    weight_decay: float,
    *,
    rule: str,
    total_steps: int,
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
) -> optax.Schedule:
  r"""A schedule λ_t for decoupled weight decay, for any factory's ``weight_decay``.

  .. math::
    λ_t = λ\,\frac{1 - \cos(π \min(t, T)/T)}{2}\ \ (\texttt{"cosine_growth"}),
    \qquad
    λ_t = λ\,\frac{η_t}{\max_{s<T} η_s}\ \ (\texttt{"learning_rate"})

  ``"cosine_growth"`` is a growing decay for Lion ("small λ early to fit
  fast, large λ late to regularise"), which grows from 0 to λ at step T and
  stays there. Written :math:`λ_{\max}(1 - \cos(πt/T))` it would end at
  :math:`2λ_{\max}`; the factor 1/2 makes λ the final value, as the name
  λ_max says. ``"learning_rate"`` makes λ_t follow the learning-rate
  schedule, with λ its value at the peak learning rate: in a chain whose
  decay is not multiplied by η (``adafactor``'s, ``optax.add_decayed_weights``
  before ``optax.scale``) this is the paper's AdamW, where one schedule
  multiplier scales both the step and the decay (Loshchilov & Hutter 2019,
  Algorithm 2); in a chain that multiplies it by η_t (``adamw``, ``lion``,
  ``muon``, ...) the per-step shrinkage η_tλ_t then falls as η_t².

  The step count t is the one the decay transform keeps, which starts at 0
  like the learning-rate transform's, so λ_t and η_t refer to the same step.

  Args:
    weight_decay: λ, the final (``"cosine_growth"``) or peak-lr
      (``"learning_rate"``) value, >= 0.
    rule: ``"cosine_growth"`` or ``"learning_rate"``.
    total_steps: T, an integer >= 1: the end of the growth, or the range of
      steps over which the peak learning rate is looked for.
    learning_rate: η_t, a number or a schedule; required by
      ``"learning_rate"``, refused by ``"cosine_growth"``.

  Returns:
    An ``optax.Schedule``: a function of the step count.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import optimizers as go
    >>> wd = go.weight_decay_schedule(0.1, rule="cosine_growth", total_steps=100)
    >>> [round(float(wd(t)), 4) for t in (0, 50, 100, 200)]
    [0.0, 0.05, 0.1, 0.1]
    >>> tx = go.lion(1e-4, weight_decay=wd)  # any factory's weight_decay

  Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
  ICLR 2019 (``"learning_rate"``). ``"cosine_growth"`` has no paper: it is
  the project's seed documents' λ_max(1 − cos πt/T) (``../shared/seeds``,
  the adaptive weight-decay schedule), halved as said above.
  """
  _validate.check_non_negative("weight_decay", weight_decay)
  _check_rule(rule, WEIGHT_DECAY_RULES)
  total_steps = _validate.check_integer("total_steps", total_steps)
  if rule == "cosine_growth":
    if learning_rate is not None:
      raise ValueError(
          "learning_rate must be None for rule 'cosine_growth', got"
          f" {learning_rate!r}")

    def growth(count):
      t = jnp.minimum(jnp.asarray(count, jnp.result_type(float)), total_steps)
      # (1 − cos x)/2 as sin²(x/2): no cancellation in float32 near t = 0.
      return weight_decay * jnp.sin(jnp.pi * t / (2 * total_steps)) ** 2

    return growth
  if learning_rate is None:
    raise ValueError("learning_rate must be given for rule 'learning_rate'")
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  scale = weight_decay / _peak(learning_rate, total_steps)
  rate = learning_rate if callable(learning_rate) else lambda count: learning_rate
  return lambda count: scale * jnp.asarray(rate(count), jnp.result_type(float))
