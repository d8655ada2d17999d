"""Second-moment scaling: the Adam, AdaBelief, RMSProp and AdaGrad preconditioners.

Every transform here divides the update element-wise by a running estimate of
the gradient's scale. They share one shape: a per-leaf function of
(update, state leaves) run by ``_tree.map_leaves`` inside a single
``jax.tree.map`` pass, so XLA fuses a leaf's whole update into one loop.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScaleByAdamState(NamedTuple):
  """State of ``scale_by_adam``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: first moment, an EMA of the gradients (stored in ``mu_dtype``);
      ``None`` with ``b1=0`` (then :math:`m_t = g_t`, nothing to keep).
    nu: second moment, an EMA of the squared gradients (``nu_dtype``).
    nu_max: running maximum of ``nu`` when ``amsgrad=True``, else ``None``.
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  nu_max: Optional[optax.Updates]


@_validate.checks_arguments
def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    amsgrad: bool = False,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam's bias-corrected moment ratio.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\\
    u_t = \frac{m_t/(1-β_1^t)}{\sqrt{\tilde v_t/(1-β_2^t) + ε_{root}} + ε}

  with :math:`\tilde v_t = v_t`, or :math:`\tilde v_t = \max(\tilde v_{t-1},
  v_t)` when ``amsgrad`` is set. AMSGrad follows ``torch.optim.Adam``: the
  running maximum is taken on the raw second moment and bias-corrected
  afterwards (optax's ``amsgrad`` takes the maximum of the bias-corrected
  moment, which differs from the first step on). With ``nesterov`` the first
  moment is replaced by Dozat's look-ahead
  :math:`β_1 m_t/(1-β_1^{t+1}) + (1-β_1) g_t/(1-β_1^t)` (NAdam).

  With ``"int8"`` moments (8-bit Adam, Dettmers et al. 2022) each step
  dequantizes the stored moments, updates them in float32, computes
  :math:`u_t` from the float32 values and requantizes them (see
  ``gt.quantize_blockwise``). As in bitsandbytes, a coordinate whose gradient (or its
  square) is not finite gets a zero update and its moments restart from
  zero; the other coordinates of its block are unaffected. (With float
  moments NaN propagates, as in optax and torch: use
  ``optax.apply_if_finite`` to skip such steps.)

  Args:
    b1: decay of the first moment, in [0, 1); a plain (untraced) 0 keeps no first
      moment (RMSProp with Adam's bias correction, e.g. Shampoo's grafting).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    amsgrad: keep the running maximum of the second moment (Reddi et al. 2018).
    nesterov: use the Nesterov (NAdam) first moment (Dozat 2016, as
      ``optax.nadam``; ``torch.optim.NAdam`` also schedules β₁ by its
      ``momentum_decay``, which is not implemented).
    mu_dtype: storage of the first moment: ``None`` (the parameter's dtype),
      a floating dtype, ``"int8"`` / ``gt.Int8Blocks(block_size, min_size)``
      (block-wise 8-bit codes) or ``gt.StochasticBfloat16()``.
    nu_dtype: storage of the second moment (and of its running maximum), as
      ``mu_dtype``; ``jnp.bfloat16`` halves its memory, ``"int8"`` quarters
      it. Arithmetic always runs in at least float32. At ``b2`` >= ~0.996 a
      bf16 v rounded to nearest cannot decay and is biased high
      (:math:`(1 - b_2) v` is under half its ulp): use
      ``gt.StochasticBfloat16()`` there.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdamState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_adam()
    >>> u, _ = tx.update(jnp.array([2.0, -3.0]), tx.init(jnp.zeros(2)))
    >>> u.round(3)  # the first step is sign(g) up to eps
    Array([ 1., -1.], dtype=float32)

  Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)
  guard_non_finite = state_format.is_quantized(mu_format, nu_format)

  keeps_mu = not _validate.is_static_zero(b1)

  def init_fn(params):
    def nu():  # a fresh tree each time: donation refuses aliased buffers
      return state_format.zeros_like_tree(
          params, nu_format, signed=False, real=True)

    return ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=(state_format.zeros_like_tree(params, mu_format, signed=True)
            if keeps_mu else None),
        nu=nu(),
        nu_max=nu() if amsgrad else None,
    )

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.nu, "scale_by_adam", of="state")
    _validate.check_matching_shapes(updates, state.mu, "scale_by_adam", of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)

    def leaf(g, m, v, v_max, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      # 1 − b is formed before the cast: 1 − float32(0.999) is off by 1e-5.
      b1_, b2_ = jnp.asarray(b1, real), jnp.asarray(b2, real)
      c1, c2 = jnp.asarray(1 - b1, real), jnp.asarray(1 - b2, real)
      g_ = g.astype(dtype)
      m_new = b1_ * state_format.load(m, dtype) + c1 * g_ if keeps_mu else g_
      v_new = b2_ * state_format.load(v, real) + c2 * _tree.abs_sq(g_)
      v_max_new = None
      if amsgrad and guard_non_finite:
        v_max_new = jnp.maximum(state_format.load(v_max, real), v_new)
      if guard_non_finite:
        # The update is computed from the moments as stored (reset where g is
        # not finite), so XLA reads each moment once instead of recomputing
        # it (and copying the donated buffer it overwrites).
        m_new, v_new, v_max_new = state_format.reset_non_finite(g_, m_new, v_new, v_max_new)
      m_stored, m_new = (state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
                         if keeps_mu else (None, m_new))
      v_stored, v_new = state_format.stored_and_used(v_new, v, nu_format, seed, stream=1)
      if amsgrad and not guard_non_finite:
        # The max of v as stored (rounding is monotone: the same max): taken
        # of the wider v, the donated v_max buffer was copied (bf16 state).
        v_max_new = jnp.maximum(state_format.load(v_max, real), v_new)
      v_max_stored, v_max_new = (
          state_format.stored_and_used(v_max_new, v_max, nu_format, seed, stream=2)
          if amsgrad else (None, None))
      v_used = v_max_new if amsgrad else v_new
      if nesterov:
        m_hat = _tree.nesterov_debiased(b1, m_new, g_, count, dtype)
      else:
        m_hat = m_new / _tree.bias_correction(b1, count, dtype)
      v_hat = v_used / _tree.bias_correction(b2, count, dtype)
      u = m_hat / (_tree.root(v_hat + eps_root) + eps)
      if guard_non_finite:
        (u,) = state_format.reset_non_finite(g_, u)
      return u.astype(g.dtype), m_stored, v_stored, v_max_stored

    u, mu, nu, nu_max = _tree.map_leaves(
        leaf, 4, updates, state.mu, state.nu, state.nu_max, seeds, once_per_shape=True
    )
    return u, ScaleByAdamState(
        count, mu if keeps_mu else None, nu, nu_max if amsgrad else None)

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByBeliefState(NamedTuple):
  """State of ``scale_by_belief``: step count, first moment, belief variance."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


@_validate.checks_arguments
def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by AdaBelief's "belief" in the gradient.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
    s_t = β_2 s_{t-1} + (1-β_2)|g_t - m_t|^2 + ε,\\
    u_t = \frac{m_t/(1-β_1^t)}{\sqrt{s_t/(1-β_2^t)} + ε}

  As in Algorithm 2 of the paper (and its official code), ε is added into the
  stored :math:`s_t` at every step and again to the denominator; optax's
  ``scale_by_belief`` uses a separate ``eps_root`` (``eps_root=eps`` there is
  this rule). The sum is taken as (β₂s + ε) + (1−β₂)|g − m|² (an ulp from
  the paper's order), which lets the donated step update s in place.
  ``nesterov=True`` replaces :math:`m_t/(1-β_1^t)` by Dozat's look-ahead, as in
  ``scale_by_adam`` (``optax.scale_by_belief``'s ``nesterov``).

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the belief variance, in [0, 1).
    eps: the paper's ε, >= 0.
    nesterov: use the Nesterov (NAdam) first moment, as ``scale_by_adam``.
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    nu_dtype: storage of the belief variance, as in ``scale_by_adam``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByBeliefState``.

  Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the
  Belief in Observed Gradients", NeurIPS 2020.
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)

  def init_fn(params):
    return ScaleByBeliefState(
        jnp.zeros([], jnp.int32),
        state_format.zeros_like_tree(params, mu_format, signed=True),
        state_format.zeros_like_tree(params, nu_format, signed=False, real=True),
    )

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.nu, "scale_by_belief", of="state")
    _validate.check_matching_shapes(updates, state.mu, "scale_by_belief", of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)

    def leaf(g, m, s, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      g_ = g.astype(dtype)
      m_new = b1 * state_format.load(m, dtype) + (1 - b1) * g_
      quantized = state_format.is_quantized(mu_format, nu_format)
      if not quantized:  # the step from the moments as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
      # (β₂s + ε) + (1−β₂)(g − m)²: the reference's sum taken in another
      # order (an ulp apart), which XLA does not recompute from the donated s
      # after overwriting it (a copy of every s, 1.4x the step, optax's too).
      s_new = ((b2 * state_format.load(s, real) + eps)
               + (1 - b2) * _tree.abs_sq(g_ - m_new))
      if not quantized:
        s_stored, s_new = state_format.stored_and_used(s_new, s, nu_format, seed, stream=1)
      m_hat = (_tree.nesterov_debiased(b1, m_new, g_, count, dtype) if nesterov
               else m_new / _tree.bias_correction(b1, count, dtype))
      s_hat = s_new / _tree.bias_correction(b2, count, dtype)
      u = m_hat / (jnp.sqrt(s_hat) + eps)
      if quantized:
        u, m_new, s_new = state_format.reset_non_finite(g_, u, m_new, s_new)
        m_stored = state_format.store(m_new, m, mu_format, seed, stream=0)
        s_stored = state_format.store(s_new, s, nu_format, seed, stream=1)
      return u.astype(g.dtype), m_stored, s_stored

    u, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu, seeds, once_per_shape=True)
    return u, ScaleByBeliefState(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByRmsState(NamedTuple):
  """State of ``scale_by_rms``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    nu: EMA of the squared gradients.
    mu: EMA of the gradients when ``centered=True``, else ``None``.
  """

  count: jax.Array
  nu: optax.Updates
  mu: Optional[optax.Updates]


@_validate.checks_arguments
def scale_by_rms(
    decay: float = 0.99,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    centered: bool = False,
    initial_scale: float = 0.0,
    debias: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Divides updates by the root mean square of recent gradients (RMSProp).

  .. math::
    v_t = ρ v_{t-1} + (1-ρ) |g_t|^2,\quad
    u_t = \frac{g_t}{\sqrt{v_t - |\bar g_t|^2 + ε_{root}} + ε}

  where :math:`\bar g_t = ρ \bar g_{t-1} + (1-ρ) g_t` when ``centered``
  (Graves 2013) and 0 otherwise. This is ``torch.optim.RMSprop``'s rule (ε
  outside the root, :math:`v_0 = 0`); Hinton's lecture form
  :math:`\sqrt{v_t + ε}` is ``eps=0, eps_root=ε``. The centered variance is
  clipped at 0 against round-off (where torch would return NaN). Unlike
  ``optax.scale_by_rms`` (decay 0.9, ε inside the root), the decay defaults
  to torch's 0.99 and ε is outside: ``optax.scale_by_rms(ρ, ε)`` is
  ``scale_by_rms(ρ, 0.0, eps_root=ε)``. ``debias=True`` divides
  :math:`v_t` and :math:`\bar g_t` by :math:`1-ρ^t` before they are used
  (optax's ``bias_correction``; it assumes ``initial_scale`` 0). Centered
  and debiased, the first variance is :math:`\hat v_1 - |\hat{\bar g}_1|^2 = 0`
  up to round-off, so the first step is about :math:`g_1/(\sqrt{ε_{root}} + ε)`
  and, with ``eps_root`` 0, sensitive to that round-off (as optax's).

  Args:
    decay: ρ, the decay of the moving averages (torch's ``alpha``), in [0, 1).
    eps: added outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    centered: subtract the squared mean gradient (a variance estimate).
    initial_scale: starting value of :math:`v`, >= 0.
    debias: divide the moving averages by :math:`1-ρ^t` (optax's
      ``bias_correction``).
    mu_dtype: storage of the mean gradient (``centered``), as in
      ``scale_by_adam``.
    nu_dtype: storage of :math:`v`, as in ``scale_by_adam``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByRmsState``.

  Reference: Tieleman & Hinton, Lecture 6.5 of "Neural Networks for Machine
  Learning", 2012; Graves, "Generating Sequences With RNNs", 2013.
  """
  _validate.check_decay("decay", decay)
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)
  _validate.check_non_negative("initial_scale", initial_scale)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)

  def init_fn(params):
    nu = state_format.full_like_tree(
        params, initial_scale, nu_format, signed=False, real=True)
    mu = None
    if centered:
      mu = state_format.zeros_like_tree(params, mu_format, signed=True)
    return ScaleByRmsState(jnp.zeros([], jnp.int32), nu, mu)

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.nu, "scale_by_rms", of="state")
    _validate.check_matching_shapes(updates, state.mu, "scale_by_rms", of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)

    def leaf(g, v, m, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      g_ = g.astype(dtype)
      v_new = decay * state_format.load(v, real) + (1 - decay) * _tree.abs_sq(g_)
      m_new = (decay * state_format.load(m, dtype) + (1 - decay) * g_) if centered else None
      quantized = state_format.is_quantized(mu_format, nu_format)
      m_stored = None
      if not quantized:  # the step from the moments as stored (stored_and_used)
        v_stored, v_new = state_format.stored_and_used(v_new, v, nu_format, seed, stream=0)
        if centered:
          m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed, stream=1)
      v_used, m_used = v_new, m_new
      if debias:
        correction = _tree.bias_correction(decay, count, real)
        v_used = v_new / correction
        m_used = m_new / correction if centered else None
      variance = jnp.maximum(v_used - _tree.abs_sq(m_used), 0) if centered else v_used
      u = g_ / (_tree.root(variance + eps_root) + eps)
      if quantized:
        u, v_new, m_new = state_format.reset_non_finite(g_, u, v_new, m_new)
        v_stored = state_format.store(v_new, v, nu_format, seed, stream=0)
        if centered:
          m_stored = state_format.store(m_new, m, mu_format, seed, stream=1)
      return u.astype(g.dtype), v_stored, m_stored

    u, nu, mu = _tree.map_leaves(leaf, 3, updates, state.nu, state.mu, seeds, once_per_shape=True)
    return u, ScaleByRmsState(count, nu, mu if centered else None)

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByAdagradState(NamedTuple):
  """State of ``scale_by_adagrad``: the step count and the running sum of |g|²."""

  count: jax.Array
  sum_of_squares: optax.Updates


def scale_by_adagrad(
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Divides updates by the root of the summed squared gradients (AdaGrad).

  .. math::
    s_t = s_{t-1} + |g_t|^2,\quad u_t = \frac{g_t}{\sqrt{s_t} + ε}

  with :math:`s_0` = ``initial_accumulator_value``: ``torch.optim.Adagrad``'s
  rule. Duchi et al. 2011 write :math:`g_t/\sqrt{s_t + ε}`; the two differ
  only in where the tiny ε sits, and this follows the PyTorch reference.

  Args:
    initial_accumulator_value: starting value of the sum, >= 0.
    eps: added to the denominator, >= 0.
    nu_dtype: storage of the sum, as in ``scale_by_adam``'s ``nu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdagradState``.

  Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
  Learning and Stochastic Optimization", JMLR 2011.
  """
  _validate.check_non_negative(
      "initial_accumulator_value", initial_accumulator_value
  )
  _validate.check_non_negative("eps", eps)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)

  def init_fn(params):
    return ScaleByAdagradState(jnp.zeros([], jnp.int32), state_format.full_like_tree(
        params, initial_accumulator_value, nu_format, signed=False, real=True))

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.sum_of_squares, "scale_by_adagrad", of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, nu_format)

    def leaf(g, s, seed):
      dtype = _tree.compute_dtype(g)
      g_ = g.astype(dtype)
      s_new = state_format.load(s, _tree.real_dtype(dtype)) + _tree.abs_sq(g_)
      quantized = state_format.is_quantized(nu_format)
      if not quantized:  # the step from the sum as stored (stored_and_used)
        s_stored, s_new = state_format.stored_and_used(s_new, s, nu_format, seed)
      u = g_ / (_tree.root(s_new) + eps)
      if quantized:
        u, s_new = state_format.reset_non_finite(g_, u, s_new)
        s_stored = state_format.store(s_new, s, nu_format, seed)
      return u.astype(g.dtype), s_stored

    u, s = _tree.map_leaves(leaf, 2, updates, state.sum_of_squares, seeds, once_per_shape=True)
    return u, ScaleByAdagradState(count, s)

  return optax.GradientTransformation(init_fn, update_fn)
