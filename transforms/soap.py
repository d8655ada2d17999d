"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner.

Leaves become matrices as in ``kronecker_precondition`` (their matrix view; a
side longer than ``max_precondition_dim`` keeps the identity basis, and a leaf
with no preconditioned side, or no view at all, is plain Adam); there is no
blocking, as in the reference code.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.transforms import kronecker as kron
from gradtx.transforms import matrix_roots as roots
from gradtx.transforms import matrix_view as _matrix_view
from gradtx.transforms import state_format
from gradtx.transforms.matrix_view import MatrixViewRule

REFRESH_METHODS = ("qr", "eigh")


class ScaleBySoapState(NamedTuple):
  """State of ``scale_by_soap``; each field but ``count`` a tree like the params.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: Adam's first moment, in eigenbasis coordinates, shaped like the leaf
      (``mu_dtype``).
    nu: Adam's second moment, in eigenbasis coordinates (``nu_dtype``).
    left_stats: the EMA of GGᴴ, (matrices, m, m) in at least float32, or
      ``optax.MaskedNode()``.
    right_stats: the EMA of GᴴG, (matrices, n, n), or ``MaskedNode()``.
    left_basis: Q_L, eigenvectors of ``left_stats`` by decreasing eigenvalue.
    right_basis: Q_R, likewise for ``right_stats``.
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  left_stats: optax.Updates
  right_stats: optax.Updates
  left_basis: optax.Updates
  right_basis: optax.Updates


def _rotate(x, left, right, layout, *, back=False):
  """Q_Lᴴ X Q_R into the eigenbasis, or Q_L X Q_Rᴴ back (``back=True``)."""
  if layout.left:
    x = roots.matmul(left if back else roots.transpose(left), x)
  if layout.right:
    x = roots.matmul(x, roots.transpose(right) if back else right)
  return x


def _eigenvectors(stats):
  return roots.unbatched_on_cpu(jnp.linalg.eigh, stats)[1][..., ::-1]


def scale_by_soap(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    precondition_b2: Optional[float] = None,
    precondition_every: int = 10,
    max_precondition_dim: int = 10000,
    refresh: str = "qr",
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Adam in the slowly refreshed eigenbasis of Shampoo's L and R.

  .. math::
    G' = Q_L^H G_t Q_R,\quad m_t = β_1 m_{t-1} + (1-β_1) G',\quad
    v_t = β_2 v_{t-1} + (1-β_2) |G'|^2,\\
    u_t = \frac{\sqrt{1-β_2^k}}{1-β_1^k}\, Q_L \frac{m_t}{\sqrt{v_t} + ε} Q_R^H,
    \quad L \leftarrow β_s L + (1-β_s) G_t G_t^H,\quad
    R \leftarrow β_s R + (1-β_s) G_t^H G_t

  with k = t − 1 Adam steps: as in the reference code, the first step only
  builds the statistics and their eigenbasis (``eigh``, columns by decreasing
  eigenvalue) and returns a zero update, so that the projection never uses the
  gradient it projects. After the Adam step of every k with
  k % ``precondition_every`` = 0 the basis is refreshed from the updated
  statistics: its columns are sorted by the estimated eigenvalues
  :math:`\mathrm{diag}(Q^T L Q)` (v is permuted alike), then
  ``refresh="qr"``: Q ← qr(L Q), one power-iteration step (the paper's);
  ``"eigh"``: Q ← eigenvectors of L. The first moment is rotated into the new
  basis, :math:`m \leftarrow Q_{new}^T Q\, m\, Q^T Q_{new}` per side; v is
  only permuted (the paper's approximation). ε sits outside the root and the
  bias correction is folded into the step, as in the reference.

  Args:
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: added to √v, >= 0.
    precondition_b2: decay β_s of L and R, in [0, 1); ``None``: ``b2``
      (the reference's ``shampoo_beta``).
    precondition_every: refresh the basis every this many steps, >= 1.
    max_precondition_dim: sides longer than this keep the identity, >= 1.
    refresh: ``"qr"`` or ``"eigh"``.
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    nu_dtype: storage of the second moment, as in ``scale_by_adam``.
    matrix_view: the matrix-view rule (see ``gt.flax_matrix_view``).

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleBySoapState``.

  Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using
  Adam", ICLR 2025 (arXiv 2409.11321); github.com/nikhilvyas/SOAP. Departures:
  tensors of ndim ≥ 3 are preconditioned as their matrix view rather than per
  axis; the reference rotates m back and forth at every step, here only when
  the basis changes (the same in exact arithmetic).
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  if precondition_b2 is not None:
    _validate.check_decay("precondition_b2", precondition_b2)
  _validate.check_non_negative("eps", eps)
  precondition_every = _validate.check_integer(
      "precondition_every", precondition_every
  )
  max_precondition_dim = _validate.check_integer(
      "max_precondition_dim", max_precondition_dim
  )
  if refresh not in REFRESH_METHODS:
    raise ValueError(
        f"refresh must be one of {REFRESH_METHODS}, got {refresh!r}"
    )
  stats_b2 = b2 if precondition_b2 is None else precondition_b2
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)

  def layouts(tree):
    return kron.layouts_of(tree, matrix_view, None, max_precondition_dim)

  def init_fn(params):
    def leaf(path, p):
      # Every field gets its own buffer, so that the state can be donated.
      dtype = _tree.compute_dtype(p)
      view = _matrix_view.view_of(path, p, matrix_view)
      layout = kron.block_layout(view, tuple(jnp.shape(p)), None, max_precondition_dim)
      if layout is None:
        return (optax.MaskedNode(),) * 4
      side = lambda on, d: (jnp.zeros((layout.matrices, d, d), dtype) if on
                            else optax.MaskedNode())
      left, right = (layout.left, layout.rows), (layout.right, layout.cols)
      return side(*left), side(*right), side(*left), side(*right)

    return ScaleBySoapState(
        jnp.zeros([], jnp.int32),
        state_format.zeros_like_tree(params, mu_format, signed=True),
        state_format.zeros_like_tree(params, nu_format, signed=False, real=True),
        *_tree.map_statistics(leaf, 4, params, with_path=True),
    )

  def adam_step(count, g, layout, mu, nu, left_basis, right_basis, seed):
    dtype = _tree.compute_dtype(g)
    real = _tree.real_dtype(dtype)
    x = g.astype(dtype)
    m, v = state_format.load(mu, dtype), state_format.load(nu, real)
    if layout is not None:
      x, m, v = (kron.to_blocks(_sharding.gather(a), layout) for a in (x, m, v))
      x = _rotate(x, left_basis, right_basis, layout)
    m_new = b1 * m + (1 - b1) * x
    v_new = b2 * v + (1 - b2) * _tree.abs_sq(x)
    steps = jnp.maximum(count - 1, 1).astype(real)
    correction = jnp.sqrt(1 - b2**steps) / (1 - b1**steps)
    u = correction * m_new / (jnp.sqrt(v_new) + eps)
    if layout is not None:
      u = _rotate(u, left_basis, right_basis, layout, back=True)
      unblock = lambda a: kron.from_blocks(a, layout, g.shape)
      u, m_new, v_new, m, v = (unblock(a) for a in (u, m_new, v_new, m, v))
    first = count == 1  # builds the basis only
    u = jnp.where(first, 0, u)
    m_new, v_new = jnp.where(first, m, m_new), jnp.where(first, v, v_new)
    if state_format.is_quantized(mu_format, nu_format):
      u, m_new, v_new = state_format.reset_non_finite(g, u, m_new, v_new)
    return (
        _sharding.reshard_like(u.astype(g.dtype), g),
        state_format.store(m_new, mu, mu_format, seed, stream=0),
        state_format.store(v_new, nu, nu_format, seed, stream=1),
    )

  def accumulate(g, layout, left, right):
    if layout is None:
      return left, right
    x = kron.to_blocks(_sharding.gather(g.astype(_tree.compute_dtype(g))), layout)
    if layout.left:
      left = stats_b2 * left + (1 - stats_b2) * roots.matmul(x, roots.transpose(x))
    if layout.right:
      right = stats_b2 * right + (1 - stats_b2) * roots.matmul(roots.transpose(x), x)
    return left, right

  def refresh_side(stats, basis, v, axis):
    estimates = jnp.real(jnp.sum(
        jnp.conj(basis) * roots.matmul(stats, basis), axis=-2))
    order = jnp.argsort(-estimates, axis=-1)
    index = order[..., :, None] if axis == -2 else order[..., None, :]
    v = jnp.take_along_axis(v, index, axis)
    if refresh == "eigh":
      return _eigenvectors(stats), v
    basis = jnp.take_along_axis(basis, order[..., None, :], -1)
    power_step = roots.matmul(stats, basis)
    return roots.unbatched_on_cpu(jnp.linalg.qr, power_step)[0], v

  def new_basis(g, layout, left, right, left_basis, right_basis, mu, nu, seed,
                *, first):
    if layout is None:
      return left_basis, right_basis, mu, nu
    if first:
      return (_eigenvectors(left) if layout.left else left_basis,
              _eigenvectors(right) if layout.right else right_basis, mu, nu)
    dtype = _tree.compute_dtype(g)
    m = kron.to_blocks(_sharding.gather(state_format.load(mu, dtype)), layout)
    v = kron.to_blocks(_sharding.gather(
        state_format.load(nu, _tree.real_dtype(dtype))), layout)
    m = _rotate(m, left_basis, right_basis, layout, back=True)
    if layout.left:
      left_basis, v = refresh_side(left, left_basis, v, -2)
    if layout.right:
      right_basis, v = refresh_side(right, right_basis, v, -1)
    m = _rotate(m, left_basis, right_basis, layout)
    unblock = lambda a: kron.from_blocks(a, layout, g.shape)
    return (left_basis, right_basis,
            state_format.store(unblock(m), mu, mu_format, seed, stream=2),
            state_format.store(unblock(v), nu, nu_format, seed, stream=3))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    treedef = jax.tree.structure(updates)
    layout_tree = treedef.unflatten(layouts(updates))
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)
    u, mu, nu = _tree.map_leaves(
        lambda *leaves: adam_step(count, *leaves), 3, updates, layout_tree,
        state.mu, state.nu, state.left_basis, state.right_basis, seeds,
    )
    left, right = _tree.map_leaves(
        accumulate, 2, updates, layout_tree, state.left_stats, state.right_stats
    )

    def basis_branch(first):
      def branch(operands):
        return _tree.map_leaves(
            lambda *leaves: new_basis(*leaves, first=first), 4, updates,
            layout_tree, *operands, seeds,
        )
      return branch

    keep = lambda operands: operands[2:]
    index = jnp.where(
        count == 1, 0, jnp.where((count - 1) % precondition_every == 0, 1, 2)
    )
    operands = (left, right, state.left_basis, state.right_basis, mu, nu)
    left_basis, right_basis, mu, nu = jax.lax.switch(
        index, (basis_branch(True), basis_branch(False), keep), operands
    )
    return u, ScaleBySoapState(
        count, mu, nu, left, right, left_basis, right_basis
    )

  return optax.GradientTransformation(init_fn, update_fn)
