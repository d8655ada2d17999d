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
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule
from gradtx.transforms.kronecker import layouts_of


def _ratio(m_sq, d_sq):
  """‖m‖/‖d‖ from the squared norms; 0 where d is 0."""
  return jnp.where(d_sq > 0, _tree.root(m_sq / jnp.where(d_sq > 0, d_sq, 1)), 0)


def _grafted_whole(m, d):
  dtype = _tree.compute_dtype(d)
  m_, d_ = m.astype(dtype), d.astype(dtype)
  ratio = _ratio(_tree.sum_squares(m_), _tree.sum_squares(d_))
  return (d_ * ratio).astype(d.dtype)


def _grafted_blocks(m, d, layout):
  """d rescaled per block, computed in the leaves' own layout.

  The blocks are cut by a zero pad and a reshape (as ``block_stacks``
  cuts them), their squared norms summed, and each block's ratio broadcast
  back over its elements: reductions and element-wise work only, the same
  program for every leaf of one shape.
  """
  dtype = _tree.compute_dtype(d)
  m_, d_ = (layout.view.to_matrices(a.astype(dtype)) for a in (m, d))
  n, rb, cb = m_.shape[0], layout.row_blocks, layout.col_blocks
  br, bc = layout.block_rows, layout.block_cols
  pad = ((0, 0), (0, rb * br - layout.rows), (0, cb * bc - layout.cols))

  def norms(x):
    blocks = jnp.pad(_tree.abs_sq(x), pad).reshape(n, rb, br, cb, bc)
    return jnp.sum(blocks, axis=(2, 4), keepdims=True)

  scale = jnp.broadcast_to(_ratio(norms(m_), norms(d_)), (n, rb, br, cb, bc))
  scale = scale.reshape(n, rb * br, cb * bc)[:, :layout.rows, :layout.cols]
  return layout.view.from_matrices(d_ * scale, d.shape).astype(d.dtype)


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
  _validate.check_transformation("magnitude", magnitude)
  _validate.check_transformation("direction", direction)
  if block_size is not None:
    block_size = _validate.check_integer("block_size", block_size)
  max_precondition_dim = _validate.check_integer(
      "max_precondition_dim", max_precondition_dim
  )

  def init_fn(params):
    return GraftState(magnitude.init(params), direction.init(params))

  def leaf(m, d, layout):
    if block_size is None or layout is None:
      return _sharding.in_auto_axes(_grafted_whole, m, d, like=d)
    return _sharding.in_auto_axes(
        lambda m, d: _grafted_blocks(m, d, layout), m, d, like=d)

  def update_fn(updates, state, params=None):
    m, magnitude_state = magnitude.update(updates, state.magnitude_state, params)
    d, direction_state = direction.update(updates, state.direction_state, params)
    leaves, treedef = jax.tree.flatten(d)
    layouts = (layouts_of(d, matrix_view, block_size, max_precondition_dim)
               if block_size is not None else [None] * len(leaves))
    # One traced program per distinct layout (and shape), not per leaf.
    per_layout = {layout: _tree.traced_once_per_shape(
        lambda m, d, layout=layout: leaf(m, d, layout), leaves) for layout in set(layouts)}
    grafted = [per_layout[layout](m_, d_) for m_, d_, layout in zip(
        treedef.flatten_up_to(m), leaves, layouts)]
    return treedef.unflatten(grafted), GraftState(magnitude_state, direction_state)

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))
