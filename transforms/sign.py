"""Sign-based direction rules: sign / soft sign, Lion and Tiger."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx.transforms import _tree
from gradtx.transforms import _validate


def scale_by_sign(tau: float = 0.0) -> optax.GradientTransformation:
  r"""Replaces each coordinate by its sign, or by a soft sign.

  .. math::
    u = \operatorname{sign}(g) \;(τ = 0),\qquad u = \frac{g}{τ + |g|}\;(τ > 0)

  The soft sign is a smooth, bounded stand-in for the sign (|u| < 1), equal
  to :math:`g/τ` near 0. ``sign(0) = 0``, so zero gradients give zero updates.

  Args:
    tau: softening constant, >= 0.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Reference: Bernstein et al., "signSGD: Compressed Optimisation for
  Non-Convex Problems", ICML 2018.
  """
  _validate.check_non_negative("tau", tau)

  def update_fn(updates, state, params=None):
    del params
    if _validate.is_static_zero(tau):
      return jax.tree.map(jnp.sign, updates), state

    def soft_sign(g):
      denominator = tau + jnp.abs(g)
      return jnp.where(denominator > 0, g / denominator, 0).astype(g.dtype)

    return jax.tree.map(soft_sign, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


class ScaleByLionState(NamedTuple):
  """State of ``scale_by_lion``: the momentum buffer."""

  mu: optax.Updates


def scale_by_lion(
    b1: float = 0.9, b2: float = 0.99, *, mu_dtype: Optional[Any] = None
) -> optax.GradientTransformation:
  r"""Lion's direction: the sign of an interpolated momentum.

  .. math::
    u_t = \operatorname{sign}(β_1 m_{t-1} + (1-β_1) g_t),\qquad
    m_t = β_2 m_{t-1} + (1-β_2) g_t

  Args:
    b1: interpolation weight of the momentum in the direction, in [0, 1).
    b2: decay of the stored momentum, in [0, 1).
    mu_dtype: dtype of the stored momentum (default: the parameter's).

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByLionState``.

  Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms",
  NeurIPS 2023, Program 1.
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)

  def init_fn(params):
    return ScaleByLionState(_tree.zeros_like_tree(params, mu_dtype))

  def update_fn(updates, state, params=None):
    del params

    def leaf(g, m):
      dtype = _tree.compute_dtype(g)
      g_, m_ = g.astype(dtype), m.astype(dtype)
      u = jnp.sign(b1 * m_ + (1 - b1) * g_)
      m_new = b2 * m_ + (1 - b2) * g_
      return u.astype(g.dtype), m_new.astype(m.dtype)

    u, mu = _tree.map_leaves(leaf, 2, updates, state.mu)
    return u, ScaleByLionState(mu)

  return optax.GradientTransformation(init_fn, update_fn)


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
    mu_dtype: dtype of the stored momentum (default: the parameter's).

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByLionState``.

  Reference: Su Jianlin, "Tiger: A Tight-fisted Optimizer", 2023
  (github.com/bojone/tiger).
  """
  _validate.check_decay("beta", beta)
  return scale_by_lion(beta, beta, mu_dtype=mu_dtype)
