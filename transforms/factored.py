"""Adafactor's factored second moments: row and column statistics of g²."""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import routing as _routing
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScaleByFactoredRmsState(NamedTuple):
  """State of ``scale_by_factored_rms``.

  For each factored leaf (see ``factored_axes``) ``nu_row`` holds the EMA of
  g² averaged over the column axis (the row axis and any other axes kept)
  and ``nu_col`` the EMA averaged over the row axis; ``nu`` is
  ``optax.MaskedNode()`` (so ``optax.tree_map_params`` sees ``nu`` as a
  masked copy of the params). For the other leaves ``nu`` is the full EMA of
  g², and ``nu_row`` and ``nu_col`` are ``None``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    nu_row: per-row second-moment statistics of factored leaves.
    nu_col: per-column second-moment statistics of factored leaves.
    nu: unfactored second moments of the remaining leaves.
  """

  count: jax.Array
  nu_row: optax.Updates
  nu_col: optax.Updates
  nu: optax.Updates


def factored_axes(
    shape: tuple, min_dim_size_to_factor: int = 128
) -> Optional[tuple[int, int]]:
  """The (row, column) axes to factor a leaf of ``shape`` over, or ``None``.

  The two largest axes, the largest being the column axis (for equal sizes,
  the later one), provided the smaller of the two has at least
  ``min_dim_size_to_factor`` elements; ``None`` for fewer than 2 dimensions.
  This is optax's choice, so that states and results line up with it.
  """
  if len(shape) < 2:
    return None
  row, col = (int(a) for a in np.argsort(shape, kind="stable")[-2:])
  return None if shape[row] < min_dim_size_to_factor else (row, col)


@_validate.checks_arguments
def scale_by_factored_rms(
    *,
    decay_rate: float = 0.8,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    eps: float = 1e-30,
    decay_offset: int = 0,
) -> optax.GradientTransformation:
  r"""Divides updates by Adafactor's (factored) root-mean-square estimate.

  With the step-dependent decay :math:`β_t = 1 - (t - t_0)^{-c}` (``c`` =
  ``decay_rate``, :math:`t_0` = ``decay_offset``; :math:`β_1 = 0`) and
  :math:`G = |g|^2 + ε`, a leaf factored over rows i and columns j keeps

  .. math::
    R_t = β_t R_{t-1} + (1-β_t) \operatorname{mean}_j G,\quad
    C_t = β_t C_{t-1} + (1-β_t) \operatorname{mean}_i G,\quad
    u_{ij} = g_{ij} \Big/
      \sqrt{R_{t,i}\, C_{t,j} / \operatorname{mean}_i R_{t,i}}

  (the rank-1 approximation of :math:`\hat v` that minimises the
  I-divergence), so its state costs rows + columns numbers instead of
  rows × columns. Other leaves keep the full
  :math:`v_t = β_t v_{t-1} + (1-β_t) G` and get :math:`u = g/\sqrt{v_t}`.
  Leaves with more than two axes are factored over their two largest axes,
  the others kept as batch axes (see ``factored_axes``).

  This is ``optax.scale_by_factored_rms``'s rule; arithmetic runs in at least
  float32 and the state is stored in the parameter's dtype, but float32 for
  float16 parameters (where ε and small g² round to 0, a zero-gradient row
  turned the whole leaf's update NaN, as in optax).

  Args:
    decay_rate: c, the exponent of the decay schedule, in [0, 1].
    factored: factor leaves with two or more axes at all.
    min_dim_size_to_factor: factor only when both factored axes have at
      least this many elements, an integer >= 1 (it decides shapes: list it
      in ``optax.inject_hyperparams``'s ``static_args``).
    eps: ε, added to g² (keeps zero-gradient rows finite), >= 0.
    decay_offset: :math:`t_0`, the step at which the schedule restarts (for
      fine-tuning), >= 0; before it the decay is 0 (optax's schedule is NaN
      there).

  Returns:
    An ``optax.GradientTransformation`` with state
    ``ScaleByFactoredRmsState``.

  Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
  Sublinear Memory Cost", ICML 2018 (Algorithms 4 and 5).
  """
  _validate.check_in_range(
      "decay_rate", decay_rate, 0.0, 1.0, high_inclusive=True
  )
  min_dim_size_to_factor = _validate.check_integer(
      "min_dim_size_to_factor", min_dim_size_to_factor)
  _validate.check_non_negative("eps", eps)
  decay_offset = _validate.check_integer("decay_offset", decay_offset, 0, traced=True)

  def axes_of(shape):
    return factored_axes(shape, min_dim_size_to_factor) if factored else None

  def statistics_dtype(p):
    # float16 holds neither ε (1e-30) nor a small g²: a zero or tiny gradient
    # row stored as 0 made rsqrt infinite and the whole leaf NaN (optax's too).
    dtype = _tree.real_dtype(_tree.dtype_of(p))
    return jnp.float32 if dtype == jnp.float16 else dtype

  def init_fn(params):
    def factors(p):
      shape, dtype = jnp.shape(p), statistics_dtype(p)
      axes = axes_of(shape)
      if axes is None:
        return None, None
      row, col = axes
      drop = lambda axis: shape[:axis] + shape[axis + 1 :]
      return jnp.zeros(drop(col), dtype), jnp.zeros(drop(row), dtype)

    def role(p):  # gt.describe's branch: the two axes the second moment is factored over
      shape, axes = jnp.shape(p), axes_of(jnp.shape(p))
      return None if axes is None else f"factored {shape[axes[0]]}x{shape[axes[1]]}"

    _routing.report_per_leaf(params, "roles", [role(p) for p in jax.tree.leaves(params)])
    unfactored = lambda _, p: axes_of(jnp.shape(p)) is None
    return ScaleByFactoredRmsState(
        jnp.zeros([], jnp.int32),
        *_tree.map_statistics(factors, 2, params),
        _tree.zeros_where(params, unfactored, statistics_dtype),
    )

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "scale_by_factored_rms")

    def leaf(g, v_row, v_col, v):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      t = jnp.maximum(state.count - decay_offset + 1, 1).astype(real)
      beta = 1 - t ** -jnp.asarray(decay_rate, real)
      g_ = g.astype(dtype)
      g2 = _tree.abs_sq(g_) + eps
      axes = axes_of(g.shape)
      # The step from the statistics as stored (state_format.stored_and_used):
      # from the wider values, a donated bf16 step copied every state buffer.
      if axes is None:
        v_stored, v_new = state_format.stored_and_used(
            beta * v.astype(real) + (1 - beta) * g2, v, None)
        u = g_ / jnp.sqrt(v_new)
        return u.astype(g.dtype), None, None, v_stored
      row, col = axes
      r = beta * v_row.astype(real) + (1 - beta) * jnp.mean(g2, axis=col)
      c = beta * v_col.astype(real) + (1 - beta) * jnp.mean(g2, axis=row)
      # Each factor keeps the sharding init gave it (explicit meshes).
      r_stored, r = state_format.stored_and_used(r, v_row, None)
      c_stored, c = state_format.stored_and_used(c, v_col, None)
      row_in_r = row - (row > col)
      row_mean = jnp.mean(r, axis=row_in_r, keepdims=True)
      u = (
          g_
          * jnp.expand_dims(jax.lax.rsqrt(r / row_mean), col)
          * jnp.expand_dims(jax.lax.rsqrt(c), row)
      )
      return u.astype(g.dtype), r_stored, c_stored, v

    u, nu_row, nu_col, nu = _tree.map_leaves(
        leaf, 4, updates, state.nu_row, state.nu_col, state.nu, once_per_shape=True
    )
    return u, ScaleByFactoredRmsState(
        optax.safe_increment(state.count), nu_row, nu_col, nu
    )

  return optax.GradientTransformation(init_fn, update_fn)
