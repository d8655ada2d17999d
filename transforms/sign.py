"""Sign-based direction rules: sign / soft sign, Lion and Tiger."""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import quantize, state_format


def sign(x: jax.Array) -> jax.Array:
  """``jnp.sign(x)``, but NaN where x is ±inf or NaN: a non-finite gradient or
  momentum shows in the update instead of stepping ±1 for ever."""
  return jnp.sign(x) + 0 * x  # 0·(±inf) = NaN; a multiply-add, cheaper than a select


def scale_by_sign(tau: float = 0.0) -> optax.GradientTransformation:
  r"""Replaces each coordinate by its sign, or by a soft sign.

  .. math::
    u = \operatorname{sign}(g) \;(τ = 0),\qquad u = \frac{g}{τ + |g|}\;(τ > 0)

  The soft sign is a smooth, bounded stand-in for the sign (|u| < 1), equal
  to :math:`g/τ` near 0. ``sign(0) = 0``, so zero gradients give zero updates;
  a NaN or ±inf coordinate gives NaN (``sign``), where ``jnp.sign(±inf)``
  would hide it.

  Args:
    tau: softening constant, >= 0.

  Returns:
    A stateless ``optax.GradientTransformation``. Complex parameters are
    refused at ``init`` (the sign of a complex number is no descent
    direction of a real loss).

  Reference: Bernstein et al., "signSGD: Compressed Optimisation for
  Non-Convex Problems", ICML 2018.
  """
  _validate.check_non_negative("tau", tau)

  def init_fn(params):
    _validate.check_real_leaves(params, "scale_by_sign")
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params  # unused: a wrapper may hand the sign a part of the tree (on_matrix_views)
    _validate.check_floating_updates(updates, "scale_by_sign")
    if _validate.is_static_zero(tau):
      return jax.tree.map(sign, updates), state

    def soft_sign(g):
      soft = g / (tau + jnp.abs(g))  # NaN for NaN and ±inf
      if not _validate.is_static_nonzero(tau):  # a traced τ may be 0: sign(0) = 0
        soft = jnp.where(g == 0, jnp.zeros_like(soft), soft)
      return soft.astype(g.dtype)

    return jax.tree.map(soft_sign, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByLionState(NamedTuple):
  """State of ``scale_by_lion``: the step count and the momentum buffer."""

  count: jax.Array
  mu: optax.Updates


LION_MODES = ("hard", "smooth", "refined")


def scale_by_lion(
    b1: float = 0.9, b2: float = 0.99, *, mu_dtype: Optional[Any] = None,
    mode: str = "hard", smooth_beta: float = 1.0,
) -> optax.GradientTransformation:
  r"""Lion's direction: the sign of an interpolated momentum.

  .. math::
    u_t = σ(β_1 m_{t-1} + (1-β_1) g_t),\qquad
    m_t = β_2 m_{t-1} + (1-β_2) g_t

  with σ = sign (``mode="hard"``, Lion's), :math:`σ(x) = \tanh(β_s x)`
  (``"smooth"``, β_s = ``smooth_beta``) or :math:`σ(x) = x` for |x| < 1 and
  sign(x) beyond (``"refined"``): optax's ``scale_by_lion`` modes, the same
  numbers but on non-finite input, which gives NaN in every mode here
  (optax's smooth mode turns ±inf into ±1).

  With static β₁ <= β₂ and the momentum kept at the compute width, the
  direction's argument is read from m_t, as
  (β₁/β₂)m_t + ((β₂−β₁)/β₂)g_t (the same number up to rounding), so
  the donated step overwrites m in place (the old m read for the direction
  made XLA copy it every step, as optax.lion does).

  Args:
    b1: interpolation weight of the momentum in the direction, in [0, 1).
    b2: decay of the stored momentum, in [0, 1).
    mu_dtype: storage of the momentum, as in ``scale_by_adam``.
    mode: σ, one of ``"hard"``, ``"smooth"``, ``"refined"`` (optax's name).
    smooth_beta: β_s of the smooth mode, > 0 (optax's name).

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByLionState``;
    complex parameters are refused at ``init``.

  Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms",
  NeurIPS 2023, Program 1.
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  return _sign_of_momentum(b1, b2, mu_dtype, "scale_by_lion",
                           _lion_direction(mode, smooth_beta))


def _lion_direction(mode: str, smooth_beta: Any) -> Callable[[jax.Array], jax.Array]:
  """σ of ``scale_by_lion``'s ``mode``, after checking it and ``smooth_beta``;
  NaN for a non-finite argument in every mode."""
  if mode not in LION_MODES:
    raise ValueError(f"mode must be one of {LION_MODES}, got {mode!r}")
  _validate.check_in_range("smooth_beta", smooth_beta, 0.0, float("inf"), low_inclusive=False)
  if mode == "smooth":
    return lambda x: jnp.tanh(smooth_beta * x) + 0 * x  # 0·(±inf) = NaN, as ``sign``
  if mode == "refined":
    return lambda x: jnp.where(jnp.abs(x) < 1, x, sign(x))
  return sign


def _sign_of_momentum(b1: float, b2: float, mu_dtype: Optional[Any], name: str,
                      direction: Callable[[jax.Array], jax.Array] = sign,
                      ) -> optax.GradientTransformation:
  """``scale_by_lion``'s transformation, with σ = ``direction``; ``name`` is
  the one errors give."""
  mu_format = state_format.state_format("mu_dtype", mu_dtype)

  def init_fn(params):
    _validate.check_real_leaves(params, name)
    return ScaleByLionState(
        jnp.zeros([], jnp.int32),
        state_format.zeros_like_tree(params, mu_format, signed=True))

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.mu, name, of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format)

    def leaf(g, m, seed):
      dtype = _tree.compute_dtype(g)
      g_, m_ = g.astype(dtype), state_format.load(m, dtype)
      m_new = b2 * m_ + (1 - b2) * g_
      if state_format.is_quantized(mu_format):
        (m_new,) = state_format.reset_non_finite(g_, m_new)
      m_stored, m_used = state_format.stored_and_used(m_new, m, mu_format, seed)
      if b1 is b2:  # Tiger: the sign of m_t as stored (rounding keeps signs)
        u = direction(m_used)
      elif _from_new_momentum(b1, b2) and not isinstance(m, quantize.QuantizedArray) and (
          m.dtype == dtype):
        # β₁m + (1−β₁)g = (β₁/β₂)m_t + ((β₂−β₁)/β₂)g: the direction
        # read from m_t, so nothing reads the old m after the donated buffer
        # is overwritten (it was copied each step, as optax.lion's is).
        u = direction((b1 / b2) * m_used + ((b2 - b1) / b2) * g_)
      else:
        u = direction(b1 * m_ + (1 - b1) * g_)  # an inf momentum stays visible
        if state_format.is_quantized(mu_format):
          (u,) = state_format.reset_non_finite(g_, u)
      return u.astype(g.dtype), m_stored

    u, mu = _tree.map_leaves(leaf, 2, updates, state.mu, seeds, once_per_shape=True)
    return u, ScaleByLionState(count, mu)

  return optax.GradientTransformation(init_fn, update_fn)


def _from_new_momentum(b1: Any, b2: Any) -> bool:
  """Whether Lion's direction is read from m_t: static 0 < β₁ <= β₂ (Lion's
  0.9/0.99), where both coefficients β₁/β₂ and (β₂ − β₁)/β₂ are in [0, 1] and
  the rounding is the reference's. With β₂ < β₁ the error grows like ε·β₁/β₂
  (signs flipped at 0.9/0.01): the reference form. Kept narrower than
  computed (bf16) or in int8 blocks, m_t as stored is rounded: the direction
  then reads the old m too."""
  static = lambda b: isinstance(b, (int, float)) and not isinstance(b, bool)
  return static(b1) and static(b2) and 0 < b2 and b1 <= b2


def scale_by_tiger(
    beta: float = 0.965, *, mu_dtype: Optional[Any] = None
) -> optax.GradientTransformation:
  r"""Tiger's direction: the sign of the gradient's EMA.

  .. math::
    m_t = β m_{t-1} + (1-β) g_t,\qquad u_t = \operatorname{sign}(m_t)

  Tiger is Lion with :math:`β_1 = β_2 = β`, since then
  :math:`β m_{t-1} + (1-β) g_t = m_t`; it is built that way, with one stored
  buffer. 0.965 is the reference code's default.

  Args:
    beta: β, in [0, 1).
    mu_dtype: storage of the momentum, as in ``scale_by_adam``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByLionState``.

  Reference: Su Jianlin, "Tiger: A Tight-fisted Optimizer", 2023
  (github.com/bojone/tiger).
  """
  _validate.check_decay("beta", beta)
  return _sign_of_momentum(beta, beta, mu_dtype, "scale_by_tiger")
