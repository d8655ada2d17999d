"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner.

Leaves become matrices as in ``kronecker_precondition`` (``matrix_view``; a
side longer than ``max_precondition_dim`` keeps the identity basis, and a leaf
with no preconditioned side, 1-D leaves included, is plain Adam); there is no
blocking, as in the reference code.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx.transforms import _sharding
from gradtx.transforms import _tree
from gradtx.transforms import _validate
from gradtx.transforms import kronecker as kron
from gradtx.transforms import matrix_roots as roots

REFRESH_METHODS = ("qr", "eigh")


class ScaleBySoapState(NamedTuple):
  """State of ``scale_by_soap``; each field but ``count`` a tree like the params.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: Adam's first moment, in eigenbasis coordinates, shaped like the leaf
      (``mu_dtype``).
    nu: Adam's second moment, in eigenbasis coordinates (``nu_dtype``).
    left_stats: the EMA of GGᵀ, (1, m, m) in at least float32, or empty.
    right_stats: the EMA of GᵀG, (1, n, n), or empty.
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
  """Q_Lᵀ X Q_R into the eigenbasis, or Q_L X Q_Rᵀ back (``back=True``)."""
  if layout.left:
    x = roots.matmul(left if back else roots.transpose(left), x)
  if layout.right:
    x = roots.matmul(x, roots.transpose(right) if back else right)
  return x


def _eigenvectors(stats):
  return roots.unbatched_on_cpu(jnp.linalg.eigh, stats)[1][..., ::-1]


def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_b2: Optional[float] = None,
    eps: float = 1e-8,
    precondition_every: int = 10,
    *,
    max_precondition_dim: int = 10000,
    refresh: str = "qr",
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adam in the slowly refreshed eigenbasis of Shampoo's L and R.

  .. math::
    G' = Q_L^T G_t Q_R,\quad m_t = β_1 m_{t-1} + (1-β_1) G',\quad
    v_t = β_2 v_{t-1} + (1-β_2) G'^2,\\
    u_t = \frac{\sqrt{1-β_2^k}}{1-β_1^k}\, Q_L \frac{m_t}{\sqrt{v_t} + ε} Q_R^T,
    \quad L \leftarrow β_s L + (1-β_s) G_t G_t^T,\quad
    R \leftarrow β_s R + (1-β_s) G_t^T G_t

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
    shampoo_b2: decay β_s of L and R, in [0, 1); ``None``: ``b2``.
    eps: added to √v, >= 0.
    precondition_every: refresh the basis every this many steps, >= 1.
    max_precondition_dim: sides longer than this keep the identity, >= 1.
    refresh: ``"qr"`` or ``"eigh"``.
    mu_dtype: dtype of the stored first moment (default: the parameter's).
    nu_dtype: dtype of the stored second moment (default: the parameter's).

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
  if shampoo_b2 is not None:
    _validate.check_decay("shampoo_b2", shampoo_b2)
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
  stats_b2 = b2 if shampoo_b2 is None else shampoo_b2
  layout_of = lambda x: kron.block_layout(x.shape, None, max_precondition_dim)

  def init_fn(params):
    def leaf(p):
      # Every field gets its own buffer, so that the state can be donated.
      dtype, layout = _tree.compute_dtype(p), layout_of(p)
      left = right = (0,)
      if layout is not None and layout.left:
        left = (1, layout.rows, layout.rows)
      if layout is not None and layout.right:
        right = (1, layout.cols, layout.cols)
      return tuple(jnp.zeros(s, dtype) for s in (left, right, left, right))

    return ScaleBySoapState(
        jnp.zeros([], jnp.int32), _tree.zeros_like_tree(params, mu_dtype),
        _tree.zeros_like_tree(params, nu_dtype),
        *_tree.map_statistics(leaf, 4, params),
    )

  def adam_step(count, g, mu, nu, left_basis, right_basis):
    dtype, layout = _tree.compute_dtype(g), layout_of(g)
    x, m, v = (a.astype(dtype) for a in (g, mu, nu))
    if layout is not None:
      x, m, v = (kron.to_blocks(_sharding.gather(a), layout) for a in (x, m, v))
      x = _rotate(x, left_basis, right_basis, layout)
    m_new = b1 * m + (1 - b1) * x
    v_new = b2 * v + (1 - b2) * x * x
    steps = jnp.maximum(count - 1, 1).astype(dtype)
    correction = jnp.sqrt(1 - b2**steps) / (1 - b1**steps)
    u = correction * m_new / (jnp.sqrt(v_new) + eps)
    if layout is not None:
      u = _rotate(u, left_basis, right_basis, layout, back=True)
      unblock = lambda a: _sharding.reshard_like(
          kron.from_blocks(a, layout, g.shape), g)
      u, m_new, v_new = unblock(u), unblock(m_new), unblock(v_new)
    first = count == 1  # builds the basis only
    return (
        jnp.where(first, 0, u).astype(g.dtype),
        jnp.where(first, mu, m_new.astype(mu.dtype)),
        jnp.where(first, nu, v_new.astype(nu.dtype)),
    )

  def accumulate(g, left, right):
    layout = layout_of(g)
    if layout is None:
      return left, right
    x = kron.to_blocks(_sharding.gather(g.astype(_tree.compute_dtype(g))), layout)
    if layout.left:
      left = stats_b2 * left + (1 - stats_b2) * roots.matmul(x, roots.transpose(x))
    if layout.right:
      right = stats_b2 * right + (1 - stats_b2) * roots.matmul(roots.transpose(x), x)
    return left, right

  def refresh_side(stats, basis, v, axis):
    estimates = jnp.sum(basis * roots.matmul(stats, basis), axis=-2)
    order = jnp.argsort(-estimates, axis=-1)
    index = order[..., :, None] if axis == -2 else order[..., None, :]
    v = jnp.take_along_axis(v, index, axis)
    if refresh == "eigh":
      return _eigenvectors(stats), v
    basis = jnp.take_along_axis(basis, order[..., None, :], -1)
    power_step = roots.matmul(stats, basis)
    return roots.unbatched_on_cpu(jnp.linalg.qr, power_step)[0], v

  def new_basis(g, left, right, left_basis, right_basis, mu, nu, *, first):
    layout = layout_of(g)
    if layout is None:
      return left_basis, right_basis, mu, nu
    if first:
      return (_eigenvectors(left) if layout.left else left_basis,
              _eigenvectors(right) if layout.right else right_basis, mu, nu)
    dtype = _tree.compute_dtype(g)
    m, v = (kron.to_blocks(_sharding.gather(a.astype(dtype)), layout)
            for a in (mu, nu))
    m = _rotate(m, left_basis, right_basis, layout, back=True)
    if layout.left:
      left_basis, v = refresh_side(left, left_basis, v, -2)
    if layout.right:
      right_basis, v = refresh_side(right, right_basis, v, -1)
    m = _rotate(m, left_basis, right_basis, layout)
    unblock = lambda a, like: _sharding.reshard_like(
        kron.from_blocks(a, layout, g.shape).astype(like.dtype), like)
    return left_basis, right_basis, unblock(m, mu), unblock(v, nu)

  def update_fn(updates, state, params=None):
    del params
    count = _tree.increment(state.count)
    u, mu, nu = _tree.map_leaves(
        lambda *leaves: adam_step(count, *leaves), 3, updates, state.mu,
        state.nu, state.left_basis, state.right_basis,
    )
    left, right = _tree.map_leaves(
        accumulate, 2, updates, state.left_stats, state.right_stats
    )

    def basis_branch(first):
      def branch(operands):
        return _tree.map_leaves(
            lambda *leaves: new_basis(*leaves, first=first), 4, *operands
        )
      return branch

    keep = lambda operands: operands[3:]
    index = jnp.where(
        count == 1, 0, jnp.where((count - 1) % precondition_every == 0, 1, 2)
    )
    operands = (updates, left, right, state.left_basis, state.right_basis, mu, nu)
    left_basis, right_basis, mu, nu = jax.lax.switch(
        index, (basis_branch(True), basis_branch(False), keep), operands
    )
    return u, ScaleBySoapState(
        count, mu, nu, left, right, left_basis, right_basis
    )

  return optax.GradientTransformation(init_fn, update_fn)
