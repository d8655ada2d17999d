"""RMSProp: steps divided by the root mean square of recent gradients."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    *,
    decay: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    initial_scale: float = 0.0,
    nesterov: bool = False,
    debias: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""RMSProp, optionally centered and with momentum on the scaled step.

  .. math::
    g' = g + λ p,\quad
    v_t = ρ v_{t-1} + (1-ρ) g_t'^2,\quad
    b_t = μ b_{t-1} + g'_t/(\sqrt{v_t - \bar g_t^2} + ε),\quad
    p \leftarrow p - η b_t

  ``torch.optim.RMSprop``'s rule (``decay`` is torch's ``alpha``; ``centered``
  subtracts the squared mean gradient :math:`\bar g_t^2`), with torch's
  defaults, not ``optax.rmsprop``'s (decay 0.9, ε inside the root): the first
  steps differ (3.3x optax's at g = 1e-3); pass ``decay=0.9, eps=0.0,
  eps_root=1e-8`` for optax's rule. ``initial_scale``, ``nesterov`` and
  ``debias`` are optax's options (``debias`` is its ``bias_correction``, its
  ``eps_in_sqrt=False`` is ``eps_root=0``).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    decay: ρ, the decay of the moving averages, in [0, 1).
    eps: added outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    momentum: μ, the heavy-ball momentum of the scaled step, in [0, 1).
    centered: subtract the squared mean gradient.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    initial_scale: starting value of :math:`v`, >= 0 (``gt.scale_by_rms``).
    nesterov: the momentum's Nesterov form: the step is :math:`s_t + μ b_t`
      with :math:`s_t = g'_t/(\sqrt{v_t - \bar g_t^2} + ε)` the scaled step
      (``gt.momentum``; optax's ``trace(nesterov=True)``).
    debias: divide the moving averages by :math:`1-ρ^t` (optax's
      ``bias_correction``).
    mu_dtype: storage of the momentum buffer and of the mean gradient.
    nu_dtype: storage of :math:`v`.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Tieleman & Hinton, Lecture 6.5 of "Neural Networks for Machine
  Learning", 2012; Graves 2013 (centered); ``torch.optim.RMSprop``.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.scale_by_rms(decay, eps, eps_root=eps_root, centered=centered,
                      initial_scale=initial_scale, debias=debias,
                      mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.momentum(momentum, nesterov=nesterov, mu_dtype=mu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )
