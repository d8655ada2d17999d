"""Lookahead: k fast steps of any optimizer, then one slow step back."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate


class LookaheadState(NamedTuple):
  """State of ``lookahead``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    slow: the slow weights φ, one leaf per parameter (float32 for bf16/f16
      parameters, the parameter's dtype otherwise).
    inner_state: the state of the base optimizer.
  """

  count: jax.Array
  slow: optax.Params
  inner_state: optax.OptState


@_validate.checks_arguments
def lookahead(
    base: optax.GradientTransformation,
    *,
    sync_period: int = 6,
    slow_step_size: float = 0.5,
    reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Lookahead around a base optimizer, over ordinary parameters.

  With θ the parameters (the fast weights), φ₀ = θ₀ and u_t the base update:

  .. math::
    θ'_t = θ_{t-1} + u_t,\qquad
    \begin{cases}
      φ_t = φ_{t-1} + α(θ'_t - φ_{t-1}),\; θ_t = φ_t & t \equiv 0 \pmod k \\
      φ_t = φ_{t-1},\; θ_t = θ'_t & \text{otherwise}
    \end{cases}

  The returned update is u_t, or φ_t − θ_{t-1} at a sync, so that
  ``optax.apply_updates`` lands on φ_t (up to one rounding: the slow weights
  in the state stay exact). Gradients are taken at the fast weights; the slow
  weights (``state.slow``) are the ones to evaluate. ``lookahead`` forms
  :math:`θ'_t` itself, so it must be the last transformation: a step chained
  after it that rescales the updates (``optax.contrib.reduce_on_plateau``,
  clipping) belongs inside ``base``.

  Args:
    base: the fast (inner) optimizer.
    sync_period: k, the fast steps per slow step, an integer >= 1 (may be
      traced, e.g. by ``optax.inject_hyperparams``). The default k = 6 and
      α = 0.5 are TensorFlow Addons' ``Lookahead``'s; the paper's runs use
      k ∈ {5, 10}, α ∈ {0.5, 0.8}, and optax sets no default.
    slow_step_size: α, in [0, 1]. α = 1 without ``reset_state`` is the base
      optimizer (to rounding).
    reset_state: re-initialise the base state at every sync (at the synced
      weights), as ``optax.lookahead`` does: all of it, so the base's step
      count restarts too, and with it Adam's bias correction and any
      learning-rate schedule inside the base (a warm-up longer than k steps
      never ends).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    ``LookaheadState``; its updates have the base updates' dtypes. Keyword
    arguments of ``update`` go to the base (e.g. ``grad_fn`` for ``sam``).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.lookahead(go.sgd(0.1), sync_period=2, slow_step_size=0.5)
    >>> params = jnp.ones(2)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(jnp.ones(2), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params
    Array([0.9, 0.9], dtype=float32)

  Slow weights of bf16/f16 parameters are kept in float32 (4 bytes a
  parameter): a sync moves φ by α times the fast displacement, often below
  half a bf16 ulp, which a bf16 φ would round away (from 1.0, one ulp of fast
  progress a period never moves it). A non-finite base update makes θ
  non-finite and, at the next sync, φ too, for good (``optax.apply_if_finite``
  around lookahead skips such steps).

  Reference: Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps
  forward, 1 step back", NeurIPS 2019, Algorithm 1. ``optax.lookahead``
  gives the same trajectories (tested to 1e-10 in float64) but makes the
  user carry ``LookaheadParams(fast, slow)`` as params, stores φ in the
  params' dtype, blends with arithmetic (0 · NaN poisons φ on the non-finite
  step itself, not at the next sync) and resets the base at the pre-step
  weights (the same for any base whose init reads only shapes).
  """
  _validate.check_transformation("base", base)
  sync_period = _validate.check_integer("sync_period", sync_period, traced=True)
  _validate.check_in_range(
      "slow_step_size", slow_step_size, 0.0, 1.0, high_inclusive=True
  )
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    slow = _tree.copy_in_compute_dtype(params)
    return LookaheadState(jnp.zeros([], jnp.int32), slow, base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "lookahead needs the parameters: call update(updates, state, params)"
      )
    updates, inner_state = base.update(
        updates, state.inner_state, params, **extra_args)
    count = optax.safe_increment(state.count)
    sync = count % sync_period == 0

    def synced_leaf(u, p, s):
      fast = p.astype(s.dtype) + u.astype(s.dtype)
      synced = s + slow_step_size * (fast - s)
      return (synced - p.astype(s.dtype)).astype(u.dtype), synced

    # A cond, not a select: between syncs the slow weights are not rewritten.
    updates, slow = jax.lax.cond(
        sync,
        lambda: _tree.map_leaves(synced_leaf, 2, updates, params, state.slow, once_per_shape=True),
        lambda: (updates, state.slow))
    if reset_state:  # a cond: the base's init runs at syncs only
      inner_state = jax.lax.cond(
          sync, lambda: base.init(optax.apply_updates(params, updates)),
          lambda: inner_state)
    return updates, LookaheadState(count, slow, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
