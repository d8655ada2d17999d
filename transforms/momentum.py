"""First-moment accumulators: heavy-ball / Nesterov momentum and the EMA."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx.transforms import _tree
from gradtx.transforms import _validate


class MomentumState(NamedTuple):
  """State of ``momentum``: the velocity buffer (one leaf per parameter)."""

  mu: optax.Updates


def momentum(
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    dampening: float = 0.0,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Heavy-ball momentum, optionally with the Nesterov look-ahead.

  .. math::
    m_t = μ m_{t-1} + (1-d) g_t,\qquad
    u_t = \begin{cases} g_t + μ m_t & \text{nesterov} \\ m_t & \text{otherwise}
    \end{cases}

  with :math:`m_0 = 0`. This is ``torch.optim.SGD``'s buffer (its first step
  sets :math:`m_1 = g_1`, which :math:`m_0 = 0` reproduces when d = 0). The
  seeds write momentum as an EMA, :math:`m_t = β m_{t-1} + (1-β) g_t`: that
  is ``dampening = momentum`` here, or ``ema``, and differs from the heavy-ball
  form only by the constant factor 1/(1−β) folded into the learning rate.

  Args:
    momentum: μ, the decay of the buffer, in [0, 1).
    nesterov: return the Nesterov look-ahead :math:`g_t + μ m_t`.
    dampening: d, the fraction of the gradient withheld from the buffer, in
      [0, 1).
    mu_dtype: dtype of the stored buffer (default: the parameter's).

  A literal ``momentum=0`` (with no dampening) keeps no buffer (``mu`` is
  ``None``) and returns the updates unchanged, as torch does.

  Returns:
    An ``optax.GradientTransformation`` with state ``MomentumState``.

  Reference: Polyak 1964; Sutskever et al., "On the importance of
  initialization and momentum in deep learning", ICML 2013 (Nesterov form).
  """
  _validate.check_decay("momentum", momentum)
  _validate.check_decay("dampening", dampening)

  keeps_buffer = not (
      _validate.is_static_zero(momentum) and _validate.is_static_zero(dampening)
  )

  def init_fn(params):
    if not keeps_buffer:
      return MomentumState(None)
    return MomentumState(_tree.zeros_like_tree(params, mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    if not keeps_buffer:
      return updates, state

    def leaf(g, m):
      dtype = _tree.compute_dtype(g)
      g_ = g.astype(dtype)
      m_new = momentum * m.astype(dtype) + (1 - dampening) * g_
      u = g_ + momentum * m_new if nesterov else m_new
      return u.astype(g.dtype), m_new.astype(m.dtype)

    u, mu = _tree.map_leaves(leaf, 2, updates, state.mu)
    return u, MomentumState(mu)

  return optax.GradientTransformation(init_fn, update_fn)


class EmaState(NamedTuple):
  """State of ``ema``: step count and the moving average."""

  count: jax.Array
  mu: optax.Updates


def ema(
    decay: float = 0.9,
    *,
    nesterov: bool = False,
    debias: bool = False,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Replaces updates by their exponential moving average.

  .. math::
    m_t = β m_{t-1} + (1-β) g_t,\qquad
    u_t = m_t \;\text{or, with nesterov,}\; β m_t + (1-β) g_t

  then divided by :math:`1-β^t` when ``debias`` is set. The Nesterov form is
  the reference Muon's (``grad.lerp_(momentum, beta)``).

  Args:
    decay: β, in [0, 1).
    nesterov: return the look-ahead :math:`β m_t + (1-β) g_t`.
    debias: divide by :math:`1-β^t` to undo the zero initialisation.
    mu_dtype: dtype of the stored average (default: the parameter's).

  A literal ``decay=0`` keeps no average (``mu`` is ``None``): the EMA is then
  the updates themselves.

  Returns:
    An ``optax.GradientTransformation`` with state ``EmaState``.
  """
  _validate.check_decay("decay", decay)

  keeps_average = not _validate.is_static_zero(decay)

  def init_fn(params):
    mu = _tree.zeros_like_tree(params, mu_dtype) if keeps_average else None
    return EmaState(jnp.zeros([], jnp.int32), mu)

  def update_fn(updates, state, params=None):
    del params
    count = _tree.increment(state.count)
    if not keeps_average:
      return updates, EmaState(count, None)

    def leaf(g, m):
      dtype = _tree.compute_dtype(g)
      g_ = g.astype(dtype)
      m_new = decay * m.astype(dtype) + (1 - decay) * g_
      u = decay * m_new + (1 - decay) * g_ if nesterov else m_new
      u = u / (1 - jnp.asarray(decay, dtype) ** count) if debias else u
      return u.astype(g.dtype), m_new.astype(m.dtype)

    u, mu = _tree.map_leaves(leaf, 2, updates, state.mu)
    return u, EmaState(count, mu)

  return optax.GradientTransformation(init_fn, update_fn)
