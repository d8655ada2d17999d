"""ACProp: the gradient over the previous step's centered second moment."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScaleByAcpropState(NamedTuple):
  """State of ``scale_by_acprop``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: first moment, an EMA of the gradients (stored in ``mu_dtype``).
    nu: centered second moment, an EMA of :math:`|g - m|^2` with ε added
      every step (``nu_dtype``); the next step divides by it.
    nu_max: running maximum of ``nu`` when ``amsgrad=True``, else ``None``.
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  nu_max: Optional[optax.Updates]


@_validate.checks_arguments
def scale_by_acprop(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    amsgrad: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by ACProp's asynchronous centered second moment.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
    s_t = β_2 s_{t-1} + (1-β_2)|g_t - m_t|^2 + ε,\\
    u_1 = g_1,\quad
    u_t = \frac{g_t}{\sqrt{s_{t-1}/(1-β_2^{t-1})} + ε}\ (t \ge 2)

  The step divides the gradient by the centered second moment of the steps
  before it (asynchronous: :math:`s_{t-1}` does not hold :math:`g_t`); the
  momentum only centers :math:`s`. This is ``ACProp.step`` of the official
  code with the settings of its experiments (``main.py``: no rectification,
  ``momentum_update=False``): its first step is :math:`g_1` (the
  bias-corrected :math:`m_1`), and its ε is added into :math:`s` in place
  before each use and again to the denominator, which is the stored
  :math:`s_t` above. The official class's other options are not offered:
  ``rectify`` (its default, RAdam's rectification, not in the paper) and
  ``momentum_update`` (:math:`m_t` in the numerator). With ``amsgrad`` the
  denominator uses :math:`\max_{k<t} s_k`; as in the official AMSGrad branch,
  which adds ε to :math:`s` before the first step too, :math:`s_0 = ε`.

  ``optax.contrib.scale_by_acprop`` centers by the previous momentum,
  :math:`|g_t - m_{t-1}|^2`, where the paper and the official code take
  :math:`|g_t - m_t|^2 = β_1^2 |g_t - m_{t-1}|^2`: its :math:`s` is
  :math:`1/β_1^2` times larger and its steps from the second on are
  :math:`β_1` times these (0.9x at the default; the first is g in both) once ε
  is negligible; not reachable by arguments.
  Its ``eps_root`` is this ε inside :math:`s`.

  ε defaults to 1e-8, the official experiments' value (``main.py``, README);
  the official class and optax default to 1e-16 (AdaBelief's), with which a
  coordinate whose first gradient is exactly 0 divides its second step by
  :math:`\sqrt{10^{-16}/(1-β_2)} ≈ 3\cdot10^{-7}` (on optax's Rosenbrock test
  problem, whose y-gradient starts at 0, both jump to y ≈ −900 at the third
  step at η = 1e-3 and are still 50 away after 10000 steps; at 1e-8 this
  converges).

  A complex leaf uses :math:`|g - m|^2`. With float moments a NaN gradient
  propagates (as optax and torch). With ``"int8"`` moments a coordinate whose
  gradient is not finite gets a zero step and keeps its moments (a moment
  restarted from 0 would make its next step :math:`g/ε`). Where
  :math:`s_{t-1} = 0` (``eps=0`` and no residual yet) a zero gradient steps
  0, where the official code gives 0/0.

  Args:
    b1: decay of the first moment, in [0, 1); at 0, :math:`m_t = g_t` and
      :math:`s` holds only ε.
    b2: decay of the centered second moment, in [0, 1).
    eps: the official code's ε, added into :math:`s` and to the denominator,
      >= 0 (its experiments' 1e-8).
    amsgrad: divide by the running maximum of :math:`s` (the official
      ``amsgrad`` branch).
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    nu_dtype: storage of :math:`s` (and of its running maximum), as in
      ``scale_by_adam``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAcpropState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_acprop()
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([2.0, -3.0]), state)
    >>> u  # the first step is the gradient
    Array([ 2., -3.], dtype=float32)

  Reference: Zhuang et al., "Momentum Centering and Asynchronous Update for
  Adaptive Gradient Methods", NeurIPS 2021; github.com/juntang-zhuang/
  ACProp-Optimizer (``optimizers/ACProp.py``).
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)
  quantized = state_format.is_quantized(mu_format, nu_format)

  def init_fn(params):
    def nu(value):  # a fresh tree each time: donation refuses aliased buffers
      return state_format.full_like_tree(params, value, nu_format, signed=False, real=True)

    return ScaleByAcpropState(
        count=jnp.zeros([], jnp.int32),
        mu=state_format.zeros_like_tree(params, mu_format, signed=True),
        nu=nu(eps if amsgrad else 0.0),
        nu_max=nu(0.0) if amsgrad else None,
    )

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.nu, "scale_by_acprop", of="state")
    _validate.check_matching_shapes(updates, state.mu, "scale_by_acprop", of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)
    previous = jnp.maximum(count - 1, 1)  # t − 1 (the first step does not divide)

    def leaf(g, m, s, s_max, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      g_ = g.astype(dtype)
      s_old = state_format.load(s, real)
      s_used = state_format.load(s_max, real) if amsgrad else s_old
      m_old = state_format.load(m, dtype)
      m_new = b1 * m_old + (1 - b1) * g_
      if not quantized:  # centered by the moment as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
      s_new = b2 * s_old + (1 - b2) * _tree.abs_sq(g_ - m_new) + eps
      s_max_new = jnp.maximum(s_used, s_new) if amsgrad else None
      denominator = _tree.root(s_used / _tree.bias_correction(b2, previous, real)) + eps
      u = jnp.where(count == 1, g_, g_ / denominator)
      u = jnp.where(g_ == 0, jnp.zeros_like(u), u)  # 0/0 where s = 0 (eps = 0)
      if quantized:
        # Skip the coordinate and keep its moments: reset to 0, s would make
        # the next step g/ε.
        finite = jnp.isfinite(_tree.abs_sq(g_))
        u = jnp.where(finite, u, 0)
        m_new = jnp.where(finite, m_new, m_old)
        s_new = jnp.where(finite, s_new, s_old)
        s_max_new = jnp.where(finite, s_max_new, s_used) if amsgrad else None
        m_stored = state_format.store(m_new, m, mu_format, seed, stream=0)
      s_stored = state_format.store(s_new, s, nu_format, seed, stream=1)
      s_max_stored = (state_format.store(s_max_new, s_max, nu_format, seed, stream=2)
                      if amsgrad else None)
      return u.astype(g.dtype), m_stored, s_stored, s_max_stored

    u, mu, nu, nu_max = _tree.map_leaves(
        leaf, 4, updates, state.mu, state.nu, state.nu_max, seeds, once_per_shape=True)
    return u, ScaleByAcpropState(count, mu, nu, nu_max if amsgrad else None)

  return optax.GradientTransformation(init_fn, update_fn)
