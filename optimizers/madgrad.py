"""MADGRAD: momentumized, adaptive, dual-averaged gradient descent."""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.transforms.weight_decay import with_coupled_decay


class MadgradState(NamedTuple):
  """State of ``madgrad``.

  Attributes:
    count: steps so far, k (the learning-rate schedule's step and the
      √(k+1) of the weights λ_k).
    s: the weighted sum of the gradients Σ λ_i g_i, per leaf.
    nu: the weighted sum of their squares Σ λ_i g_i², per leaf.
    params0: the initial parameters x₀, per leaf; ``None`` at a momentum of
      literal 0, where x₀ is recovered from x, s and ν as the official code
      does.

  The sums and x₀ are kept in the compute dtype (float32 for bf16 and
  float16 parameters, the parameter's dtype otherwise), as the official
  code keeps them in float32.
  """

  count: jax.Array
  s: optax.Updates
  nu: optax.Updates
  params0: Optional[optax.Params]


@_validate.checks_arguments
def madgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    *,
    momentum: float = 0.9,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    decouple_decay: bool = False,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
) -> optax.GradientTransformation:
  r"""MADGRAD: dual averaging with a cube-root AdaGrad scale and primal averaging.

  With η_k the learning rate at step k (from 0), :math:`γ_k = η_k + ε`
  (0 where η_k = 0: the official code's "for stability" shift of the rate),
  :math:`λ_k = γ_k\sqrt{k+1}`, :math:`x_0` the initial parameters and
  c = 1 − ``momentum``:

  .. math::
    s_{k+1} = s_k + λ_k g_k,\quad
    ν_{k+1} = ν_k + λ_k g_k^2,\quad
    z_{k+1} = x_0 - \frac{s_{k+1}}{ν_{k+1}^{1/3} + ε},\\
    x_{k+1} = (1 - c)\,x_k + c\,z_{k+1}\ \big[-\ γ_k λ_{wd}\, x_k\big]

  The bracket is the decoupled weight decay (``decouple_decay=True``, the
  official "experimental" AdamW-style decay, taken at γ_k); by default the
  decay is coupled, :math:`g_k \leftarrow g_k + λ_{wd} x_k` before
  everything (an L2 penalty, the official default). The update returned is
  :math:`x_{k+1} - x_k`, computed as :math:`c\,(z_{k+1} - x_k)`.

  At a momentum of 0 the official code keeps no x₀ and recovers it each
  step as :math:`x_k + s_k/(ν_k^{1/3} + ε)`, so there x_{k+1} = z_{k+1} and
  a decoupled decay also shrinks the recovered x₀: followed here (no x₀ is
  stored). With ε = 0 a coordinate whose ν is 0 takes s/ν^{1/3} as 0 (the
  official rule; the official momentum-0 recovery of x₀ lacks it and
  returns NaN from the first step at ε = 0, which is not followed). A
  coordinate with a zero gradient keeps s and ν, so at momentum 0 it does
  not move (what the official sparse-gradient path gives) and with
  momentum it goes on approaching z. A NaN or infinite gradient makes that
  coordinate's sums, and so all its later updates, NaN (sums never
  forget); ``optax.apply_if_finite`` skips such steps.

  The official ``MADGRAD`` (madgrad 1.3) in float64: the same steps to
  round-off (tests/optimizers/test_madgrad.py). ``optax.contrib.madgrad``
  shifts the rate by ε also where η = 0 (a warm-up from 0 accumulates
  there), forms √(k+1) in float32, keeps its sums in the parameter's dtype
  (bf16 sums for bf16 parameters), has no decoupled decay or mask, and at
  ε = 0 gives NaN where ν = 0. The sums are not offered in narrower
  storage (no ``mu_dtype``/``nu_dtype``): they grow as k^{3/2} while each
  step adds k^{1/2}, so a bf16 sum stops taking increments after a few
  hundred steps.

  Args:
    learning_rate: η, a non-negative number or a schedule of the step count
      (the official default 1e-2).
    momentum: the weight 1 − c of x_k in the average with z, in [0, 1);
      0 steps to z (x = z).
    eps: ε, added to :math:`ν^{1/3}` and to a non-zero η, >= 0.
    weight_decay: λ_wd, >= 0, or a schedule; coupled (L2) unless
      ``decouple_decay``.
    decouple_decay: decay x by :math:`γ_k λ_{wd} x_k` after the step instead
      of adding :math:`λ_{wd} x_k` to the gradient (the official flag).
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: with ``decouple_decay``, decay only where the
      MADGRAD step moves the weight towards 0 or not at all
      (``gt.decoupled_weight_decay``; Chen et al. 2025); refused without it.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``, with state
    ``MadgradState``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx.optimizers.madgrad import madgrad
    >>> tx = madgrad(0.1)
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(100):  # minimise |p|²/2: the gradient is p
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.abs(params).max() < 0.1)
    True

  Reference: Defazio & Jelassi, "Adaptivity without Compromise: A
  Momentumized, Adaptive, Dual Averaged Gradient Method for Stochastic
  Optimization", JMLR 2022; the official ``madgrad`` package
  (facebookresearch/madgrad).
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_decay("momentum", momentum)
  _validate.check_non_negative("eps", eps)
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)
  if cautious_weight_decay and not decouple_decay:
    raise ValueError(
        "cautious_weight_decay needs decouple_decay=True: the coupled decay is"
        " part of the gradient, not a step of its own")
  keeps_x0 = not _validate.is_static_zero(momentum)
  traced_momentum = keeps_x0 and not _validate.is_static_nonzero(momentum)  # inject_hyperparams
  # At ε = 0 a coordinate of ν = 0 divides by inf (the official guard).
  may_divide_by_zero = not _validate.is_static_nonzero(eps)
  decays = not _validate.is_static_zero(weight_decay)

  def init_fn(params):
    _validate.check_real_leaves(params, "madgrad")
    zeros = lambda p: jnp.zeros_like(p, _tree.compute_dtype(p))
    return MadgradState(
        count=jnp.zeros([], jnp.int32),
        s=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params),
        params0=_tree.copy_in_compute_dtype(params) if keeps_x0 else None)

  def pulled(s, nu):
    """s/(ν^{1/3} + ε), the distance of z from x₀."""
    rms = jnp.cbrt(nu) + jnp.asarray(eps, nu.dtype)
    if may_divide_by_zero:
      rms = jnp.where(rms == 0, jnp.inf, rms)
    return s / rms

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("madgrad needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "madgrad")
    real = _tree.scalar_dtype(updates)
    rate = jnp.asarray(_tree.resolve_schedule(learning_rate, state.count), real)
    rate = jnp.where(rate != 0, rate + jnp.asarray(eps, real), 0)
    weight = rate * jnp.sqrt(state.count.astype(real) + 1)
    decay_now = _tree.resolve_schedule(weight_decay, state.count)
    grads = jax.tree.map(lambda g: g.astype(_tree.compute_dtype(g)), updates)
    if not decouple_decay:
      grads = with_coupled_decay(grads, params, weight_decay, mask, state.count)
    momentum_ = _tree.hyperparameter(momentum, real)
    c = 1 - momentum_  # in double for a Python momentum

    def leaf(g, p, s, nu, x0):
      dtype = g.dtype
      weight_ = weight.astype(dtype)
      s_new = s + weight_ * g
      nu_new = nu + weight_ * (g * g)
      if not keeps_x0:  # x₀ − x recovered from the sums, as the official code does
        offset = pulled(s, nu)
      else:
        offset = x0 - p.astype(dtype)
        if traced_momentum:
          offset = jnp.where(momentum_ == 0, pulled(s, nu), offset)
      step = jnp.asarray(c, dtype) * (offset - pulled(s_new, nu_new))
      return s_new, nu_new, step

    s, nu, steps = _tree.map_leaves(leaf, 3, grads, params, state.s, state.nu, state.params0)
    if decays and decouple_decay:
      # γ_k λ_wd x_k, subtracted: the decay transform adds it to the step's
      # negation (the direction the learning rate would negate).
      decoupled = gt.decoupled_weight_decay(
          rate * jnp.asarray(decay_now, real), mask,
          cautious_weight_decay=cautious_weight_decay)
      directions, _ = decoupled.update(
          jax.tree.map(jnp.negative, steps), decoupled.init(params), params)
      steps = jax.tree.map(jnp.negative, directions)
    new = jax.tree.map(lambda g, u: u.astype(g.dtype), updates, steps)
    return new, MadgradState(
        count=optax.safe_increment(state.count), s=s, nu=nu, params0=state.params0)

  return optax.GradientTransformation(init_fn, update_fn)
