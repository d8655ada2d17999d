"""Parameter EMA: an averaged copy of the weights, kept in the optimizer state."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate


class ParameterEmaState(NamedTuple):
  """State of ``parameter_ema``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    ema: the averaged parameters, one leaf per parameter (float32 for
      bf16/f16 parameters, the parameter's dtype otherwise).
    inner_state: the state of the base optimizer.
  """

  count: jax.Array
  ema: optax.Params
  inner_state: optax.OptState


def parameter_ema(
    base: optax.GradientTransformation,
    *,
    decay: float = 0.999,
    start_step: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Any optimizer, with an exponential moving average of its parameters.

  With :math:`p_t` the parameters, :math:`u_t` the base's update at step
  t = 1, 2, … and k = ``start_step``:

  .. math::
    p_{t} = p_{t-1} + u_t,\qquad
    \bar p_t = \begin{cases}
      p_t & t \le k \\
      β \bar p_{t-1} + (1-β)\, p_t & t > k
    \end{cases},\qquad \bar p_0 = p_0

  The average is of the weights *after* each update, the ones the next
  gradient is taken at. It is seeded with the parameters themselves (not
  with zeros), so it needs no bias correction: after n averaged steps the
  seed :math:`p_k` keeps weight :math:`β^n` and step k + i weight
  :math:`(1-β)β^{n-i}`. Until step k the average simply follows the
  parameters, so ``start_step`` skips the early, fast-moving phase: set it
  to the total steps minus a few multiples of 1/(1 − β) for an "EMA of the
  last steps". ``start_step=0`` is Levanter's ``EmaModelAveraging``
  (``optax.incremental_update`` every step from the initial model).

  The updates are the base's, unchanged: training follows the base
  optimizer; evaluate with ``go.ema_params(state, params)``. The average is
  laid out like the parameters (a parameter-shaped state leaf for
  ``gt.state_shardings``) and checkpoints with the rest of the state. It is
  formed from :math:`p_{t-1} + u_t`, so ``parameter_ema`` must be the last
  transformation: a step chained after it that rescales the updates
  (``optax.contrib.reduce_on_plateau``, clipping) belongs inside ``base``.

  Args:
    base: the optimizer whose parameters are averaged.
    decay: β, the EMA's decay, in [0, 1).
    start_step: k, the step after which averaging starts, an integer >= 0
      (may be traced, e.g. by ``optax.inject_hyperparams``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    ``ParameterEmaState``; keyword arguments of ``update`` go to the base.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.parameter_ema(go.sgd(1.0), decay=0.5)
    >>> params = jnp.zeros(1)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(-jnp.ones(1), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params, go.ema_params(state, params)  # (0 + 1)/2, then (0.5 + 2)/2
    (Array([2.], dtype=float32), Array([1.25], dtype=float32))

  The modded-nanogpt record recipe (SOAP-Muon, cautious weight decay, an
  EMA of the last steps), with T the total steps::

    tx = go.parameter_ema(
        go.soap_muon(lr, weight_decay=wd, cautious_weight_decay=True),
        decay=0.99, start_step=T - 500)
    ...  # train as usual; evaluate at go.ema_params(state, params)

  and ``go.muon(lr, weight_decay=wd, cautious_weight_decay=True)`` in its
  place for Muon.

  Bf16/f16 parameters are averaged in float32 (4 bytes a parameter): a
  step moves the average by (1 − β) times the parameter's change, usually
  below half a bf16 ulp. A non-finite update makes the average non-finite
  for good (``optax.apply_if_finite`` around it skips such steps).

  Reference: Polyak & Juditsky, "Acceleration of Stochastic Approximation
  by Averaging", 1992 (iterate averaging); Levanter's
  ``EmaModelAveraging``; modded-nanogpt's fewest-steps record (an EMA of
  the last steps' weights).
  """
  _validate.check_transformation("base", base)
  _validate.check_decay("decay", decay)
  start_step = _validate.check_integer("start_step", start_step, 0, traced=True)
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    ema = _tree.copy_in_compute_dtype(params)
    return ParameterEmaState(jnp.zeros([], jnp.int32), ema, base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "parameter_ema needs the parameters: call update(updates, state, params)")
    updates, inner_state = base.update(updates, state.inner_state, params, **extra_args)
    count = optax.safe_increment(state.count)
    weight = jnp.where(count > start_step, 1 - decay, 1)

    def average(u, p, e):
      new = p.astype(e.dtype) + u.astype(e.dtype)
      w = jnp.asarray(weight, _tree.real_dtype(e.dtype))
      return _sharding.reshard_like(e + w * (new - e), e)

    ema = jax.tree.map(average, updates, params, state.ema)
    return updates, ParameterEmaState(count, ema, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema_params(state: Any, params: optax.Params) -> optax.Params:
  """The averaged parameters held by a ``parameter_ema`` state, in ``params``' dtypes.

  ``state`` is the ``ParameterEmaState`` or any state tree holding exactly
  one (e.g. inside ``optax.inject_hyperparams`` or ``optax.chain``, or a
  flax ``nnx.Optimizer``'s ``opt_state``), as
  ``optax.contrib.schedule_free_eval_params`` takes the schedule-free state.
  With NNX parameters (``nnx.state(model, nnx.Param)``) the result is an
  ``nnx.State`` of ``nnx.Param`` s: ``nnx.update(model, ...)`` takes it.

  Args:
    state: the optimizer state.
    params: the current parameters (their dtypes and structure; a leaf the
      EMA does not see, left out by ``optax.masked`` or another
      ``multi_transform`` branch, is returned as it is here).

  Returns:
    The EMA of the parameters, structured and typed like ``params``.
  """
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ParameterEmaState))
           if isinstance(s, ParameterEmaState)]
  if len(found) != 1:
    raise ValueError(
        f"ema_params needs a state holding one ParameterEmaState (from"
        f" go.parameter_ema), found {len(found)} (of an nnx.Optimizer, pass its"
        f" opt_state)")
  # flax NNX: nnx.Optimizer's opt_state wraps the EMA in OptVariables, and
  # nnx.state(model, nnx.Param) the parameters in Params.
  ema, plain = _tree.unwrap_metadata(found[0].ema), _tree.unwrap_metadata(params)
  try:  # the average is a prefix of params: a MaskedNode may stand for a subtree
    jax.tree.structure(ema, is_leaf=_tree.is_masked_node).flatten_up_to(plain)
  except ValueError as error:
    raise ValueError(
        "ema_params: params must be the tree the optimizer was built on: with"
        " nnx.Optimizer(model, tx, wrt=...) pass nnx.state(model, wrt), the same"
        f" filter ({error})") from None
  # Inside optax.masked or a multi_transform branch the leaves left out are
  # MaskedNodes: they keep the current parameters.
  masked = _tree.is_masked_node
  averaged = jax.tree.map(lambda e, p: p if masked(e) else e.astype(_tree.dtype_of(p)),
                          ema, plain, is_leaf=masked)
  return _tree.wrapped_like(averaged, params)
