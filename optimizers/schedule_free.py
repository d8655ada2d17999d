"""Schedule-Free optimization: interpolation and averaging in place of a schedule."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScheduleFreeState(NamedTuple):
  """State of ``schedule_free``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    b1: β of the latest step; ``schedule_free_eval_params`` reads it.
    lr_max: the largest learning rate so far, :math:`\\max_{i \\le t} η_i`.
    weight_sum: :math:`\\sum_{i \\le t} w_i`, the averaging weights so far.
    z: the base optimizer's iterates, one leaf per parameter (in
      ``state_dtype``; by default float32 for bf16/f16 parameters, the
      parameter's dtype otherwise).
    inner_state: the state of the base optimizer.

  The scalars are float32, or float64 where a parameter is.
  """

  count: jax.Array
  b1: jax.Array
  lr_max: jax.Array
  weight_sum: jax.Array
  z: optax.Params
  inner_state: optax.OptState


@_validate.checks_arguments
def schedule_free(
    base: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    r: float = 0.0,
    state_dtype: Optional[Any] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Schedule-Free: a base optimizer's steps, interpolated and averaged.

  With :math:`u_t` the base's update at the parameters :math:`y_t` (for SGD
  :math:`-η_t g_t`), :math:`y_1 = z_1 = x_1` the initial parameters and
  t = 1, 2, …:

  .. math::
    z_{t+1} = z_t + u_t,\quad
    x_{t+1} = (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1},\quad
    y_{t+1} = (1 - β)\, z_{t+1} + β\, x_{t+1},\\
    c_{t+1} = \frac{w_t}{\sum_{i \le t} w_i},\quad
    w_t = t^r \left(\max_{i \le t} η_i\right)^{p}

  (:math:`c_{t+1} = 0` while every :math:`w_i` is 0). The parameters are
  :math:`y`, where gradients are taken; :math:`x`, the weighted average of
  the :math:`z` iterates, is the point to evaluate:
  ``go.schedule_free_eval_params(state, params)`` gives it,
  :math:`x = (y - (1-β) z)/β`. Only :math:`z` is stored (as in the
  official ``AdamWScheduleFree`` and ``optax.contrib.schedule_free``); the
  step is the official closed form
  :math:`y_{t+1} - y_t = c_{t+1}(z_t - y_t) + (1 - β(1 - c_{t+1}))\, u_t`,
  which needs no division by β, taken as
  :math:`c_{t+1}(z_{t+1} - y_t) + (1 - β(1 - c_{t+1}) - c_{t+1})\, u_t` (equal
  to round-off), so that a donated step updates :math:`z` in place. There is
  no train/eval switch as in the torch classes: the parameters stay
  :math:`y`, and an evaluation copy takes the eval parameters.
  ``schedule_free`` forms :math:`y` from :math:`z`, so it must be the last
  transformation: a step chained after it that rescales the updates (clipping)
  belongs inside ``base``.

  ``base`` takes the place of the official code's SGD or Adam step, so it
  applies the learning rate and any weight decay (computed at :math:`y`,
  the parameters it is given) and keeps no momentum: β replaces it (e.g.
  ``go.adamw(η, b1=0.0)``, ``go.sgd(η)``). ``learning_rate`` is read only
  for the weights, at the same step count as a schedule inside ``base``
  (both start at 0): pass the same schedule to both.
  ``go.schedule_free_sgd`` and ``go.schedule_free_adamw`` do it for you.

  Args:
    base: the optimizer whose steps move :math:`z`.
    learning_rate: η, the base's learning rate, a non-negative number or a
      schedule (the official code weights by the warmed-up rate).
    b1: β, the interpolation between :math:`z` and :math:`x`, in (0, 1]
      (the official ``momentum`` / ``betas[0]``); 1 evaluates gradients at
      the average itself (primal averaging), 0 would leave :math:`x` unknown
      to ``schedule_free_eval_params``.
    weight_lr_power: p, the power of the largest learning rate so far in
      the averaging weights, >= 0 (0: weights that ignore the warm-up).
    r: the power of t in the averaging weights, >= 0 (0: uniform weights
      after the warm-up; the official ``r``).
    state_dtype: storage of :math:`z`: ``None`` (float32 for bf16/f16
      parameters, the parameter's dtype otherwise), a floating or complex
      dtype (``optax.contrib.schedule_free``'s argument; ``jnp.bfloat16``
      halves z's memory of float32 parameters, but rounds to nearest, so a
      step under half an ulp of z is lost), or ``gt.StochasticBfloat16()``
      (bf16, stochastically rounded: z is right in expectation). The step
      reads :math:`z_t` and :math:`z_{t+1}` as stored (u is what z moved),
      so :math:`x` (``schedule_free_eval_params``) stays the weighted
      average of the stored iterates and a z step lost to rounding is not
      applied to y or x; arithmetic is in at least float32. :math:`z_1` is :math:`y_1`
      rounded: before the first step x reads slightly off :math:`y_1`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    ``ScheduleFreeState``; its updates have the base updates' dtypes.
    Keyword arguments of ``update`` go to the base.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.schedule_free(go.sgd(1.0), learning_rate=1.0, b1=0.5)
    >>> params = jnp.zeros(1)
    >>> state = tx.init(params)
    >>> for _ in range(2):  # z: -1, -2; x: -1, -1.5; y = (z + x)/2
    ...   updates, state = tx.update(jnp.ones(1), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params, go.schedule_free_eval_params(state, params)
    (Array([-1.75], dtype=float32), Array([-1.5], dtype=float32))

  :math:`z` of bf16/f16 parameters is kept in float32 (4 bytes a parameter,
  as ``lookahead``'s slow weights): a base step is often below half a bf16
  ulp of the weight, which a bf16 :math:`z` rounds away for good. The
  parameters :math:`y` stay in their dtype and round each step (as any
  optimizer's bf16 parameters do), and :math:`x` is recovered from them,
  so it carries their rounding divided by β: train bf16 models with float32
  parameters where the average matters. The scalars are float32 (optax
  keeps them in the parameters' dtype: a bf16 weight sum stops growing
  after a few hundred steps, and the average then weights each new iterate
  too much). A non-finite base update makes :math:`z`, and
  with it :math:`y` and :math:`x`, non-finite for good
  (``optax.apply_if_finite`` around it skips such steps).

  Reference: Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road
  Less Scheduled", NeurIPS 2024; the official ``schedulefree`` package
  (``ScheduleFreeWrapperReference``). ``optax.contrib.schedule_free`` gives
  the same steps for a constant rate; it evaluates ``learning_rate`` at its
  count + 1 while a schedule inside the base reads the count, so in a
  warm-up its :math:`z` steps lag its weights by one step (its first
  :math:`z` step is 0 with ``optax.warmup_constant_schedule(0, ...)``);
  ``learning_rate=lambda t: schedule(t + 1)`` here reproduces that. It has
  no ``r``.
  """
  _validate.check_transformation("base", base)
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_in_range("b1", b1, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
  _validate.check_non_negative("weight_lr_power", weight_lr_power)
  _validate.check_non_negative("r", r)
  z_format = state_format.state_format("state_dtype", state_dtype)
  if state_format.is_quantized(z_format):
    raise ValueError(
        "state_dtype must be None, a floating or complex dtype or gt.StochasticBfloat16():"
        " z holds the iterates themselves, which 8-bit blocks would round by up to a"
        " block's scale")
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    dtype = _tree.scalar_dtype(params)
    return ScheduleFreeState(
        count=jnp.zeros([], jnp.int32), b1=jnp.asarray(b1, dtype), lr_max=jnp.zeros([], dtype),
        weight_sum=jnp.zeros([], dtype), z=_initial_z(params, z_format),
        inner_state=base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "schedule_free needs the parameters: call update(updates, state, params)")
    updates, inner_state = base.update(updates, state.inner_state, params, **extra_args)
    dtype = state.weight_sum.dtype
    rate = jnp.asarray(_tree.resolve_schedule(learning_rate, state.count), dtype)
    lr_max = jnp.maximum(state.lr_max, rate)
    count = optax.safe_increment(state.count)
    weight = count.astype(dtype) ** r * lr_max ** weight_lr_power
    weight_sum = state.weight_sum + weight
    # No step has had a weight yet (a rate of 0): x stays where it is.
    c = jnp.where(weight_sum == 0, 0, weight / jnp.where(weight_sum == 0, 1, weight_sum))
    b = jnp.asarray(b1, dtype)
    # 1 − β is formed before the cast: 1 − float32(0.9) is off by 1e-8.
    step_weight = jnp.asarray(1 - b1, dtype) + b * c

    seeds = state_format.maybe_rounding_seeds(updates, count, z_format)

    def leaf(u, y, z, seed):
      if z_format is None:
        u_ = u.astype(z.dtype)
        z_new = z_used = _sharding.reshard_like(z + u_, z)
        moved = u_
      else:  # computed in at least float32, the step from z as stored
        work = jnp.promote_types(_tree.compute_dtype(y), _tree.compute_dtype(z))
        z_old = state_format.load(z, work)
        z_new, z_used = state_format.stored_and_used(
            z_old + u.astype(work), z, z_format, seed)
        # What z moved as stored (a sub-ulp step of a bf16 z: 0), so that
        # x = (y − (1−β)z)/β stays the average of the stored z.
        moved = z_used - z_old
      # c(z − y) + (1 − β(1 − c))u written with z_new = z + u (the same to
      # round-off): read from the old z, the step made XLA copy every z
      # before overwriting the donated buffer (optax's step copies it too).
      step = c * (z_used - y.astype(z_used.dtype)) + (step_weight - c) * moved
      return step.astype(u.dtype), z_new

    updates, z = _tree.map_leaves(leaf, 2, updates, params, state.z, seeds)
    return updates, ScheduleFreeState(count, b, lr_max, weight_sum, z, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _initial_z(params: Any, z_format: Any) -> Any:
  """z_1 = y_1, a copy (donation refuses aliased buffers) in ``z_format``."""
  if z_format is None:
    return _tree.copy_in_compute_dtype(params)
  zeros = state_format.zeros_like_tree(params, z_format, signed=True)
  return jax.tree.map(lambda p, z: jnp.array(p, z.dtype, copy=True)
                      if not isinstance(p, jax.ShapeDtypeStruct) else z, params, zeros)


def _warmed_up(learning_rate: optax.ScalarOrSchedule, warmup_steps: Any) -> Any:
  """The official warm-up: η_t · min(1, (t + 1)/w) at step count t (from 0)."""
  if _validate.is_static_zero(warmup_steps):
    return learning_rate

  def schedule(count):
    # A traced w = 0 gives (t + 1)/0 = inf: no warm-up, as the official code.
    ramp = jnp.minimum(1.0, (count + 1) / warmup_steps)
    return _tree.resolve_schedule(learning_rate, count) * ramp

  return schedule


@_validate.checks_arguments
def schedule_free_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    warmup_steps: int = 0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    weight_lr_power: float = 2.0,
    r: float = 0.0,
    state_dtype: Optional[Any] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Schedule-Free SGD: ``schedule_free`` around a plain gradient step.

  .. math::
    z_{t+1} = z_t - γ_t (g_t + λ y_t),\quad
    γ_t = η \min\!\left(1, \tfrac{t}{T_w}\right)

  at step t = 1, 2, …, with the gradient :math:`g_t` and the decay taken
  at the parameters :math:`y_t`, and :math:`x`, :math:`y` as in
  ``go.schedule_free``. The official ``SGDScheduleFree``'s rule (the same
  :math:`y` and :math:`x` as it and ``SGDScheduleFreeReference`` to 1e-14
  in float64 over 50 steps), its defaults but the learning rate's (1.0
  there). Evaluate at ``go.schedule_free_eval_params(state, params)``.

  Args:
    learning_rate: η, the peak rate, a non-negative number or a schedule
      (multiplied by the warm-up; the paper's point is to need no decay).
    b1: β, the interpolation (the official ``momentum``), in (0, 1].
    warmup_steps: :math:`T_w`, the steps of the linear warm-up, an integer
      >= 0 (may be traced, e.g. by ``optax.inject_hyperparams``).
    weight_decay: λ, >= 0, or a schedule; at :math:`y`, scaled by
      :math:`γ_t`.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where :math:`g_t \odot y_t \ge 0`
      (``gt.decoupled_weight_decay``; Chen et al. 2025).
    weight_lr_power: the power of the largest rate so far in the averaging
      weights, >= 0.
    r: the power of t in the averaging weights, >= 0.
    state_dtype: storage of :math:`z` (``go.schedule_free``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    ``ScheduleFreeState``.

  Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024;
  ``schedulefree.SGDScheduleFree`` (1.4.1). ``optax.contrib.schedule_free_sgd``
  is the same for ``warmup_steps=0``; its warm-up moves :math:`z` by
  :math:`γ_{t-1}` (0 at the first step) and weights by :math:`γ_t`.
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  warmup_steps = _validate.check_integer("warmup_steps", warmup_steps, 0, traced=True)
  rate = _warmed_up(learning_rate, warmup_steps)
  return schedule_free(
      optax.chain(
          gt.decoupled_weight_decay(
              weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
          gt.scale_by_learning_rate(rate),
      ),
      learning_rate=rate, b1=b1, weight_lr_power=weight_lr_power, r=r,
      state_dtype=state_dtype)


@_validate.checks_arguments
def schedule_free_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    warmup_steps: int = 0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    weight_lr_power: float = 2.0,
    r: float = 0.0,
    state_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Schedule-Free AdamW: ``schedule_free`` around Adam's step without momentum.

  .. math::
    v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\quad
    z_{t+1} = z_t - γ_t \left(\frac{g_t}{\sqrt{v_t/(1-β_2^t)} + ε}
      + λ y_t\right),\quad
    γ_t = η \min\!\left(1, \tfrac{t}{T_w}\right)

  at step t = 1, 2, …, with :math:`g_t` and the decay taken at the
  parameters :math:`y_t`, and :math:`x`, :math:`y` as in
  ``go.schedule_free``. The official ``AdamWScheduleFree``'s rule (the
  same :math:`y` and :math:`x` as it and ``AdamWScheduleFreeReference`` to
  1e-14 in float64 over 50 steps), and its defaults but the learning rate's
  (0.0025 there). The decay is decoupled from the normalisation, as in
  AdamW. ``AdamWScheduleFreePaper`` differs: it scales :math:`γ_t` (and so
  the weights) by :math:`\sqrt{1-β_2^t}` and adds ε to the uncorrected
  :math:`\sqrt{v_t}`; the reference's ``decay_at_z`` (decay at :math:`z`)
  is not offered. Evaluate at ``go.schedule_free_eval_params(state,
  params)``.

  Args:
    learning_rate: η, the peak rate, a non-negative number or a schedule
      (multiplied by the warm-up).
    b1: β, the interpolation (the official ``betas[0]``), in (0, 1].
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    warmup_steps: :math:`T_w`, the steps of the linear warm-up, an integer
      >= 0 (may be traced).
    weight_decay: λ, >= 0, or a schedule; at :math:`y`, scaled by
      :math:`γ_t`.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the normalised step has the
      sign of the weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    weight_lr_power: the power of the largest rate so far in the averaging
      weights, >= 0.
    r: the power of t in the averaging weights, >= 0.
    state_dtype: storage of :math:`z` (``go.schedule_free``).
    nu_dtype: storage of :math:`v` (``gt.scale_by_adam``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    ``ScheduleFreeState``.

  Example:
    Training a Flax NNX model, then evaluating a copy at :math:`x`:

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from gradtx import optimizers as go
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, go.schedule_free_adamw(0.01, warmup_steps=5),
    ...                           wrt=nnx.Param)
    >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    >>> loss = lambda m: jnp.mean((m(x) - y) ** 2)
    >>> for _ in range(10):
    ...   _ = optimizer.update(model, nnx.grad(loss)(model))
    >>> evaluation = nnx.clone(model)
    >>> nnx.update(evaluation, go.schedule_free_eval_params(
    ...     optimizer.opt_state, nnx.state(model, nnx.Param)))
    >>> bool(loss(evaluation) < loss(nnx.Linear(2, 1, rngs=nnx.Rngs(0))))
    True

  Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024;
  ``schedulefree.AdamWScheduleFree`` (1.4.1).
  ``optax.contrib.schedule_free_adamw`` is the same for ``warmup_steps=0``
  (its warm-up lags as ``schedule_free_sgd``'s says).
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  warmup_steps = _validate.check_integer("warmup_steps", warmup_steps, 0, traced=True)
  rate = _warmed_up(learning_rate, warmup_steps)
  return schedule_free(
      optax.chain(
          gt.scale_by_adam(0.0, b2, eps, nu_dtype=nu_dtype),
          gt.decoupled_weight_decay(
              weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
          gt.scale_by_learning_rate(rate),
      ),
      learning_rate=rate, b1=b1, weight_lr_power=weight_lr_power, r=r,
      state_dtype=state_dtype)


def schedule_free_eval_params(state: Any, params: optax.Params) -> optax.Params:
  r"""The evaluation point :math:`x = (y - (1-β) z)/β` of a ``schedule_free`` state.

  ``state`` is the ``ScheduleFreeState`` or any state tree holding exactly
  one (inside ``optax.MultiSteps``, ``optax.inject_hyperparams`` or
  ``optax.chain``, or a flax ``nnx.Optimizer``'s ``opt_state``), as
  ``optax.contrib.schedule_free_eval_params`` takes it. With NNX parameters
  (``nnx.state(model, nnx.Param)``) the result is an ``nnx.State`` of
  ``nnx.Param`` s: ``nnx.update(model, ...)`` takes it.

  Args:
    state: the optimizer state.
    params: the current (training) parameters :math:`y`, in their dtypes and
      structure (a leaf the wrapper does not see, left out by
      ``optax.masked`` or another ``multi_transform`` branch, is returned as
      it is here).

  Returns:
    :math:`x`, structured and typed like ``params`` (computed in float32 at
    least).
  """
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScheduleFreeState))
           if isinstance(s, ScheduleFreeState)]
  if len(found) != 1:
    raise ValueError(
        f"schedule_free_eval_params needs a state holding one ScheduleFreeState (from"
        f" go.schedule_free), found {len(found)} (of an nnx.Optimizer, pass its"
        f" opt_state)")
  # flax NNX: nnx.Optimizer's opt_state wraps the state in OptVariables, and
  # nnx.state(model, nnx.Param) the parameters in Params.
  z, plain = _tree.unwrap_metadata(found[0].z), _tree.unwrap_metadata(params)
  b1 = _tree.value_of(found[0].b1)
  masked = _tree.is_masked_node
  try:  # z is a prefix of params: a MaskedNode may stand for a subtree
    jax.tree.structure(z, is_leaf=masked).flatten_up_to(plain)
  except ValueError as error:
    raise ValueError(
        "schedule_free_eval_params: params must be the tree the optimizer was built"
        " on: with nnx.Optimizer(model, tx, wrt=...) pass nnx.state(model, wrt), the"
        f" same filter ({error})") from None

  def average(z, y):
    if masked(z):
      return y
    work = jnp.promote_types(_tree.compute_dtype(y), z.dtype)  # a bf16 z: float32
    b = b1.astype(_tree.real_dtype(work))
    return ((y.astype(work) - (1 - b) * z.astype(work)) / b).astype(_tree.dtype_of(y))

  return _tree.wrapped_like(jax.tree.map(average, z, plain, is_leaf=masked), params)
