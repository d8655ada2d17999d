"""Adadelta: per-coordinate steps in the units of the parameters."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def adadelta(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    decay: float = 0.9,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adadelta with coupled L2 weight decay.

  .. math::
    g'_t = g_t + λ p_t,\quad v_t = ρ v_{t-1} + (1-ρ)g'^2_t,\quad
    Δ_t = \frac{\sqrt{d_{t-1} + ε}}{\sqrt{v_t + ε}}\, g'_t,\quad
    d_t = ρ d_{t-1} + (1-ρ)Δ_t^2,\quad p \leftarrow p - η Δ_t

  ``torch.optim.Adadelta``'s rule and defaults: η = 1 is Zeiler's method,
  whose step needs no learning rate; η scales it afterwards (the running
  average :math:`d` holds the unscaled :math:`Δ`). ``optax.adadelta`` is the
  same rule (ε inside both roots, the decay coupled); its ``learning_rate``
  defaults to ``None``, which applies no learning rate and no sign flip
  (``optax.adadelta()`` steps up the gradient, ``go.adadelta()`` down it),
  and its mask is named ``weight_decay_mask``. The decay is
  the L2 gradient, as in torch, so it passes through the normalisation.

  Args:
    learning_rate: η, a non-negative number or a schedule; 1.0 (torch's
      ``lr`` default) is the paper's method.
    decay: ρ, the decay of both running averages (torch's ``rho``), in
      [0, 1).
    eps: ε, added inside both square roots, >= 0.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    nu_dtype: storage of both running averages (``gt.scale_by_adadelta``).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.adadelta()
    >>> params = jnp.array([1.0, 2.0])
    >>> u, _ = tx.update(2 * params, tx.init(params), params)
    >>> u.round(5)  # the first steps are about √(ε/(1−ρ)), whatever g
    Array([-0.00316, -0.00316], dtype=float32)

  Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012
  (arXiv:1212.5701); ``torch.optim.Adadelta``.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.scale_by_adadelta(decay=decay, eps=eps, nu_dtype=nu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )
