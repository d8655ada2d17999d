"""Hyperball: a step of fixed length on the sphere of the weights' own norm."""

import warnings
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names


class HyperballStepState(NamedTuple):
  """State of ``hyperball_step``: the step count for schedules."""

  count: jax.Array


def _sphere_step(u: jax.Array, p: jax.Array, eta) -> jax.Array:
  """R·N(p − ηR·N(u)) − p per matrix, R = ‖p‖, N(x) = x/‖x‖; 0 where u = 0."""
  radius, u_norm = _tree.norms(p, (1, 2)), _tree.norms(u, (1, 2))
  tiny = jnp.finfo(_tree.real_dtype(p.dtype)).tiny
  # N(u) of a zero u is u/1 = 0: u/tiny gave a derivative of 1/tiny, then 0·∞.
  moved = p - eta * radius * u / jnp.where(u_norm == 0, 1, u_norm)
  # radius/‖moved‖ first: exactly 1 when η = 0, so that step is exactly 0.
  step = moved * (radius / jnp.maximum(_tree.norms(moved, (1, 2)), tiny)) - p
  return jnp.where(u_norm == 0, 0, step)  # a NaN u stays NaN


def _warn_of_zero_leaves(params: Any) -> None:
  """Warns of leaves that start at zero: R = 0, so they stay zero for good
  (a zero-initialised output projection, as modded-nanogpt's). Only concrete
  parameters are looked at (an abstract or traced init is not)."""
  paths_leaves = [(path, p) for path, p in jax.tree_util.tree_leaves_with_path(params)
                  if isinstance(p, jax.Array) and not isinstance(p, jax.core.Tracer)
                  and p.size]
  zero = jax.device_get([jnp.all(p == 0) for _, p in paths_leaves])
  names = [jax.tree_util.keystr(path) for (path, _), z in zip(paths_leaves, zero) if z]
  if names:
    warnings.warn(
        f"hyperball_step: {', '.join(names)} start(s) at zero, so their norm R is 0"
        " and they never move (the step keeps each matrix at its initial norm):"
        " initialise them non-zero or route them to another transform",
        stacklevel=_validate.user_stacklevel())


def hyperball_step(
    learning_rate: Union[float, optax.Schedule],
    *,
    matrix_view: Optional[_matrix_view.MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""The last step of a chain: moves each matrix by η_t·R along −u, back onto its sphere.

  .. math::
    p' = R\,\operatorname{N}\!\left(p - η_t R\,\operatorname{N}(u)\right),\quad
    \operatorname{N}(x) = x/\lVert x\rVert_F,\quad R = \lVert p\rVert_F,
    \qquad u \leftarrow p' - p

  per matrix of each leaf's matrix view (each layer of a stack on its own
  sphere), per whole leaf for leaves without one. It replaces both the
  learning-rate scale and the weight decay: the norm of every matrix stays
  where it started and the step has length ηR before the projection back
  onto the sphere, which turns p by θ with tan θ = η sin φ / (1 + η cos φ),
  φ the angle between −u and p: tan θ = η when u ⟂ p, less when the step
  points outwards, more when it points inwards. R is the current
  norm, as in Marin's ``adamh.py`` / ``muonh.py``; it stays the initial norm
  (the paper's R = ‖W₀‖_F) up to round-off. A zero u, or a zero matrix
  (R = 0), gives a zero update. Comes after the direction transforms (Adam,
  Muon's orthogonalization); their scale does not matter, only their
  direction.

  Args:
    learning_rate: η, the step relative to the radius, a non-negative number
      or a schedule of the step count.
    matrix_view: the matrix-view rule; default ``gt.flax_matrix_view``.

  Returns:
    An ``optax.GradientTransformation`` with state ``HyperballStepState``;
    ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import transforms as gt
    >>> w = jnp.array([[3.0, 4.0]])
    >>> tx = gt.hyperball_step(0.1)
    >>> u, _ = tx.update(jnp.array([[1.0, 0.0]]), tx.init(w), w)
    >>> float(jnp.linalg.norm(optax.apply_updates(w, u)))
    5.0

  Reference: Wen, Dang, Lyu, Ma & Liang, "Fantastic Pretraining Optimizers
  and Where to Find Them II: Hyperball Optimization", arXiv 2606.16899, 2026;
  marin-community/marin ``levanter/optim/adamh.py`` (``scale_invariant_update``).
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)

  def init_fn(params):
    _warn_of_zero_leaves(params)
    return HyperballStepState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "hyperball_step needs the parameters: call update(updates, state, params)")
    eta = _tree.resolve_schedule(learning_rate, state.count)
    leaves, treedef = jax.tree.flatten(updates)
    views = _matrix_view.views_of(updates, matrix_view)

    def leaf(u, p, view):
      # eta enters as an argument: Explicit-typed closures are refused.
      return _sharding.in_auto_axes(
          lambda u, p, eta: on_leaf(u, p, eta, view), u, p, eta, like=u)

    def on_leaf(u, p, eta, view):
      dtype = _tree.compute_dtype(u)
      u_, p_ = u.astype(dtype), p.astype(dtype)
      if view is None:
        step = _sphere_step(u_.reshape(1, 1, -1), p_.reshape(1, 1, -1), eta)
        return step.reshape(u.shape).astype(u.dtype)
      step = _sphere_step(view.to_matrices(u_), view.to_matrices(p_), eta)
      return view.from_matrices(step, u.shape).astype(u.dtype)

    out = [leaf(u, p, v) for u, p, v in
           zip(leaves, treedef.flatten_up_to(params), views)]
    return treedef.unflatten(out), HyperballStepState(optax.safe_increment(state.count))

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))
