"""The learning-rate step: u ← −η_t u, with η a constant or a schedule."""

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate


class ScaleByLearningRateState(NamedTuple):
  """State of ``scale_by_learning_rate`` with a schedule: the step count (a
  constant rate keeps ``optax.EmptyState()``, as optax does, so that
  ``optax.tree_utils.tree_get(state, "count")`` finds one count)."""

  count: jax.Array


@_validate.checks_arguments
def scale_by_learning_rate(
    learning_rate: Union[float, optax.Schedule], *, flip_sign: bool = True
) -> optax.GradientTransformation:
  r"""Multiplies updates by the (negated) learning rate.

  .. math:: u \leftarrow -η_t\, u

  so that ``optax.apply_updates`` performs descent.

  Args:
    learning_rate: η, a non-negative number, a scalar array (as fed back by
      ``optax.inject_hyperparams``) or a schedule of the step count.
    flip_sign: negate, for gradient descent (the default).

  Returns:
    An ``optax.GradientTransformation`` with state
    ``ScaleByLearningRateState`` for a schedule, else ``optax.EmptyState``.
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  sign = -1 if flip_sign else 1
  counts = callable(learning_rate)

  def init_fn(params):
    del params
    return ScaleByLearningRateState(jnp.zeros([], jnp.int32)) if counts else optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    step_size = sign * _tree.resolve_schedule(learning_rate, state.count)
    updates = jax.tree.map(
        lambda g: (step_size * g).astype(g.dtype), updates
    )
    return updates, _tree.counted(state)

  return optax.GradientTransformation(init_fn, update_fn)
