"""COCOB-Backprop: a learning-rate-free optimizer that bets on each coordinate."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.transforms.weight_decay import with_coupled_decay


class CocobState(NamedTuple):
  """State of ``cocob``.

  Attributes:
    count: calls so far (the schedules' step).
    max_abs_grad: L, the largest |g'| seen per coordinate, at least ε.
    sum_abs_grads: G = Σ|g'|, per coordinate.
    sum_neg_grads: θ = −Σg', the sum of the negative gradients (the paper's
      sign), per coordinate.
    reward: the wealth won so far, Reward = max(Reward − (p − p₀)·g', 0),
      per coordinate.
    params0: the initial parameters p₀, per leaf.

  All are kept in the compute dtype (float32 for bf16 and float16
  parameters, the parameter's dtype otherwise).
  """

  count: jax.Array
  max_abs_grad: optax.Updates
  sum_abs_grads: optax.Updates
  sum_neg_grads: optax.Updates
  reward: optax.Updates
  params0: optax.Params


@_validate.checks_arguments
def cocob(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    alpha: float = 100.0,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""COCOB-Backprop: per coordinate, bet a fraction of the wealth won so far.

  With :math:`g'_t = g_t + λ_t p_t` (coupled decay), per coordinate and
  from :math:`L_0 = ε`, :math:`G_0 = θ_0 = \text{Reward}_0 = 0`:

  .. math::
    L_t = \max(L_{t-1}, |g'_t|),\quad G_t = G_{t-1} + |g'_t|,\quad
    θ_t = θ_{t-1} - g'_t,\\
    \text{Reward}_t = \max\big(\text{Reward}_{t-1} - (p_t - p_0)\,g'_t,\ 0\big),\\
    x_{t+1} = \frac{θ_t}{L_t \max(G_t + L_t,\ α L_t)}\,(L_t + \text{Reward}_t),\quad
    p_{t+1} = p_t + c_t\,(p_0 + x_{t+1} - p_t)

  with c_t the learning rate (a multiplier of the step, 1 by default: at 1,
  :math:`p_{t+1} = p_0 + x_{t+1}`, Algorithm 2; a schedule decaying to 0
  freezes the parameters where they are, where scaling the bet x instead
  would pull them back to p₀). θ sums the negative
  gradients, as the paper's g does; the reward is won on the bets the
  parameters actually placed, :math:`p_t - p_0`. The paper starts from
  :math:`L_0 = 0`; ε is the authors' TensorFlow code's (and
  ``optax.contrib.cocob``'s) :math:`L_0` = 1e-8, which changes nothing once
  a coordinate has seen a gradient larger than ε, and damps the bets of a
  coordinate whose gradients all stay below it (rounding noise), which the
  paper's scale-free rule would bet on as on any other. At ``eps=0`` this is
  Algorithm 2, with the 0/0 of a coordinate that has only seen zero
  gradients taken as 0 (it stays at p₀). Every quantity is per coordinate:
  a NaN or infinite gradient makes its coordinate's state NaN or infinite,
  and so all its later steps NaN (the sums never forget); the other
  coordinates go on.

  ``optax.contrib.cocob`` (float64, 50 steps): the same steps to round-off
  at c = 1, with its weight decay and ε. Its learning rate multiplies the
  gradient, to which the rule is invariant (but for ε): a constant one does
  nothing, and a schedule reweights the gradients instead of scaling the
  steps; at ``eps=0`` a zero first gradient makes its coordinate NaN (0/0)
  for good; it keeps p₀ and its sums in the parameters' dtype (bf16 for
  bf16 parameters) and p₀ as the very params array given to ``init``.

  Args:
    learning_rate: c, a multiplier of the step, >= 0, or a schedule (the
      paper has none: 1).
    alpha: α, > 0 (the paper's 100): the bet's denominator is at least
      α L, so the first step is −sign(g)/max(α, 2) per coordinate and the
      early bets stay small while G < (α − 1) L.
    eps: ε, the initial L, >= 0 (0: the paper's).
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).

  Returns:
    An ``optax.GradientTransformation`` that needs ``params`` (the actual
    initial parameters at ``init`` too), with state ``CocobState``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx.optimizers.cocob import cocob
    >>> tx = cocob()
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(100):  # minimise |p|²/2: the gradient is p
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.abs(params).max() < 1e-3)
    True

  Reference: Orabona & Tommasi, "Training Deep Networks without Learning
  Rates Through Coin Betting", NeurIPS 2017 (Algorithm 2, COCOB-Backprop);
  the authors' TensorFlow code (bremen79/cocob); ``optax.contrib.cocob``.
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_in_range("alpha", alpha, 0.0, math.inf, low_inclusive=False)
  _validate.check_non_negative("eps", eps)
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)
  scale_positive = _validate.is_static_nonzero(eps)  # L ≥ ε > 0: no guard needed

  def init_fn(params):
    _validate.check_real_leaves(params, "cocob")
    zeros = lambda p: jnp.zeros_like(p, _tree.compute_dtype(p))
    return CocobState(
        count=jnp.zeros([], jnp.int32),
        max_abs_grad=jax.tree.map(
            lambda p: jnp.full_like(p, eps, _tree.compute_dtype(p)), params),
        sum_abs_grads=jax.tree.map(zeros, params),
        sum_neg_grads=jax.tree.map(zeros, params),
        reward=jax.tree.map(zeros, params),
        params0=_tree.copy_in_compute_dtype(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("cocob needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "cocob")
    grads = jax.tree.map(lambda g: g.astype(_tree.compute_dtype(g)), updates)
    grads = with_coupled_decay(grads, params, weight_decay, mask, state.count)
    rate = _tree.resolve_schedule(learning_rate, state.count)

    def leaf(g, scale, abs_sum, neg_sum, reward, p, p0):
      dtype = scale.dtype
      g = g.astype(dtype)
      bet = p.astype(dtype) - p0  # p_t − p₀, what the coordinate staked
      scale = jnp.maximum(scale, jnp.abs(g))
      abs_sum = abs_sum + jnp.abs(g)
      neg_sum = neg_sum - g
      reward = jnp.maximum(reward - bet * g, 0)
      alpha_ = _tree.hyperparameter(alpha, dtype)
      if not scale_positive:  # L = 0 only after zero gradients, where θ = 0 too
        scale_ = jnp.where(scale == 0, 1, scale)  # (a NaN L stays NaN)
      else:
        scale_ = scale
      # θ/L · (L + R)/max(G + L, αL): never L², which flushes to 0 below
      # L ≈ 1e-19 in float32 (a scale-free rule, at eps=0, on tiny gradients).
      target = (neg_sum / scale_) * ((scale + reward) / jnp.maximum(
          abs_sum + scale, alpha_ * scale_))
      step = jnp.asarray(rate, dtype) * (target - bet)
      return step, scale, abs_sum, neg_sum, reward

    steps, scale, abs_sum, neg_sum, reward = _tree.map_leaves(
        leaf, 5, grads, state.max_abs_grad, state.sum_abs_grads, state.sum_neg_grads,
        state.reward, params, state.params0)
    new = jax.tree.map(lambda u, s: s.astype(u.dtype), updates, steps)
    return new, CocobState(
        count=optax.safe_increment(state.count), max_abs_grad=scale,
        sum_abs_grads=abs_sum, sum_neg_grads=neg_sum, reward=reward,
        params0=state.params0)

  return optax.GradientTransformation(init_fn, update_fn)
