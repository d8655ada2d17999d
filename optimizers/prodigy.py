"""Prodigy: Adam whose step size D is estimated as training runs."""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ProdigyState(NamedTuple):
  """State of ``prodigy``.

  Attributes:
    count: calls so far (the learning-rate schedule's step).
    k: steps taken (the bias correction's; a step skipped while Σ|s| = 0
      does not count, as in the official code).
    d: the step-size estimate D; ``d_max`` the largest estimate so far.
    numerator: the running numerator Σ β₃-weighted (d/d₀)·dlr·⟨g, p₀ − p⟩.
    mu, nu: Adam's moments of the D-scaled gradients, per leaf.
    s: the running β₃-weighted sum of the scaled gradients, per leaf.
    params0: the initial parameters p₀, per leaf.
  """

  count: jax.Array
  k: jax.Array
  d: jax.Array
  d_max: jax.Array
  numerator: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  s: optax.Updates
  params0: optax.Params


@_validate.checks_arguments
def prodigy(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Optional[float] = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    growth_rate: float = math.inf,
    use_bias_correction: bool = False,
    safeguard_warmup: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Prodigy: Adam with a step size D learned from the distance travelled.

  With η_t the learning rate (a multiplier of D, 1 by default), c_t Adam's
  bias correction :math:`\sqrt{1-β_2^{k}}/(1-β_1^{k})` (or 1), the step
  size :math:`λ_t = d_t η_t c_t` and :math:`p_0` the initial parameters:

  .. math::
    r_t = β_3 r_{t-1} + \tfrac{d_t}{d_0} λ_t \langle g_t, p_0 - p_t\rangle,\quad
    s_t = β_3 s_{t-1} + \tfrac{d_t}{d_0} λ_t g_t,\\
    m_t = β_1 m_{t-1} + (1-β_1) d_t g_t,\quad
    v_t = β_2 v_{t-1} + (1-β_2) d_t^2 g_t^2,\\
    \hat d = \text{coef}\cdot r_t / \lVert s_t\rVert_1,\quad
    d_{t+1} = \min\!\big(\max_{i \le t}(d_0, \hat d_i),\ d_t\cdot\text{growth}\big),\\
    p \leftarrow p - λ_t\left(\frac{m_t}{\sqrt{v_t} + d_{t+1} ε} + λ_{wd} p\right)

  (:math:`d_0` = ``estim_lr0``, coef = ``estim_lr_coef``; the official code's
  update of D, whose first growth from :math:`d_0` is unlimited). The sums
  run over every leaf: one D for the whole tree, as the official optimizer
  keeps one per parameter group. ``safeguard_warmup`` puts :math:`d_t` in
  place of :math:`λ_t` in :math:`s_t`. A step where :math:`\lVert
  s_t\rVert_1 = 0` (a learning rate of 0 or below, every gradient so far
  zero, or with β₃ = 0 a zero gradient) is skipped: no update, and neither D,
  the numerator nor k moves, as in the official code (so a warm-up from 0
  does not advance the bias correction); at a positive rate its moments take
  their decay, as there. Float16 parameters need float32 moments
  (``mu_dtype=nu_dtype=jnp.float32``): m and v scale with D and D² (D starts
  at 1e-6), which underflow float16 (the official code's float16 state goes
  NaN). The weight decay is decoupled (the official default
  ``decouple=True``), scaled by :math:`λ_t`; the official ``decouple=False``
  is ``optax.chain(gt.coupled_weight_decay(λ_wd), go.prodigy(...))``.

  The official ``Prodigy`` (prodigyopt 1.1.2) in float64: the same steps to
  round-off (tests/optimizers/test_prodigy.py). ``optax.contrib.prodigy``
  always bias-corrects (here and in the official code it is off by default:
  ``use_bias_correction=True`` is optax's rule), has no ``growth_rate`` and
  does not skip a step of Σ|s| = 0 (its first step of a zero gradient is
  0/0, NaN). The official ``slice_p`` (statistics of every p-th element) is
  not offered.

  Args:
    learning_rate: η, a multiplier of the learned step size (the official
      default 1; a schedule's warm-up and decay apply on top of D).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    b3: decay of the D estimate's sums, in [0, 1); ``None`` is √β₂.
    eps: ε, added to √v as :math:`d_{t+1} ε`, > 0.
    estim_lr0: :math:`d_0`, the initial (under-)estimate of D, > 0.
    estim_lr_coef: the coefficient of the estimate (the official ``d_coef``;
      0.5 and 2 are its suggested alternatives), > 0.
    growth_rate: the largest factor D may grow by in a step (> 1; ``inf``:
      unlimited, 1.02 a warm-up-like start).
    use_bias_correction: Adam's bias correction in λ_t (official default off).
    safeguard_warmup: take :math:`d_t` instead of λ_t into s (the official
      advice with a learning-rate warm-up).
    weight_decay: decoupled decay, >= 0, or a schedule; scaled by λ_t.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the Adam step has the sign of
      the weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of m, as in ``gt.scale_by_adam``.
    nu_dtype: storage of v, as ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``, with state
    ``ProdigyState``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.prodigy()
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(200):  # minimise |p|²/2: the gradient is p
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(state.d > 0.1), bool(jnp.abs(params).max() < 0.1)
    (True, True)

  Reference: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
  Parameter-Free Learner", ICML 2024; the official ``prodigyopt`` package.
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  if b3 is not None:
    _validate.check_decay("b3", b3)
  _validate.check_in_range("eps", eps, 0.0, math.inf, low_inclusive=False)
  _validate.check_in_range("estim_lr0", estim_lr0, 0.0, math.inf, low_inclusive=False)
  _validate.check_in_range("estim_lr_coef", estim_lr_coef, 0.0, math.inf, low_inclusive=False)
  _validate.check_in_range("growth_rate", growth_rate, 1.0, math.inf, low_inclusive=False,
                           high_inclusive=True)
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)
  # With β₁ = 0 the official code keeps no m and steps d·g (its new d).
  keeps_mu = not _validate.is_static_zero(b1)
  traced_b1 = keeps_mu and not _validate.is_static_nonzero(b1)  # inject_hyperparams

  def init_fn(params):
    _validate.check_real_leaves(params, "prodigy")
    dtype = _tree.scalar_dtype(params)
    scalar = lambda value: jnp.asarray(value, dtype)
    return ProdigyState(
        count=jnp.zeros([], jnp.int32), k=jnp.zeros([], jnp.int32), d=scalar(estim_lr0),
        d_max=scalar(estim_lr0), numerator=scalar(0.0),
        mu=state_format.zeros_like_tree(params, mu_format, signed=True),
        nu=state_format.zeros_like_tree(params, nu_format, signed=False, real=True),
        s=jax.tree.map(lambda p: jnp.zeros_like(p, _tree.compute_dtype(p)), params),
        params0=_tree.copy_in_compute_dtype(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("prodigy needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "prodigy")
    real = state.d.dtype
    # Static decays as Python numbers (1 − β and √β in double, as the official
    # code), traced ones (optax.inject_hyperparams) as arrays of the state's dtype.
    b1_, b2_ = _tree.hyperparameter(b1, real), _tree.hyperparameter(b2, real)
    b3_ = _tree.hyperparameter_sqrt(b2_) if b3 is None else _tree.hyperparameter(b3, real)
    d, d0 = state.d, jnp.asarray(estim_lr0, real)
    rate = jnp.asarray(_tree.resolve_schedule(learning_rate, state.count), real)
    k1 = (state.k + 1).astype(real)
    correction = jnp.sqrt(1 - b2_ ** k1) / (1 - b1_ ** k1) if use_bias_correction else 1.0
    dlr = d * rate * correction
    active = rate > 0  # the official code accumulates nothing at a rate <= 0
    s_weight = (d / d0) * (d if safeguard_warmup else dlr)
    seeds = state_format.maybe_rounding_seeds(updates, state.count, mu_format, nu_format)

    def moments(g, p, m, v, s, p0, seed):
      dtype = _tree.compute_dtype(g)
      # At a rate of 0 nothing accumulates (the official code's guard): the
      # gradient enters as 0 and every decay as 1, element-wise, so the
      # donated state is updated in place.
      g_ = jnp.where(active, g.astype(dtype), 0)
      one = lambda b: jnp.where(active, b, 1)
      m_new = one(b1_) * state_format.load(m, dtype) + (1 - b1_) * d * g_
      v_new = one(b2_) * state_format.load(v, dtype) + (1 - b2_) * d * d * g_ * g_
      if state_format.is_quantized(mu_format, nu_format):
        m_new, v_new = state_format.reset_non_finite(g_, m_new, v_new)
      m_stored, m_used = state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
      v_stored, v_used = state_format.stored_and_used(v_new, v, nu_format, seed, stream=1)
      s_new = one(b3_) * s + s_weight * g_
      dot = jnp.sum(g_ * (p0 - p.astype(dtype))).astype(real)
      return m_stored, v_stored, s_new, m_used, v_used, dot, jnp.abs(s_new).sum().astype(real)

    mu, nu, s, m_used, v_used, dots, sizes = _tree.map_leaves(
        moments, 7, updates, params, state.mu, state.nu, state.s, state.params0, seeds)
    delta = sum(jax.tree.leaves(dots), jnp.zeros([], real))
    denominator = jnp.where(active, sum(jax.tree.leaves(sizes), jnp.zeros([], real)), 0)
    numerator = state.numerator * b3_ + (d / d0) * dlr * delta
    decay_t = jnp.asarray(_tree.resolve_schedule(weight_decay, state.count), real)

    def estimate():
      d_hat = estim_lr_coef * numerator / denominator
      d_first = jnp.where(d == d0, jnp.maximum(d, d_hat), d)
      d_max = jnp.maximum(state.d_max, d_hat)
      k = optax.safe_increment(state.k)
      one = jnp.ones([], real)
      return jnp.minimum(d_max, d_first * growth_rate), d_max, numerator, k, decay_t, one

    def skipped():  # the official code returns before any of it
      zero = jnp.zeros([], real)
      return d, state.d_max, state.numerator, state.k, zero, zero

    # The scalars come from a cond, not selects: XLA:CPU fused a select on the
    # skip into every leaf's update and compiled quadratically in the leaves
    # (24 s against 4 s at 192 matrices); the cond's are computed once.
    d_new, d_max, numerator, k, decay_now, moves = jax.lax.cond(
        denominator == 0, skipped, estimate)

    def direction(g, m, v):
      dtype = _tree.compute_dtype(g)
      scaled = d_new * g.astype(dtype)  # with β₁ = 0 the official step is d_{t+1}·g
      if traced_b1:
        numerator_ = jnp.where(b1_ > 0, m, scaled)
      else:
        numerator_ = m if keeps_mu else scaled
      return numerator_ / (jnp.sqrt(v) + d_new * eps)

    directions = jax.tree.map(direction, updates, m_used, v_used)
    if not _validate.is_static_zero(weight_decay):  # λ_t of this step (0 if skipped)
      decay = gt.decoupled_weight_decay(
          decay_now, mask, cautious_weight_decay=cautious_weight_decay)
      directions, _ = decay.update(directions, decay.init(params), params)
    # A skipped step moves nothing (its rate may be 0 or negative, or its sums
    # all 0 after zero gradients); its moments keep the decay the official
    # code applies before it returns.
    rate_now = -dlr * moves
    new = jax.tree.map(lambda g, u: (rate_now * u).astype(g.dtype), updates, directions)
    return new, ProdigyState(
        count=optax.safe_increment(state.count),
        k=k, d=d_new, d_max=d_max, numerator=numerator,
        mu=mu, nu=nu, s=s, params0=state.params0)

  return optax.GradientTransformation(init_fn, update_fn)
