"""DoG and DoWG: SGD at a step size of the distance travelled over the gradients seen."""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.transforms.weight_decay import with_coupled_decay


class DoGState(NamedTuple):
  """State of ``dog``.

  Attributes:
    count: calls so far (the schedules' step; ``init_eta`` is step 0's rate).
    max_distance: r̄, the largest distance ‖p − p₀‖ so far, at least
      :math:`r_ε`: one scalar for the tree, or with ``layer_wise`` a tree of
      one scalar per leaf.
    sum_sq_norms: G = ε + Σ‖g'‖², the squared norms of the (decayed)
      gradients so far; a scalar or, with ``layer_wise``, one per leaf.
    params0: the initial parameters p₀, per leaf.
  """

  count: jax.Array
  max_distance: Any
  sum_sq_norms: Any
  params0: optax.Params


class DoWGState(NamedTuple):
  """State of ``dowg``.

  Attributes:
    count: calls so far (the schedules' step).
    max_sq_distance: r̄², the largest squared distance ‖p − p₀‖² so far, at
      least the initial estimate (a scalar).
    weighted_sum_sq_norms: v = Σ r̄ᵢ²‖g'ᵢ‖², the gradients' squared norms
      weighted by r̄² when they arrived (a scalar).
    params0: the initial parameters p₀, per leaf.
  """

  count: jax.Array
  max_sq_distance: jax.Array
  weighted_sum_sq_norms: jax.Array
  params0: optax.Params


def _squared_norms(updates: Any, params: Any, params0: Any, real: Any) -> tuple:
  """Per leaf, as plain trees of scalars (``map_statistics``' structure):
  ‖g‖² and ‖p − p₀‖², summed in float32 or wider."""

  def leaf(g, p, p0):
    dtype = _tree.compute_dtype(g)
    return (_tree.sum_squares(g.astype(dtype)).astype(real),
            _tree.sum_squares(p.astype(dtype) - p0).astype(real))

  outputs = _tree.map_leaves(leaf, 2, updates, params, params0)
  return tuple(map(_tree.unwrap_metadata, outputs))


def _total(tree: Any, real: Any) -> jax.Array:
  return sum(jax.tree.leaves(tree), jnp.zeros([], real))


def _scaled(updates: Any, rates: Any, per_leaf: bool) -> Any:
  """−η·g per leaf, in each update's dtype; ``rates`` one scalar, or with
  ``per_leaf`` a tree of one per leaf."""

  def leaf(g, rate):
    return ((-rate) * g.astype(_tree.compute_dtype(g))).astype(g.dtype),

  if per_leaf:
    return _tree.map_leaves(leaf, 1, updates, rates)[0]
  return jax.tree.map(lambda g: leaf(g, rates)[0], updates)


@_validate.checks_arguments
def dog(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    reps_rel: float = 1e-6,
    eps: float = 1e-8,
    init_eta: Optional[float] = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    layer_wise: bool = False,
) -> optax.GradientTransformation:
  r"""DoG: SGD at the step size max distance travelled over √(Σ‖g‖²).

  With :math:`g'_t = g_t + λ_t p_t` (the official coupled decay) and c_t the
  learning rate (a multiplier, 1 by default):

  .. math::
    \bar r_t = \max\big(r_ε,\ \max_{i \le t} \lVert p_i - p_0\rVert\big),\quad
    r_ε = \text{reps\_rel}\,(1 + \lVert p_0\rVert),\\
    G_t = ε + \sum_{i \le t} \lVert g'_i\rVert^2,\quad
    η_t = c_t\,\bar r_t / \sqrt{G_t},\quad
    p_{t+1} = p_t - η_t\, g'_t

  The norms run over the whole tree (one η, the official ``DoG`` of one parameter group), or with
  ``layer_wise`` over each leaf separately (one η per leaf: the official
  ``LDoG``, whose r_ε and G are per tensor too). ``init_eta`` sets the first
  step's η itself (not multiplied by c_0, as in the official code) and
  :math:`r_ε = 0`, so that :math:`\bar r` is the first step's length
  after it. A zero gradient moves nothing and leaves r̄ as it is: from the
  start, G = ε and the first non-zero gradient takes the step r_ε/√(ε +
  ‖g‖²); with ``init_eta`` a zero first gradient leaves r̄ = 0 and every
  later η 0, as in the official code. While G = 0 (``eps=0`` and only zero
  gradients so far) the step is 0 (the official code raises). A NaN or
  infinite gradient makes η, and so every leaf's step, NaN for good (LDoG:
  that leaf's; the official code raises). The official code keeps a step
  size per parameter group: its usual groups with and without decay are
  ``optax.multi_transform`` of two ``dog``s, where ``mask`` keeps one for
  the tree. The authors
  advise averaging the iterates (their package's polynomial-decay averager,
  not offered here; ``go.parameter_ema`` is a constant-decay EMA).

  The official ``DoG`` and ``LDoG`` (dog-optimizer 1.0.3) in float64: the
  same steps to round-off, with its learning rate and weight decay changed
  per step too (tests/optimizers/test_dog.py). ``optax.contrib.dog`` has no
  ``LDoG``; its ``init_step=("heuristic", reps_rel)`` is this rule, its
  ``("learning_rate", η₀)`` is ``init_eta`` but multiplied by the learning
  rate, and its ``("distance", r)`` an absolute r_ε (here
  ``reps_rel = r / (1 + ‖p₀‖)``); its scalars are kept in the parameters'
  lowest dtype (bfloat16 for bfloat16 parameters; float32 here).

  Args:
    learning_rate: c, a multiplier of the learned step size (the official
      ``lr``: 1, which the authors advise not to change), >= 0, or a schedule.
    reps_rel: the initial distance relative to 1 + ‖p₀‖, > 0 (the authors
      suggest 1e-6, 1e-4 with batch normalization); ignored with ``init_eta``.
    eps: ε, added to G once, >= 0.
    init_eta: the first step's η, > 0, or ``None`` (from ``reps_rel``).
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    layer_wise: one η per leaf (LDoG) instead of one for the tree.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params`` (the actual
    initial parameters at ``init`` too), with state ``DoGState``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.dog()
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(150):  # minimise |p|²/2: the gradient is p
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(state.max_distance > 1.0), bool(jnp.abs(params).max() < 0.1)
    (True, True)

  Reference: Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A
  Parameter-Free Dynamic Step Size Schedule", ICML 2023; the official
  ``dog-optimizer`` package (``DoG``, ``LDoG``).
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_in_range("reps_rel", reps_rel, 0.0, math.inf, low_inclusive=False)
  _validate.check_non_negative("eps", eps)
  if init_eta is not None:
    _validate.check_in_range("init_eta", init_eta, 0.0, math.inf, low_inclusive=False)
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)
  g_positive = _validate.is_static_nonzero(eps)  # G ≥ ε > 0: no guard needed

  def init_fn(params):
    _validate.check_real_leaves(params, "dog")
    real = _tree.scalar_dtype(params)
    params0 = _tree.copy_in_compute_dtype(params)
    rel = 0.0 if init_eta is not None else reps_rel  # the official code's reps_rel = 0
    sq_norm = lambda p: _tree.sum_squares(p).astype(real)
    r_eps = lambda sq: jnp.asarray(rel, real) * (1 + _tree.root(sq))
    if layer_wise:  # (optax.tree.map_params' placeholder gets NOT_PARAMS fields)
      max_distance, sum_sq = _tree.map_statistics(
          lambda p: (r_eps(sq_norm(p)), jnp.asarray(eps, real)), 2, params0)
    else:
      max_distance = r_eps(_total(list(map(sq_norm, jax.tree.leaves(params0))), real))
      sum_sq = jnp.asarray(eps, real)
    return DoGState(count=jnp.zeros([], jnp.int32), max_distance=max_distance,
                    sum_sq_norms=sum_sq, params0=params0)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("dog needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "dog")
    real = _tree.scalar_dtype(params)
    updates = with_coupled_decay(updates, params, weight_decay, mask, state.count)
    sq_norms, sq_dists = _squared_norms(updates, params, state.params0, real)
    rate = jnp.asarray(_tree.resolve_schedule(learning_rate, state.count), real)

    def step_size(r, g_sum):  # scalars only: no select reaches a leaf's update
      if g_positive:
        eta = rate * r / _tree.root(g_sum)
      else:
        # (== 0, not > 0: a NaN gradient's G must give NaN steps, not 0 ones)
        eta = jnp.where(g_sum == 0, 0, rate * r / _tree.root(jnp.where(g_sum == 0, 1, g_sum)))
      if init_eta is not None:
        eta = jnp.where(state.count == 0, jnp.asarray(init_eta, real), eta)
      return eta

    if layer_wise:
      max_distance = jax.tree.map(
          lambda r, d: jnp.maximum(r, _tree.root(d)), state.max_distance, sq_dists)
      sum_sq = jax.tree.map(jnp.add, state.sum_sq_norms, sq_norms)
      rates = jax.tree.map(step_size, max_distance, sum_sq)
    else:
      max_distance = jnp.maximum(state.max_distance, _tree.root(_total(sq_dists, real)))
      sum_sq = state.sum_sq_norms + _total(sq_norms, real)
      rates = step_size(max_distance, sum_sq)
    return _scaled(updates, rates, layer_wise), DoGState(
        count=optax.safe_increment(state.count), max_distance=max_distance,
        sum_sq_norms=sum_sq, params0=state.params0)

  return optax.GradientTransformation(init_fn, update_fn)


@_validate.checks_arguments
def dowg(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    init_estim_sq_dist: Optional[float] = None,
    eps: float = 1e-4,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""DoWG: SGD at the step size r̄²/√(Σ r̄²‖g‖²), distance-weighted gradients.

  With :math:`g'_t = g_t + λ_t p_t` (coupled decay, optax's) and c_t the
  learning rate (a multiplier, 1 by default):

  .. math::
    \bar r_t^2 = \max\big(\bar r_{t-1}^2,\ \lVert p_t - p_0\rVert^2\big),\quad
    \bar r_{-1}^2 = \text{init\_estim\_sq\_dist},\\
    v_t = v_{t-1} + \bar r_t^2 \lVert g'_t\rVert^2,\quad
    η_t = c_t\,\bar r_t^2 / (\sqrt{v_t} + ε),\quad
    p_{t+1} = p_t - η_t\, g'_t

  with the norms over the whole tree. The paper's Algorithm 1 (unconstrained)
  is ``eps=0`` with :math:`r_ε^2` given as ``init_estim_sq_dist``; ε guards
  the first steps' division (``optax.contrib.dowg``'s rule and defaults: ε
  = 1e-4, also the initial r̄² unless given). A zero gradient moves nothing;
  while v = 0 (``eps=0`` and only zero gradients so far) the step is 0, where
  the paper's is 0/0. ``optax.contrib.dowg`` keeps its scalars in the
  parameters' lowest dtype (bfloat16 for bfloat16 parameters; float32 here).

  Args:
    learning_rate: c, a multiplier of the learned step size, >= 0, or a
      schedule.
    init_estim_sq_dist: :math:`r_ε^2`, the initial estimate of the squared
      distance to a solution, > 0; ``None`` is ``eps``.
    eps: ε, added to √v, > 0, or >= 0 with ``init_estim_sq_dist`` given.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``, with state
    ``DoWGState``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.dowg()
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(100):  # minimise |p|²/2: the gradient is p
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(state.max_sq_distance > 1.0), bool(jnp.abs(params).max() < 0.1)
    (True, True)

  Reference: Khaled, Mishchenko & Jin, "DoWG Unleashed: An Efficient
  Universal Parameter-Free Gradient Descent Method", NeurIPS 2023
  (Algorithm 1); ``optax.contrib.dowg``.
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  if init_estim_sq_dist is not None:
    _validate.check_in_range("init_estim_sq_dist", init_estim_sq_dist, 0.0, math.inf,
                             low_inclusive=False)
    _validate.check_non_negative("eps", eps)
  else:  # eps is r̄²'s start too: from r̄ = 0 DoWG would never move
    try:
      _validate.check_in_range("eps", eps, 0.0, math.inf, low_inclusive=False)
    except ValueError as error:
      raise ValueError(f"{error} (it is also the initial r̄² while init_estim_sq_dist is"
                       " None: eps = 0, the paper's rule, needs init_estim_sq_dist)") from None
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)
  v_guarded = _validate.is_static_nonzero(eps)  # √v + ε > 0: no guard needed

  def init_fn(params):
    _validate.check_real_leaves(params, "dowg")
    real = _tree.scalar_dtype(params)
    initial = eps if init_estim_sq_dist is None else init_estim_sq_dist
    return DoWGState(count=jnp.zeros([], jnp.int32),
                     max_sq_distance=jnp.asarray(initial, real),
                     weighted_sum_sq_norms=jnp.zeros([], real),
                     params0=_tree.copy_in_compute_dtype(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("dowg needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "dowg")
    real = _tree.scalar_dtype(params)
    updates = with_coupled_decay(updates, params, weight_decay, mask, state.count)
    sq_norms, sq_dists = _squared_norms(updates, params, state.params0, real)
    rate = jnp.asarray(_tree.resolve_schedule(learning_rate, state.count), real)
    r2 = jnp.maximum(state.max_sq_distance, _total(sq_dists, real))
    v = r2 * _total(sq_norms, real) + state.weighted_sum_sq_norms
    if v_guarded:
      eta = rate * r2 / (_tree.root(v) + eps)
    else:
      eta = jnp.where(v == 0, 0, rate * r2 / (_tree.root(v) + eps + (v == 0)))
    return _scaled(updates, eta, False), DoWGState(
        count=optax.safe_increment(state.count), max_sq_distance=r2,
        weighted_sum_sq_norms=v, params0=state.params0)

  return optax.GradientTransformation(init_fn, update_fn)
