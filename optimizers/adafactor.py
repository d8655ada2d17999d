"""Adafactor: factored second moments, update clipping and relative step sizes."""

from typing import Any, Optional

import jax.numpy as jnp
import numpy as np
import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


@_validate.checks_arguments
def relative_step_size(*, warmup_init: bool = False) -> optax.Schedule:
  r"""Adafactor's relative step size :math:`ρ_t = \min(10^{-2}, 1/\sqrt t)`.

  With ``warmup_init`` it is :math:`\min(10^{-6} t, 1/\sqrt t)`, the paper's
  warm-up variant. ``t`` is the 1-based step: the schedule is called with
  the number of steps taken before. Computed in the default float type
  (float64 under ``jax_enable_x64``).

  Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
  Sublinear Memory Cost", ICML 2018, §8 (relative step size).
  """

  def schedule(count):
    t = jnp.asarray(count, jnp.result_type(float)) + 1
    start = 1e-6 * t if warmup_init else 1e-2
    return jnp.minimum(start, 1 / jnp.sqrt(t))

  return schedule


@_validate.checks_arguments
def adafactor(
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
    *,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
    b1: Optional[float] = None,
    mu_dtype: Optional[Any] = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    eps: float = 1e-30,
    factored: bool = True,
) -> optax.GradientTransformation:
  r"""Adafactor: factored second moments, update clipping, relative steps.

  .. math::
    \hat u_t = \frac{u_t}{\max(1, \operatorname{RMS}(u_t)/d)},\quad
    p \leftarrow p - \left(α_t\, \hat u_t + λ_t p\right),\quad
    α_t = η_t \max(10^{-3}, \operatorname{RMS}(p))

  with :math:`u_t` from ``gt.scale_by_factored_rms`` (rows × columns
  statistics for matrices), d = ``clipping_threshold`` and RMS taken per
  leaf. The parameter-scale factor is dropped when
  ``multiply_by_parameter_scale=False``; with ``b1`` an EMA of
  :math:`α_t \hat u_t` (which ``mu_dtype="int8"`` stores in 8 bits) replaces
  it. The weight decay λ is not multiplied by the learning rate.

  The arguments are optax.adafactor's with gradtx names (``b1`` for
  ``momentum``, an EMA decay; ``mu_dtype`` for ``dtype_momentum``, whose
  ``None`` is the parameter's dtype where optax's default is float32,
  ``weight_decay`` for ``weight_decay_rate``, ``mask`` for
  ``weight_decay_mask``), and for a given ``learning_rate`` the update is
  optax's. Unlike optax,
  ``learning_rate=None`` means the paper's relative step size
  :math:`η_t = \min(10^{-2}, 1/\sqrt t)` (``relative_step_size()``), not
  :math:`η_t = 1`.

  Args:
    learning_rate: η, a number, a schedule or ``None`` (relative steps).
    min_dim_size_to_factor: factor a leaf only when its two largest axes both
      have at least this many elements.
    decay_rate: c in the second-moment decay :math:`1 - t^{-c}`, in [0, 1].
    decay_offset: step at which that schedule restarts (fine-tuning).
    multiply_by_parameter_scale: scale steps by max(1e-3, RMS(p)).
    clipping_threshold: d, > 0, or ``None`` for no update clipping.
    b1: decay of an EMA of the steps (optax's ``momentum``), in [0, 1), or
      ``None`` (none).
    mu_dtype: storage of the momentum, as in ``gt.scale_by_adam``.
    weight_decay: λ, a number or a schedule, >= 0.
    mask: which leaves get weight decay, as in ``gt.decoupled_weight_decay``.
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    eps: added to g² in the second moments, >= 0.
    factored: factor the second moments of matrices at all.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
  Sublinear Memory Cost", ICML 2018.
  """
  if clipping_threshold is not None:
    _validate.check_in_range(
        "clipping_threshold", clipping_threshold, 0.0, np.inf,
        low_inclusive=False,
    )
  if b1 is not None:
    _validate.check_decay("b1", b1)
  state_format.state_format("mu_dtype", mu_dtype)  # refused even where unused (b1=None)
  steps = [
      gt.scale_by_factored_rms(
          decay_rate=decay_rate, factored=factored, eps=eps, decay_offset=decay_offset,
          min_dim_size_to_factor=min_dim_size_to_factor,
      )
  ]
  if clipping_threshold is not None:
    steps.append(gt.clip_by_block_rms(clipping_threshold))
  if learning_rate is None:
    learning_rate = relative_step_size()
  steps.append(gt.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    steps.append(gt.scale_by_param_rms(min_ndim=0, min_scale=1e-3))
  if b1 is not None:
    steps.append(gt.ema(b1, mu_dtype=mu_dtype))
  steps.append(gt.decoupled_weight_decay(
      weight_decay, mask, cautious_weight_decay=cautious_weight_decay))
  steps.append(optax.scale(-1.0))
  return optax.chain(*steps)
