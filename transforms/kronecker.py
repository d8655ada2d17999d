"""Kronecker-factored preconditioning (Shampoo): statistics, blocks, the update.

The inverse roots are ``gradtx.transforms.matrix_roots``; grafting, which
Shampoo pairs with it, is ``gradtx.transforms.graft``. On an Explicit mesh a
sharded matrix gradient is gathered for the products with its factors (which
are replicated) and its update resharded like it (``_sharding``).

A matrix gradient G (m × n) is preconditioned by two Kronecker factors,
L = Σ GGᴴ (m × m) and R = Σ GᴴG (n × n), instead of one mn × mn matrix. How a
leaf becomes matrices is its matrix view (``gt.flax_matrix_view`` by
default: a conv kernel (kh, kw, in, out) → (kh·kw·in, out), a
MultiHeadAttention query kernel (in, heads, head_dim) → (in, heads·head_dim),
a view's batch axes → separate matrices); a leaf without one (biases, norm
scales, 1-D leaves) gets a diagonal (AdaGrad-style) preconditioner. Then
(``block_layout``):

* a side longer than ``max_precondition_dim`` gets the identity (it is not
  preconditioned); when neither side is preconditioned the leaf is diagonal;
* a preconditioned side longer than ``block_size`` is cut into
  ⌈d/block_size⌉ equal blocks (zero-padded by fewer rows than there are
  blocks); each block has its own L and R. Zero padding is exact: a padded row
  of G only meets the padded corner of L, which never reaches real rows.

State arrays hold one leading axis of blocks, so every root computation of a
leaf is one batched call.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.transforms import matrix_view as _matrix_view
from gradtx.transforms.matrix_roots import ROOT_METHODS, inverse_pth_root, matmul, transpose
from gradtx.transforms.matrix_view import MatrixView, MatrixViewRule


class BlockLayout(NamedTuple):
  """How one leaf is cut into equal blocks (static, from its view and shape)."""

  view: MatrixView
  matrices: int
  rows: int
  cols: int
  row_blocks: int
  col_blocks: int
  left: bool  # rows are preconditioned (by L)
  right: bool  # columns are preconditioned (by R)

  @property
  def block_rows(self) -> int:
    return -(-self.rows // self.row_blocks)

  @property
  def block_cols(self) -> int:
    return -(-self.cols // self.col_blocks)

  @property
  def num_blocks(self) -> int:
    return self.matrices * self.row_blocks * self.col_blocks

  @property
  def exponent(self) -> int:
    """p of L^{-1/p}: 4 with two factors, 2 with one (−1/(2k), k factors)."""
    return 2 * (int(self.left) + int(self.right))


def block_layout(
    view: Optional[MatrixView],
    shape: tuple[int, ...],
    block_size: Optional[int],
    max_precondition_dim: int,
) -> Optional[BlockLayout]:
  """The blocks of a leaf, or ``None`` for a diagonally preconditioned leaf."""
  if view is None:
    return None
  matrices, rows, cols = view.matrix_shape(shape)
  left, right = rows <= max_precondition_dim, cols <= max_precondition_dim
  if not (left or right):
    return None

  def cuts(dim, preconditioned):
    return -(-dim // block_size) if preconditioned and block_size else 1

  return BlockLayout(view, matrices, rows, cols, cuts(rows, left),
                     cuts(cols, right), left, right)


def layouts_of(
    tree, matrix_view: Optional[MatrixViewRule], block_size: Optional[int],
    max_precondition_dim: int,
) -> list:
  """The ``BlockLayout`` (or ``None``) of every leaf of ``tree``, as a list."""
  return [
      block_layout(view, tuple(jnp.shape(leaf)), block_size, max_precondition_dim)
      for view, leaf in zip(_matrix_view.views_of(tree, matrix_view),
                            jax.tree.leaves(tree))
  ]


def to_blocks(x: jax.Array, layout: BlockLayout) -> jax.Array:
  """A leaf as its stack of (num_blocks, block_rows, block_cols) blocks."""
  br, bc = layout.block_rows, layout.block_cols
  x = layout.view.to_matrices(x)
  x = jnp.pad(x, ((0, 0), (0, layout.row_blocks * br - layout.rows),
                  (0, layout.col_blocks * bc - layout.cols)))
  x = x.reshape(layout.matrices, layout.row_blocks, br, layout.col_blocks, bc)
  return x.swapaxes(2, 3).reshape(layout.num_blocks, br, bc)


def from_blocks(
    blocks: jax.Array, layout: BlockLayout, shape: tuple[int, ...]
) -> jax.Array:
  """Inverse of ``to_blocks``: drops the padding, restores ``shape``."""
  br, bc = layout.block_rows, layout.block_cols
  x = blocks.reshape(layout.matrices, layout.row_blocks, layout.col_blocks, br, bc)
  x = x.swapaxes(2, 3).reshape(
      layout.matrices, layout.row_blocks * br, layout.col_blocks * bc)
  return layout.view.from_matrices(x[:, : layout.rows, : layout.cols], shape)


class KroneckerPreconditionState(NamedTuple):
  """State of ``kronecker_precondition``; each field a tree structured like the params.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    left_stats: per leaf, the L statistics of its blocks, (blocks, r, r) in at
      least float32; ``optax.MaskedNode()`` where the rows are not
      preconditioned.
    right_stats: the R statistics, (blocks, c, c), or ``MaskedNode()``.
    left_root: L^{-1/p} as last recomputed, shaped like ``left_stats``.
    right_root: R^{-1/p}, shaped like ``right_stats``.
    diag_stats: for diagonal leaves (no matrix view, or both sides too long)
      the decayed sum of |g|², shaped like the leaf; else ``MaskedNode()``.
  """

  count: jax.Array
  left_stats: optax.Updates
  right_stats: optax.Updates
  left_root: optax.Updates
  right_root: optax.Updates
  diag_stats: optax.Updates


def kronecker_precondition(
    *,
    precondition_b2: float = 1.0,
    damping: float = 1e-6,
    precondition_every: int = 1,
    block_size: Optional[int] = 256,
    max_precondition_dim: int = 4096,
    root_method: str = "eigh",
    relative_damping: float = 0.0,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Shampoo's Kronecker-factored preconditioner, per block of every matrix leaf.

  .. math::
    L_t = β L_{t-1} + G_t G_t^H,\quad R_t = β R_{t-1} + G_t^H G_t,\quad
    u_t = (L_τ + δI)^{-1/4}\, G_t\, (R_τ + δI)^{-1/4}

  with β = ``precondition_b2``, :math:`L_0 = R_0 = 0`, δ = ``damping`` +
  ``relative_damping``·λ_max (``inverse_pth_root``) and τ the last step at
  which the roots were recomputed: steps 1, 1 + k, 1 + 2k, ... for k =
  ``precondition_every`` (one ``lax.cond``; in between, a step costs the
  statistics' two matmuls and the two products with the stored roots).
  β = 1, k = 1 is Algorithm 1 of Gupta et al. (statistics started at δI).
  With one side identity (longer than ``max_precondition_dim``) the other
  root is :math:`-1/2`; diagonal leaves get
  :math:`u = g / \sqrt{β s + |g|^2 + δ}` element-wise. How leaves become
  blocks is described in the module docstring. A root that comes out
  non-finite is discarded and the previous one kept.

  Args:
    precondition_b2: β, the decay of the statistics, in [0, 1]; 1 is
      AdaGrad's sum.
    damping: δ, the absolute ridge (Algorithm 1's εI), >= 0.
    precondition_every: recompute the roots every this many steps, >= 1.
    block_size: longest side of a block, >= 1; ``None``: never cut.
    max_precondition_dim: sides longer than this get the identity, >= 1.
    root_method: ``"eigh"`` (float32 or wider eigendecomposition, with
      pseudo-inverse truncation) or ``"newton"`` (coupled Newton iteration,
      matmul-only; give it ``damping > 0`` or ``relative_damping > 0``).
    relative_damping: ridge relative to each block's largest eigenvalue
      (distributed_shampoo uses 1e-6), >= 0.
    matrix_view: the matrix-view rule (see ``gt.flax_matrix_view``).

  Returns:
    An ``optax.GradientTransformation`` with state
    ``KroneckerPreconditionState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.kronecker_precondition(damping=0.0)
    >>> g = jnp.array([[3.0, 0.0], [0.0, 2.0]])
    >>> u, _ = tx.update(g, tx.init(g))  # L^{-1/4} G R^{-1/4}: sign(G) here
    >>> u.round(4)
    Array([[1., 0.],
           [0., 1.]], dtype=float32)

  Reference: Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor
  Optimization", ICML 2018; Anil et al., "Scalable Second Order Optimization
  for Deep Learning", 2020 (blocking, grafting, amortised roots).
  """
  _validate.check_in_range(
      "precondition_b2", precondition_b2, 0.0, 1.0, high_inclusive=True)
  _validate.check_non_negative("damping", damping)
  _validate.check_non_negative("relative_damping", relative_damping)
  precondition_every = _validate.check_integer(
      "precondition_every", precondition_every
  )
  if block_size is not None:
    block_size = _validate.check_integer("block_size", block_size)
  max_precondition_dim = _validate.check_integer(
      "max_precondition_dim", max_precondition_dim
  )
  if root_method not in ROOT_METHODS:
    raise ValueError(
        f"root_method must be one of {ROOT_METHODS}, got {root_method!r}"
    )
  beta = precondition_b2

  def layouts(tree):
    return layouts_of(tree, matrix_view, block_size, max_precondition_dim)

  def init_fn(params):
    def leaf(path, p):
      # Every field gets its own buffer, so that the state can be donated.
      dtype = _tree.compute_dtype(p)
      layout = block_layout(_matrix_view.view_of(path, p, matrix_view),
                            tuple(jnp.shape(p)), block_size, max_precondition_dim)
      if layout is None:
        return (optax.MaskedNode(),) * 4
      nb, br, bc = layout.num_blocks, layout.block_rows, layout.block_cols
      side = lambda on, d: jnp.zeros((nb, d, d), dtype) if on else optax.MaskedNode()
      return (side(layout.left, br), side(layout.right, bc),
              side(layout.left, br), side(layout.right, bc))

    def diagonal(path, p):
      view = _matrix_view.view_of(path, p, matrix_view)
      return block_layout(view, tuple(jnp.shape(p)), block_size,
                          max_precondition_dim) is None

    diag = _tree.zeros_where(
        params, diagonal, lambda p: _tree.real_dtype(_tree.compute_dtype(p)))
    return KroneckerPreconditionState(
        jnp.zeros([], jnp.int32),
        *_tree.map_statistics(leaf, 4, params, with_path=True), diag)

  def accumulate(g, layout, left, right, diag):
    x = g.astype(_tree.compute_dtype(g))
    if layout is None:
      return left, right, beta * diag + _tree.abs_sq(x)
    x = to_blocks(_sharding.gather(x), layout)
    if layout.left:
      left = beta * left + matmul(x, transpose(x))
    if layout.right:
      right = beta * right + matmul(transpose(x), x)
    return left, right, diag

  def recompute(layouts_, left_stats, right_stats, left_roots, right_roots):
    def leaf(layout, left, right, left_root, right_root):
      def root(stats, old, preconditioned):
        if not preconditioned:
          return old
        new = inverse_pth_root(
            stats, layout.exponent, root_method=root_method, damping=damping,
            relative_damping=relative_damping,
        )
        finite = jnp.isfinite(new).all((-2, -1), keepdims=True)
        return jnp.where(finite, new, old)

      if layout is None:
        return left_root, right_root
      return (root(left, left_root, layout.left),
              root(right, right_root, layout.right))

    outputs = [leaf(*args) for args in zip(
        layouts_, left_stats, right_stats, left_roots, right_roots)]
    return [o[0] for o in outputs], [o[1] for o in outputs]

  def precondition(g, layout, left_root, right_root, diag):
    x = g.astype(_tree.compute_dtype(g))
    if layout is None:
      s = diag + damping
      u = jnp.where(s > 0, x * jax.lax.rsqrt(jnp.where(s > 0, s, 1)), 0)
      return u.astype(g.dtype)
    blocks = to_blocks(_sharding.gather(x), layout)
    if layout.left:
      blocks = left_root @ blocks
    if layout.right:
      blocks = blocks @ right_root
    u = from_blocks(blocks, layout, g.shape).astype(g.dtype)
    return _sharding.reshard_like(u, g)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    leaves, treedef = jax.tree.flatten(updates)
    layouts_ = layouts(updates)
    fields = [treedef.flatten_up_to(f) for f in (
        state.left_stats, state.right_stats, state.left_root, state.right_root,
        state.diag_stats)]
    stats = [accumulate(*args) for args in zip(
        leaves, layouts_, fields[0], fields[1], fields[4])]
    left, right, diag = ([s[i] for s in stats] for i in range(3))
    if precondition_every == 1:
      left_root, right_root = recompute(layouts_, left, right, *fields[2:4])
    else:
      left_root, right_root = jax.lax.cond(
          (count - 1) % precondition_every == 0,
          lambda *a: recompute(layouts_, *a),
          lambda left, right, lr, rr: (lr, rr),
          left, right, fields[2], fields[3],
      )
    u = [precondition(*args) for args in zip(
        leaves, layouts_, left_root, right_root, diag)]
    unflatten = treedef.unflatten
    return unflatten(u), KroneckerPreconditionState(
        count, unflatten(left), unflatten(right), unflatten(left_root),
        unflatten(right_root), unflatten(diag))

  return optax.GradientTransformation(init_fn, update_fn)
