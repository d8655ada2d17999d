"""AdEMAMix: AdamW with a slow EMA of the gradients mixed into the numerator."""

from typing import Any, Optional, Union

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def ademamix(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Union[float, optax.Schedule] = 0.9999,
    alpha: Union[float, optax.Schedule] = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdEMAMix: a fast and a slow EMA of the gradients over Adam's denominator.

  .. math::
    p \leftarrow p - η_t \left(
      \frac{\hat m_t + α_t s_t}{\sqrt{\hat v_t} + ε} + λ_t p \right)

  with :math:`\hat m_t`, :math:`\hat v_t` Adam's bias-corrected moments and
  :math:`s_t` the slow EMA (decay β₃, not bias-corrected) of
  ``gt.scale_by_ademamix``, then ``gt.decoupled_weight_decay`` and the
  learning rate: ``optax.contrib.ademamix``'s chain (equal in float64 where
  the arguments overlap, but for schedules, which gradtx reads at an int64
  count under x64 and optax at an int32 one, ~1e-8 apart, and a narrow
  ``mu_dtype``/``nu_dtype``, whose rounded moment gradtx steps with). The
  paper warms α and β₃ up over its first steps and pairs a long-memory β₃ =
  0.9999 with long runs; pass schedules for ``alpha`` / ``b3``. They are
  evaluated at the 0-based count, the official code's (apple/ml-ademamix) at
  the 1-based step: its α warm-up α·min(t/T_α, 1) is ``alpha=lambda count:
  5.0 * jnp.minimum((count + 1) / warmup, 1.0)`` here
  (``optax.linear_schedule(0.0, 5.0, warmup)`` trails it by one step), and
  its β₃ warm-up (``linear_hl_warmup_scheduler``, linear in the half-life)
  is likewise written of ``count + 1`` (so shifted, both match the official
  optimizer to 8e-16 in float64).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the fast EMA, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    b3: decay of the slow EMA, in [0, 1), or a schedule.
    alpha: α, the weight of the slow EMA, >= 0, or a schedule.
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      parameter (``gt.decoupled_weight_decay``).
    mu_dtype: storage of both EMAs (``gt.scale_by_ademamix``; ``"int8"``
      for 8-bit states).
    nu_dtype: storage of the second moment, likewise.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.ademamix(1e-2, alpha=optax.linear_schedule(0.0, 5.0, 100))
    >>> params = jnp.ones(2)
    >>> updates, _ = tx.update(jnp.ones(2), tx.init(params), params)
    >>> updates  # α = 0 at count 0: the first step is Adam's
    Array([-0.01, -0.01], dtype=float32)

  Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer:
  Better, Faster, Older", ICLR 2025 (arXiv 2409.03137);
  ``optax.contrib.ademamix``.
  """
  return optax.chain(
      gt.scale_by_ademamix(
          b1, b2, b3, alpha, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
