"""Grafting: one transform's direction at another's step size, per leaf or block.

The blocks are those of ``kronecker_precondition`` (``kronecker.block_layout``
with the same ``block_size`` and ``max_precondition_dim``), so that Shampoo's
per-block directions get per-block magnitudes.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.transforms.kronecker import from_blocks, layouts_of, to_blocks
from gradtx.transforms.matrix_view import MatrixViewRule


class GraftState(NamedTuple):
  """State of ``graft``: the states of the two transforms it runs."""

  magnitude_state: optax.OptState
  direction_state: optax.OptState


def graft(
    magnitude: optax.GradientTransformation,
    direction: optax.GradientTransformation,
    *,
    block_size: Optional[int] = None,
    max_precondition_dim: int = 4096,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Layer-wise grafting: one transform's direction at another's step size.

  .. math:: u = d\, \frac{\|m\|_F}{\|d\|_F}

  per leaf, or per block when ``block_size`` is given (the blocks of
  ``kronecker_precondition`` with the same ``block_size`` and
  ``max_precondition_dim``), where m and d are the updates ``magnitude`` and
  ``direction`` make of the same incoming updates. A zero direction gives 0.

  Args:
    magnitude: the grafted transform that sets the norm (e.g. Adam, RMSProp).
    direction: the transform that sets the direction (e.g. Shampoo).
    block_size: take norms per block of this size; ``None``: per leaf.
    max_precondition_dim: as in ``kronecker_precondition`` (blocks only).
    matrix_view: as in ``kronecker_precondition`` (blocks only).

  Returns:
    An ``optax.GradientTransformation`` with state ``GraftState``.

  Reference: Agarwal et al., "Disentangling Adaptive Gradient Methods from
  Learning Rates", 2020; Anil et al. 2020 (per-block grafting in Shampoo).
  """
  if block_size is not None:
    block_size = _validate.check_integer("block_size", block_size)
  max_precondition_dim = _validate.check_integer(
      "max_precondition_dim", max_precondition_dim
  )

  def init_fn(params):
    return GraftState(magnitude.init(params), direction.init(params))

  def leaf(m, d, layout):
    dtype = _tree.compute_dtype(d)
    # Explicit meshes: the per-block views need the whole matrix (_sharding).
    m_, d_ = (_sharding.gather(a.astype(dtype)) for a in (m, d))
    if block_size is None or layout is None:
      m_, d_ = m_.reshape(1, -1), d_.reshape(1, -1)
    else:
      m_, d_ = to_blocks(m_, layout), to_blocks(d_, layout)
    axes = tuple(range(1, m_.ndim))
    m_norm = jnp.sqrt(jnp.sum(_tree.abs_sq(m_), axes, keepdims=True))
    d_norm = jnp.sqrt(jnp.sum(_tree.abs_sq(d_), axes, keepdims=True))
    u = d_ * jnp.where(d_norm > 0, m_norm / jnp.where(d_norm > 0, d_norm, 1), 0)
    if block_size is None or layout is None:
      u = u.reshape(d.shape)
    else:
      u = from_blocks(u, layout, d.shape)
    return _sharding.reshard_like(u.astype(d.dtype), d)

  def update_fn(updates, state, params=None):
    m, magnitude_state = magnitude.update(updates, state.magnitude_state, params)
    d, direction_state = direction.update(updates, state.direction_state, params)
    leaves, treedef = jax.tree.flatten(d)
    layouts = (layouts_of(d, matrix_view, block_size, max_precondition_dim)
               if block_size is not None else [None] * len(leaves))
    grafted = [leaf(*args) for args in zip(
        treedef.flatten_up_to(m), leaves, layouts)]
    return treedef.unflatten(grafted), GraftState(magnitude_state, direction_state)

  return optax.GradientTransformation(init_fn, update_fn)
