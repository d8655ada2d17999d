"""Adadelta: steps in the units of the parameters, from two running averages."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScaleByAdadeltaState(NamedTuple):
  """State of ``scale_by_adadelta``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    nu: EMA of the squared gradients, :math:`E[g^2]` (stored in ``nu_dtype``).
    delta_nu: EMA of the squared steps, :math:`E[Δx^2]` (``nu_dtype`` too).
  """

  count: jax.Array
  nu: optax.Updates
  delta_nu: optax.Updates


@_validate.checks_arguments
def scale_by_adadelta(
    *,
    decay: float = 0.9,
    eps: float = 1e-6,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adadelta's ratio of update and gradient RMS.

  .. math::
    v_t = ρ v_{t-1} + (1-ρ)|g_t|^2,\quad
    u_t = \frac{\sqrt{d_{t-1} + ε}}{\sqrt{v_t + ε}}\, g_t,\quad
    d_t = ρ d_{t-1} + (1-ρ)|u_t|^2

  (Zeiler 2012, Algorithm 1, with :math:`v_0 = d_0 = 0`): the ratio of two
  root mean squares gives :math:`u_t` the units of the parameters. This is
  ``torch.optim.Adadelta``'s rule and ``optax.scale_by_adadelta``'s (ε inside
  both roots); :math:`d` accumulates :math:`u_t` before any learning rate,
  as in both (``go.adadelta``'s η, torch's ``lr``, multiplies the step
  afterwards). A complex :math:`g` uses :math:`|g|^2 = g\bar g`, one moment
  shared by the real and imaginary parts (torch keeps one per part:
  ``optax.contrib.split_real_and_imaginary`` gives its steps).

  A NaN gradient propagates into :math:`v`, :math:`d` and every later step of
  its coordinate (as optax and torch; ``optax.apply_if_finite`` skips such
  steps). With ``"int8"`` state the coordinate instead gets a zero step and
  both averages restart from zero there (``gt.scale_by_adam``'s rule).

  Args:
    decay: ρ, the decay of both running averages (torch's and optax's
      ``rho``), in [0, 1).
    eps: ε, added inside both square roots, >= 0 (> 0 for a first step:
      with :math:`d_0 = 0` and ε = 0 every step is zero).
    nu_dtype: storage of both running averages: ``None`` (the parameter's
      dtype), a floating dtype, ``"int8"`` / ``gt.Int8Blocks(...)`` or
      ``gt.StochasticBfloat16()``, as ``gt.scale_by_adam``'s ``nu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdadeltaState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_adadelta(decay=0.9, eps=1e-6)
    >>> u, _ = tx.update(jnp.array([1.0, -4.0]), tx.init(jnp.zeros(2)))
    >>> u.round(6)  # √ε/√(0.1 g² + ε) · g ≈ ±√(10 ε) for |g| ≫ √ε
    Array([ 0.003162, -0.003162], dtype=float32)

  Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012
  (arXiv:1212.5701); ``torch.optim.Adadelta``.
  """
  _validate.check_decay("decay", decay)
  _validate.check_non_negative("eps", eps)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)
  quantized = state_format.is_quantized(nu_format)

  def init_fn(params):
    def zeros():  # a fresh tree each time: donation refuses aliased buffers
      return state_format.zeros_like_tree(params, nu_format, signed=False, real=True)

    return ScaleByAdadeltaState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.nu, "scale_by_adadelta", of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, nu_format)

    def leaf(g, v, d, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      rho, c = jnp.asarray(decay, real), jnp.asarray(1 - decay, real)
      g_ = g.astype(dtype)
      v_new = rho * state_format.load(v, real) + c * _tree.abs_sq(g_)
      if not quantized:  # the step from the average as stored (stored_and_used)
        v_stored, v_new = state_format.stored_and_used(v_new, v, nu_format, seed, stream=0)
      u = jnp.sqrt(state_format.load(d, real) + eps) / jnp.sqrt(v_new + eps) * g_
      d_new = rho * state_format.load(d, real) + c * _tree.abs_sq(u)
      if quantized:
        u, v_new, d_new = state_format.reset_non_finite(g_, u, v_new, d_new)
        v_stored = state_format.store(v_new, v, nu_format, seed, stream=0)
      d_stored = state_format.store(d_new, d, nu_format, seed, stream=1)
      return u.astype(g.dtype), v_stored, d_stored

    u, nu, delta_nu = _tree.map_leaves(
        leaf, 3, updates, state.nu, state.delta_nu, seeds, once_per_shape=True)
    return u, ScaleByAdadeltaState(count, nu, delta_nu)

  return optax.GradientTransformation(init_fn, update_fn)
