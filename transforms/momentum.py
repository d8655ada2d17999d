"""First-moment accumulators: heavy-ball / Nesterov momentum and the EMA."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class MomentumState(NamedTuple):
  """State of ``momentum``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: the velocity buffer, one leaf per parameter (``None`` without one).
  """

  count: jax.Array
  mu: optax.Updates


@_validate.checks_arguments
def momentum(
    momentum: float = 0.9,
    *,
    nesterov: bool = False,
    dampening: float = 0.0,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Heavy-ball momentum, optionally with the Nesterov look-ahead.

  .. math::
    m_1 = g_1,\quad m_t = μ m_{t-1} + (1-d) g_t,\qquad
    u_t = \begin{cases} g_t + μ m_t & \text{nesterov} \\ m_t & \text{otherwise}
    \end{cases}

  This is ``torch.optim.SGD``'s buffer, first step included (the dampening d
  applies from the second step on). Momentum is also often written as an EMA,
  :math:`m_t = β m_{t-1} + (1-β) g_t`: that is ``ema``, and differs from the
  heavy-ball form only by the constant factor 1/(1−β) folded into the
  learning rate.

  Args:
    momentum: μ, the decay of the buffer, in [0, 1).
    nesterov: return the Nesterov look-ahead :math:`g_t + μ m_t`.
    dampening: d, the fraction of the gradient withheld from the buffer, in
      [0, 1); it must be 0 with ``nesterov`` (as ``torch.optim.SGD`` requires).
    mu_dtype: storage of the buffer, as in ``scale_by_adam``: ``None`` (the
      parameter's dtype), a floating or complex dtype, ``"int8"`` /
      ``gt.Int8Blocks(...)`` or ``gt.StochasticBfloat16()``.

  A literal ``momentum=0`` keeps no buffer (``mu`` is ``None``) and returns
  the updates unchanged, ignoring ``dampening``, as torch does. A momentum
  injected as a traced 0 (``optax.inject_hyperparams``) keeps the buffer,
  m_t = g_t (undamped, so the step is torch's g_t): raised later, it goes on
  from there, where torch, which keeps no buffer at 0, starts one from the
  gradient.

  Returns:
    An ``optax.GradientTransformation`` with state ``MomentumState``.

  Reference: Polyak 1964; Sutskever et al., "On the importance of
  initialization and momentum in deep learning", ICML 2013 (Nesterov form).
  """
  _validate.check_decay("momentum", momentum)
  _validate.check_decay("dampening", dampening)
  if nesterov and _validate.is_static_nonzero(dampening):
    raise ValueError(
        f"dampening must be 0 with nesterov=True (torch.optim.SGD's rule), got {dampening!r}")

  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  keeps_buffer = not _validate.is_static_zero(momentum)
  dampens = not _validate.is_static_zero(dampening)
  # A traced momentum may be 0, where torch steps the undamped gradient.
  traced = keeps_buffer and not _validate.is_static_nonzero(momentum)

  def init_fn(params):
    mu = None
    if keeps_buffer:
      mu = state_format.zeros_like_tree(params, mu_format, signed=True)
    return MomentumState(jnp.zeros([], jnp.int32), mu)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    if not keeps_buffer:
      return updates, MomentumState(count, None)
    _validate.check_matching_shapes(updates, state.mu, "momentum", of="state")
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format)

    def leaf(g, m, seed):
      dtype = _tree.compute_dtype(g)
      g_ = g.astype(dtype)
      m_new = momentum * state_format.load(m, dtype) + (1 - dampening) * g_
      if dampens:  # with d = 0, m_0 = 0 already gives m_1 = g_1
        m_new = jnp.where((state.count == 0) | (momentum == 0) if traced
                          else state.count == 0, g_, m_new)
      quantized = state_format.is_quantized(mu_format)
      if not quantized:  # the step from the momentum as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed)
      u = g_ + momentum * m_new if nesterov else m_new
      if quantized:
        u, m_new = state_format.reset_non_finite(g_, u, m_new)
        m_stored = state_format.store(m_new, m, mu_format, seed)
      return u.astype(g.dtype), m_stored

    u, mu = _tree.map_leaves(leaf, 2, updates, state.mu, seeds, once_per_shape=True)
    return u, MomentumState(count, mu)

  return optax.GradientTransformation(init_fn, update_fn)


class EmaState(NamedTuple):
  """State of ``ema``: step count and the moving average."""

  count: jax.Array
  mu: optax.Updates


@_validate.checks_arguments
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

  where ``debias`` first replaces :math:`m_t` by :math:`m_t/(1-β^t)`, so a
  constant gradient comes back unchanged in both forms. The Nesterov form is
  the reference Muon's (``grad.lerp_(momentum, beta)``). ``optax.ema``
  debiases by default; here ``debias=False`` (the reference Muon's form), so
  ``optax.ema(β)`` is ``ema(β, debias=True)``.

  Args:
    decay: β, in [0, 1).
    nesterov: return the look-ahead :math:`β m_t + (1-β) g_t`.
    debias: undo the zero initialisation (see above).
    mu_dtype: storage of the average: ``None`` (the parameter's dtype), a
      floating dtype, ``"int8"`` / ``gt.Int8Blocks(...)`` (block-wise 8-bit
      codes; a coordinate with a non-finite gradient then gets a zero update
      and a reset average, as in ``scale_by_adam``) or
      ``gt.StochasticBfloat16()``.

  A literal ``decay=0`` keeps no average (``mu`` is ``None``): the EMA is then
  the updates themselves.

  Returns:
    An ``optax.GradientTransformation`` with state ``EmaState``.

  Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015
  (the first moment and its bias correction); ``optax.ema``.
  """
  _validate.check_decay("decay", decay)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)

  keeps_average = not _validate.is_static_zero(decay)

  def init_fn(params):
    mu = None
    if keeps_average:
      mu = state_format.zeros_like_tree(params, mu_format, signed=True)
    return EmaState(jnp.zeros([], jnp.int32), mu)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    if not keeps_average:
      return updates, EmaState(count, None)
    _validate.check_matching_shapes(updates, state.mu, "ema", of="state")
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format)

    def leaf(g, m, seed):
      dtype = _tree.compute_dtype(g)
      g_ = g.astype(dtype)
      m_new = decay * state_format.load(m, dtype) + (1 - decay) * g_
      quantized = state_format.is_quantized(mu_format)
      if not quantized:  # the step from the average as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed)
      m_used = m_new / _tree.bias_correction(decay, count, dtype) if debias else m_new
      u = decay * m_used + (1 - decay) * g_ if nesterov else m_used
      if quantized:
        u, m_new = state_format.reset_non_finite(g_, u, m_new)
        m_stored = state_format.store(m_new, m, mu_format, seed)
      return u.astype(g.dtype), m_stored

    u, mu = _tree.map_leaves(leaf, 2, updates, state.mu, seeds, once_per_shape=True)
    return u, EmaState(count, mu)

  return optax.GradientTransformation(init_fn, update_fn)
