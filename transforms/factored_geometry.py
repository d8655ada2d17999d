"""A matrix transform run in the diagonal geometry learnt from factored g² statistics.

Sorting optimizers by element-wise / matrix-wise update and fixed / adaptive
geometry leaves one cell, "matrix-wise, adaptive", without a classical
member; a natural candidate is steepest descent under the norm
‖Φ‖_V = Tr(ΦᵀVΦ)^{1/2} with V learnt from second-order statistics of the
matrix gradients. ``in_factored_geometry`` builds it from two existing
parts: Adafactor's row and column statistics learn diagonal metrics D_L,
D_R (rows + cols numbers per matrix), and any matrix transform, e.g.
Newton–Schulz, runs in the coordinates where that metric is the identity.
Off a device mesh the same-shape matrices of a tree are whitened and mapped
back in one stacked call per shape (``block_stacks.map_alike``); on a mesh
each leaf is, where it lives.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import block_stacks
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule
from gradtx.transforms.normalize import frobenius_norms, statistics_dtype


def _scale(r, c, count, b2, eps):
  return jax.lax.rsqrt(_metric(r, count, b2, eps) * _metric(c, count, b2, eps))


def _whiten(u, r, c, count, view, b2, eps):
  """u in the factored metric, and the row and column statistics updated."""
  m = view.to_matrices(u.astype(_tree.compute_dtype(u)))
  sq = _tree.abs_sq(m).astype(r.dtype)
  r = (b2 * r + (1 - b2) * jnp.mean(sq, axis=-1, keepdims=True)).astype(r.dtype)
  c = (b2 * c + (1 - b2) * jnp.mean(sq, axis=-2, keepdims=True)).astype(c.dtype)
  scale = _scale(r, c, count, b2, eps)
  return view.from_matrices(m * scale.astype(m.dtype), u.shape).astype(u.dtype), r, c


def _map_back(o, r, c, count, view, b2, eps):
  """The inner direction mapped back by the same metric, at its own norm."""
  m = view.to_matrices(o.astype(_tree.compute_dtype(o)))
  mapped = m * _scale(r, c, count, b2, eps).astype(m.dtype)
  norm = frobenius_norms(mapped)
  mapped = mapped * (frobenius_norms(m) / (jnp.where(norm == 0, 1, norm) + 1e-30))
  return view.from_matrices(mapped, o.shape).astype(o.dtype)


class InFactoredGeometryState(NamedTuple):
  """State of ``in_factored_geometry``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    nu_row: per matrix leaf, the EMA of u² averaged over the columns, shape
      (matrices, rows, 1) of its matrix view, float32 (float64 for float64
      leaves); ``None`` without a view.
    nu_col: the EMA averaged over the rows, (matrices, 1, cols).
    inner_state: the state of the wrapped transform.
  """

  count: jax.Array
  nu_row: optax.Updates
  nu_col: optax.Updates
  inner_state: optax.OptState


def _metric(nu: jax.Array, count: jax.Array, b2: float, eps: float) -> jax.Array:
  """The root of the debiased statistic over its mean, plus eps: dimensionless."""
  nu_hat = nu / _tree.bias_correction(b2, count, nu.dtype)
  # _tree.root: a zero row or column (a dead unit) has a finite derivative.
  mean = jnp.mean(nu_hat, axis=(-2, -1), keepdims=True)
  # (a zero statistic: 0/(0 + 1e-30) has the derivative 0·∞, (1e-30)² underflowing)
  return _tree.root(nu_hat / (jnp.where(mean == 0, 1, mean) + 1e-30)) + eps


def in_factored_geometry(
    inner: optax.GradientTransformation,
    *,
    b2: float = 0.95,
    eps: float = 1e-3,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Runs ``inner`` in the geometry of diagonal metrics learnt from u², rows and columns.

  For each matrix U of a leaf's matrix view, with running row and column
  means of U⊙U (Adafactor's factored statistics, Shazeer & Stern 2018):

  .. math::
    r_t = b_2 r_{t-1} + (1-b_2)\operatorname{mean}_j U^2,\quad
    c_t = b_2 c_{t-1} + (1-b_2)\operatorname{mean}_i U^2,\quad
    D_L = \Big(\frac{\hat r}{\overline{\hat r}}\Big)^{1/2} + ε,\
    D_R = \Big(\frac{\hat c}{\overline{\hat c}}\Big)^{1/2} + ε

  (hats: divided by 1 − b₂ᵗ, bars: means), the update is

  .. math::
    O = \mathrm{inner}\big(D_L^{-1/2} U D_R^{-1/2}\big),\qquad
    Φ = D_L^{-1/2} O D_R^{-1/2} \cdot \frac{\|O\|_F}{\|D_L^{-1/2} O D_R^{-1/2}\|_F}.

  With ``inner`` = msign (``gt.orthogonalize_newton_schulz``) this is the
  exact steepest-descent direction under the norm
  ‖Φ‖ = ‖D_L^{1/2} Φ D_R^{1/2}‖_op: substituting Ψ = D_L^{1/2}ΦD_R^{1/2}
  turns ⟨U, Φ⟩ into ⟨D_L^{-1/2}UD_R^{-1/2}, Ψ⟩, maximised over ‖Ψ‖_op ≤ 1
  by Ψ = msign(·). It is the adaptive norm ‖Φ‖_V = Tr(ΦᵀVΦ)^{1/2} with the
  trace (Frobenius) norm replaced by Muon's spectral one and V learnt,
  diagonal, from second moments. The metric is the root of the second moment, as in Adam, which is
  steepest descent under ‖Φ‖_V with V = diag(√v) (the first power
  would apply the statistics twice: on a rank-one U = abᵀ it gives steps
  ∝ 1/(|a_i||b_j|), while the root gives sign(a_i b_j), Adam's first step).
  D_L = D_R = I gives Muon back. The final factor keeps the inner's
  Frobenius norm, so the step size (and the learning rate) stays the
  inner's; ε bounds the metric's condition number by about 1/ε. Leaves
  without a matrix view go to ``inner`` unchanged.

  Args:
    inner: the matrix transform to run in the learnt geometry (stateless or
      not; it sees the whitened updates).
    b2: EMA decay of the row and column statistics, in [0, 1).
    eps: added to the mean-normalized metrics, >= 0.
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).

  Returns:
    An ``optax.GradientTransformation`` with state ``InFactoredGeometryState``.

  Reference: gradtx's construction (measured: see benchmarks/RESULTS.md,
  "Fourth quadrant"); Shazeer & Stern, "Adafactor", ICML 2018 (the
  statistics); Jordan et al. 2024 (Muon); Bernstein & Newhouse, "Old
  Optimizer, New Norm: An Anthology", arXiv 2409.20325 (steepest descent
  in a norm).
  """
  _validate.check_transformation("inner", inner)
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)

  def init_fn(params):
    def statistics(p, view):
      num, rows, cols = view.matrix_shape(tuple(p.shape))
      dtype = statistics_dtype(p)
      return jnp.zeros((num, rows, 1), dtype), jnp.zeros((num, 1, cols), dtype)

    nu_row, nu_col = _matrix_view.map_view_statistics(statistics, 2, params, matrix_view)
    return InFactoredGeometryState(
        jnp.zeros([], jnp.int32), nu_row, nu_col, inner.init(params))

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "in_factored_geometry")
    count = optax.safe_increment(state.count)
    leaves, treedef = jax.tree.flatten(updates)
    views = _matrix_view.views_of(updates, matrix_view)
    statistics = _tree.statistics_structure(updates)
    rows_, cols_ = (statistics.flatten_up_to(t) for t in (state.nu_row, state.nu_col))
    matrices = [i for i, view in enumerate(views) if view is not None]
    of_matrices = lambda xs: [xs[i] for i in matrices]
    traced = _tree.traced_hyperparameters(b2=b2, eps=eps)
    hyper = lambda h: ({"b2": b2, "eps": eps} | h).values()

    def whiten(view):
      # On an Explicit mesh the view's reshapes may cross sharded axes: XLA
      # lays them out (traced values enter as arguments, not closures).
      return lambda u, r, c: _sharding.in_auto_axes(
          lambda u, r, c, n, h: _whiten(u, r, c, n, view, *hyper(h)), u, r, c, count, traced,
          like=(u, r, c))

    whitened, new_rows, new_cols = list(leaves), list(rows_), list(cols_)
    for i, (w, r, c) in zip(matrices, block_stacks.map_alike(
        whiten, of_matrices(views), *map(of_matrices, (leaves, rows_, cols_)))):
      whitened[i], new_rows[i], new_cols[i] = w, r, c
    inner_out, inner_state = inner.update(
        treedef.unflatten(whitened), state.inner_state, params)

    def map_back(view):
      return lambda o, r, c: _sharding.in_auto_axes(
          lambda o, r, c, n, h: _map_back(o, r, c, n, view, *hyper(h)), o, r, c, count, traced,
          like=o)

    out = treedef.flatten_up_to(inner_out)
    for i, o in zip(matrices, block_stacks.map_alike(
        map_back, of_matrices(views), *map(of_matrices, (out, new_rows, new_cols)))):
      out[i] = o
    return treedef.unflatten(out), InFactoredGeometryState(
        count, statistics.unflatten(new_rows), statistics.unflatten(new_cols), inner_state)

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))
