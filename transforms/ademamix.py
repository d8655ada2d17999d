"""AdEMAMix: Adam's update with a slow EMA of the gradients mixed into its numerator."""

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScaleByAdemamixState(NamedTuple):
  """State of ``scale_by_ademamix``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: the fast EMA of the gradients, decay b1 (stored in ``mu_dtype``).
    mu_slow: the slow EMA of the gradients, decay b3 (``mu_dtype``).
    nu: the EMA of the squared gradients, decay b2 (``nu_dtype``).
  """

  count: jax.Array
  mu: optax.Updates
  mu_slow: optax.Updates
  nu: optax.Updates


def _one_minus(decay, real):
  """(decay, 1 − decay) in ``real``; 1 − b formed before the cast for numbers."""
  if isinstance(decay, (int, float)):
    return jnp.asarray(decay, real), jnp.asarray(1 - decay, real)
  decay = jnp.asarray(decay, real)
  return decay, 1 - decay


def scale_by_ademamix(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Union[float, optax.Schedule] = 0.9999,
    alpha: Union[float, optax.Schedule] = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by AdEMAMix's mixture of a fast and a slow EMA.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
    s_t = β_{3,t} s_{t-1} + (1-β_{3,t}) g_t,\quad
    v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\\
    u_t = \frac{m_t/(1-β_1^t) + α_t s_t}{\sqrt{v_t/(1-β_2^t) + ε_{root}} + ε}

  The slow EMA :math:`s_t` is not bias-corrected: it fills slowly, which
  the paper relies on (with warm-up schedules of α and β₃ over the first
  steps). ``b3`` and ``alpha`` may be schedules of the step count,
  evaluated at the 0-based step as optax's are, e.g.
  ``alpha=optax.linear_schedule(0.0, 5.0, 10_000)``. This is
  ``optax.contrib.scale_by_ademamix``'s rule (equal in float64) with
  separate ``nu_dtype`` and the 8-bit and stochastic-bf16 formats of
  ``gt.scale_by_adam``; optax stores ν in ``mu_dtype`` and defaults
  ``alpha`` to 6 here but 5 in its ``ademamix``: gradtx uses 5 in both.
  With ``"int8"`` moments, a coordinate whose gradient is not finite gets a
  zero update and fresh moments, as in ``gt.scale_by_adam``.

  Args:
    b1: decay of the fast EMA, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    b3: decay of the slow EMA, in [0, 1), or a schedule of the step count.
    alpha: α, the weight of the slow EMA, >= 0, or a schedule.
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    mu_dtype: storage of both EMAs of the gradients: ``None`` (the
      parameter's dtype), a floating dtype, ``"int8"`` /
      ``gt.Int8Blocks(...)`` or ``gt.StochasticBfloat16()``.
    nu_dtype: storage of the second moment, as ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdemamixState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_ademamix(b3=0.5, alpha=2.0)
    >>> u, _ = tx.update(jnp.array([2.0, -3.0]), tx.init(jnp.zeros(2)))
    >>> u.round(3)  # (ĝ + α(1 − b3)g)/|g| = sign(g)(1 + 2·0.5)
    Array([ 2., -2.], dtype=float32)

  Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer:
  Better, Faster, Older", ICLR 2025 (arXiv 2409.03137), Algorithm 1.
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_decay("b3", b3, schedule=True)
  _validate.check_scalar_or_schedule("alpha", alpha)
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)
  guard_non_finite = state_format.is_quantized(mu_format, nu_format)

  def init_fn(params):
    def mu():  # a fresh tree each time: donation refuses aliased buffers
      return state_format.zeros_like_tree(params, mu_format, signed=True)

    return ScaleByAdemamixState(
        count=jnp.zeros([], jnp.int32), mu=mu(), mu_slow=mu(),
        nu=state_format.zeros_like_tree(params, nu_format, signed=False, real=True),
    )

  def update_fn(updates, state, params=None):
    for moment in (state.nu, state.mu, state.mu_slow):
      _validate.check_matching_shapes(updates, moment, "scale_by_ademamix", of="state")
    del params
    b3_t = _tree.resolve_schedule(b3, state.count)
    alpha_t = _tree.resolve_schedule(alpha, state.count)
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)

    def leaf(g, m, s, v, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      (b1_, c1), (b2_, c2), (b3_, c3) = (_one_minus(b, real) for b in (b1, b2, b3_t))
      g_ = g.astype(dtype)
      m_new = b1_ * state_format.load(m, dtype) + c1 * g_
      s_new = b3_ * state_format.load(s, dtype) + c3 * g_
      v_new = b2_ * state_format.load(v, real) + c2 * _tree.abs_sq(g_)
      if not guard_non_finite:  # the step from the moments as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
        s_stored, s_new = state_format.stored_and_used(s_new, s, mu_format, seed, stream=1)
        v_stored, v_new = state_format.stored_and_used(v_new, v, nu_format, seed, stream=2)
      m_hat = m_new / _tree.bias_correction(b1, count, dtype)
      v_hat = v_new / _tree.bias_correction(b2, count, dtype)
      u = (m_hat + jnp.asarray(alpha_t, real) * s_new) / (_tree.root(v_hat + eps_root) + eps)
      if guard_non_finite:
        u, m_new, s_new, v_new = state_format.reset_non_finite(g_, u, m_new, s_new, v_new)
        m_stored = state_format.store(m_new, m, mu_format, seed, stream=0)
        s_stored = state_format.store(s_new, s, mu_format, seed, stream=1)
        v_stored = state_format.store(v_new, v, nu_format, seed, stream=2)
      return u.astype(g.dtype), m_stored, s_stored, v_stored

    u, mu, mu_slow, nu = _tree.map_leaves(
        leaf, 4, updates, state.mu, state.mu_slow, state.nu, seeds, once_per_shape=True)
    return u, ScaleByAdemamixState(count, mu, mu_slow, nu)

  return optax.GradientTransformation(init_fn, update_fn)
