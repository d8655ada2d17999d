"""D-Adaptation: Adam(W) whose step size D is estimated as training runs."""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class DAdaptAdamState(NamedTuple):
  """State of ``dadapt_adamw``.

  Attributes:
    count: calls so far (the learning-rate and weight-decay schedules' step).
    k: steps taken (the bias correction's; a skipped step, of Σ|s| = 0, does
      not count, as in the official code).
    d: the step-size estimate D.
    numerator: the running numerator r, the β₃-weighted sum of
      λ·⟨g, s/(√v + ε)⟩ (λ = d·η·c, the step's dlr).
    mu, nu: Adam's moments: m of the λ-scaled gradients, v of the squared
      gradients (not scaled), per leaf.
    s: the running β₃-weighted sum of the λ-scaled gradients, per leaf.
  """

  count: jax.Array
  k: jax.Array
  d: jax.Array
  numerator: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  s: optax.Updates


@_validate.checks_arguments
def dadapt_adamw(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    growth_rate: float = math.inf,
    use_bias_correction: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""D-Adaptation Adam(W): Adam with a step size D learned from the gradients.

  With η_t the learning rate (a multiplier of D, 1 by default), c_t Adam's
  bias correction :math:`\sqrt{1-β_2^{k}}/(1-β_1^{k})` (or 1), the step
  size :math:`λ_t = d_t η_t c_t` and :math:`β_3 = \sqrt{β_2}`:

  .. math::
    r_t = β_3 r_{t-1} + (1-β_3) λ_t
      \big\langle g_t, \tfrac{s_{t-1}}{\sqrt{v_{t-1}} + ε}\big\rangle,\quad
    s_t = β_3 s_{t-1} + (1-β_3) λ_t g_t,\\
    m_t = β_1 m_{t-1} + (1-β_1) λ_t g_t,\quad
    v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\\
    \hat d = \frac{r_t}{(1-β_3)\lVert s_t\rVert_1},\quad
    d_{t+1} = \max\!\big(d_t,\ \min(\hat d, d_t\cdot\text{growth})\big),\\
    p \leftarrow p - \frac{m_t}{\sqrt{v_t} + ε} - λ_t λ_{wd}\, p

  (:math:`d_0` = ``estim_lr0``). The new :math:`d_{t+1}` first enters the
  next step's λ: m holds the λ of each step's gradient. The sums run over
  every leaf: one D for the whole tree, as the official optimizer keeps one
  for all its parameter groups. A step where :math:`\lVert s_t\rVert_1 = 0`
  (a learning rate of 0 or below, every gradient so far zero, or with β₂ = 0
  a zero gradient) is skipped as in the official code, and as ``go.prodigy``
  skips (the same rule): no update, no decay, and neither D, r nor k moves
  (a warm-up from 0 does not advance the bias correction); at a rate of 0
  or below nothing accumulates, at a positive rate the moments take their
  decay. The weight decay is decoupled (AdamW, as optax's
  ``dadapt_adamw``), scaled by :math:`λ_t`; the official default
  ``decouple=False`` (L2, :math:`g \leftarrow g + λ_{wd} p` before
  everything, the D estimate included) is
  ``optax.chain(gt.coupled_weight_decay(λ_wd), go.dadapt_adamw(...))``.

  The official ``DAdaptAdam`` (dadaptation 3.2) in float64: the same steps
  and D to round-off (tests/optimizers/test_dadapt.py). Optax's
  ``optax.contrib.dadapt_adamw`` always bias-corrects (off here and in the
  official code by default: ``use_bias_correction=True`` is its rule), has no
  ``growth_rate``, counts every call in its bias correction and does not
  skip: a first step of a zero gradient or a zero rate is 0/0 (D is NaN),
  and at a rate of 0 mid-run it still accumulates v and steps
  :math:`-m/(\sqrt v + ε)`. The official ``layer_scale`` (per-group scale of
  the step) and its FSDP reduction are not offered. Float16 parameters need
  float32 moments (``mu_dtype=nu_dtype=jnp.float32``): m holds λ_t·g with D
  from 1e-6, below float16's range. A NaN gradient makes D, and from the
  next step every leaf's step, NaN (the failure shows); the official code's
  Python ``max`` keeps D as it was while its sums stay NaN, so its D stops
  adapting for good, silently (``optax.apply_if_finite`` skips such steps in
  either).

  Args:
    learning_rate: η, a multiplier of the learned step size (the official
      default 1), >= 0, or a schedule (its warm-up and decay apply on top of
      D; a rate of 0 skips the step).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1); √β₂ decays the D estimate's
      sums.
    eps: ε, added to √v, > 0.
    estim_lr0: :math:`d_0`, the initial (under-)estimate of D, > 0.
    growth_rate: the largest factor D may grow by in a step (> 1; ``inf``:
      unlimited, 1.02 a warm-up-like start).
    use_bias_correction: Adam's bias correction in λ_t (official default off).
    weight_decay: decoupled decay λ_wd, >= 0, or a schedule; scaled by λ_t.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the Adam step has the sign of
      the weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of m, as in ``gt.scale_by_adam``.
    nu_dtype: storage of v, as ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``, with state
    ``DAdaptAdamState``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.dadapt_adamw()
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(200):  # minimise |p|²/2: the gradient is p
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(state.d > 0.1), bool(jnp.abs(params).max() < 0.1)
    (True, True)

  Reference: Defazio & Mishchenko, "Learning-Rate-Free Learning by
  D-Adaptation", ICML 2023; the official ``dadaptation`` package
  (``DAdaptAdam``).
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_in_range("eps", eps, 0.0, math.inf, low_inclusive=False)
  _validate.check_in_range("estim_lr0", estim_lr0, 0.0, math.inf, low_inclusive=False)
  _validate.check_in_range("growth_rate", growth_rate, 1.0, math.inf, low_inclusive=False,
                           high_inclusive=True)
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)

  def init_fn(params):
    _validate.check_real_leaves(params, "dadapt_adamw")
    dtype = _tree.scalar_dtype(params)
    return DAdaptAdamState(
        count=jnp.zeros([], jnp.int32), k=jnp.zeros([], jnp.int32),
        d=jnp.asarray(estim_lr0, dtype), numerator=jnp.zeros([], dtype),
        mu=state_format.zeros_like_tree(params, mu_format, signed=True),
        nu=state_format.zeros_like_tree(params, nu_format, signed=False, real=True),
        s=jax.tree.map(lambda p: jnp.zeros_like(p, _tree.compute_dtype(p)), params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "dadapt_adamw needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "dadapt_adamw")
    real = state.d.dtype
    # Static decays as Python numbers (1 − β and √β in double, as the official
    # code), traced ones (optax.inject_hyperparams) as arrays of the state's dtype.
    b1_, b2_ = _tree.hyperparameter(b1, real), _tree.hyperparameter(b2, real)
    b3_ = _tree.hyperparameter_sqrt(b2_)
    d = state.d
    rate = jnp.asarray(_tree.resolve_schedule(learning_rate, state.count), real)
    k1 = (state.k + 1).astype(real)
    correction = jnp.sqrt(1 - b2_ ** k1) / (1 - b1_ ** k1) if use_bias_correction else 1.0
    dlr = d * rate * correction
    active = rate > 0  # the official code accumulates nothing at a rate <= 0
    seeds = state_format.maybe_rounding_seeds(updates, state.count, mu_format, nu_format)

    def moments(g, m, v, s, seed):
      dtype = _tree.compute_dtype(g)
      # At a rate of 0 nothing accumulates: the gradient enters as 0 and every
      # decay as 1, element-wise, so the donated state is updated in place.
      g_ = jnp.where(active, g.astype(dtype), 0)
      one = lambda b: jnp.where(active, b, 1)
      v_old = state_format.load(v, dtype)
      # The numerator's term uses s and v as the previous step left them.
      dot = jnp.sum(g_ * (s / (jnp.sqrt(v_old) + eps))).astype(real)
      m_new = one(b1_) * state_format.load(m, dtype) + (1 - b1_) * dlr * g_
      v_new = one(b2_) * v_old + (1 - b2_) * g_ * g_
      if state_format.is_quantized(mu_format, nu_format):
        m_new, v_new = state_format.reset_non_finite(g_, m_new, v_new)
      m_stored, m_used = state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
      v_stored, v_used = state_format.stored_and_used(v_new, v, nu_format, seed, stream=1)
      s_new = one(b3_) * s + (1 - b3_) * dlr * g_
      return m_stored, v_stored, s_new, m_used, v_used, dot, jnp.abs(s_new).sum().astype(real)

    mu, nu, s, m_used, v_used, dots, sizes = _tree.map_leaves(
        moments, 7, updates, state.mu, state.nu, state.s, seeds)
    delta = sum(jax.tree.leaves(dots), jnp.zeros([], real))
    denominator = jnp.where(active, sum(jax.tree.leaves(sizes), jnp.zeros([], real)), 0)
    numerator = b3_ * state.numerator + (1 - b3_) * dlr * delta

    def estimate():
      d_hat = numerator / ((1 - b3_) * denominator)
      k = optax.safe_increment(state.k)
      return jnp.maximum(d, jnp.minimum(d_hat, d * growth_rate)), numerator, k, jnp.ones([], real)

    def skipped():  # the official code returns before any of it
      return d, state.numerator, state.k, jnp.zeros([], real)

    # The scalars come from a cond, not selects: a select on the skip fused
    # into every leaf's update makes XLA:CPU compile quadratically in the
    # leaves (see go.prodigy); the cond's are computed once.
    d_new, numerator, k, moves = jax.lax.cond(denominator == 0, skipped, estimate)

    directions = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), m_used, v_used)
    if not _validate.is_static_zero(weight_decay):  # m holds λ_t already: decay by λ_t·λ_wd
      decay_t = jnp.asarray(_tree.resolve_schedule(weight_decay, state.count), real)
      decay = gt.decoupled_weight_decay(
          decay_t * dlr, mask, cautious_weight_decay=cautious_weight_decay)
      directions, _ = decay.update(directions, decay.init(params), params)
    # A skipped step moves nothing; its moments keep the decay the official
    # code applies before it returns.
    new = jax.tree.map(lambda g, u: (-moves * u).astype(g.dtype), updates, directions)
    return new, DAdaptAdamState(
        count=optax.safe_increment(state.count), k=k, d=d_new, numerator=numerator,
        mu=mu, nu=nu, s=s)

  return optax.GradientTransformation(init_fn, update_fn)
