"""Kronecker-factored preconditioning (Shampoo): statistics, blocks, the update.

The inverse roots are ``gradtx.transforms.matrix_roots``; grafting, which
Shampoo pairs with it, is ``gradtx.transforms.graft``. On an Explicit mesh a
sharded matrix gradient is gathered for the products with its factors (which
are replicated) and its update resharded like it (``_sharding``).

A matrix gradient G (m × n) is preconditioned by two Kronecker factors,
L = Σ GGᵀ (m × m) and R = Σ GᵀG (n × n), instead of one mn × mn matrix. How a
leaf becomes matrices is decided from its shape alone (``block_layout``):

* ``matrix_view``: ndim 2 is the matrix itself; ndim ≥ 3 splits the axes into
  a leading and a trailing group, at the first split that minimises the larger
  side (a conv kernel (kh, kw, in, out) → (kh·kw·in, out), a DenseGeneral
  kernel (d, heads, head_dim) → (d, heads·head_dim)); ndim ≤ 1 has none and
  gets a diagonal (AdaGrad-style) preconditioner.
* a side longer than ``max_precondition_dim`` gets the identity (it is not
  preconditioned); when neither side is preconditioned the leaf is diagonal.
* a preconditioned side longer than ``block_size`` is cut into
  ⌈d/block_size⌉ equal blocks (zero-padded by fewer rows than there are
  blocks); each block has its own L and R. Zero padding is exact: a padded row
  of G only meets the padded corner of L, which never reaches real rows.

State arrays hold one leading axis of blocks, so every root computation of a
leaf is one batched call.
"""

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx.transforms import _sharding
from gradtx.transforms import _tree
from gradtx.transforms import _validate
from gradtx.transforms.matrix_roots import ROOT_METHODS
from gradtx.transforms.matrix_roots import inverse_pth_root
from gradtx.transforms.matrix_roots import matmul
from gradtx.transforms.matrix_roots import transpose



def matrix_view(shape: tuple[int, ...]) -> Optional[tuple[int, int]]:
  """The (rows, cols) a leaf is preconditioned as; ``None`` below 2 dims."""
  if len(shape) < 2:
    return None
  splits = [
      (math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape))
  ]
  return min(splits, key=max)


class BlockLayout(NamedTuple):
  """How one leaf is cut into equal blocks (static, from its shape)."""

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
    return self.row_blocks * self.col_blocks

  @property
  def exponent(self) -> int:
    """p of L^{-1/p}: 4 with two factors, 2 with one (−1/(2k), k factors)."""
    return 2 * (int(self.left) + int(self.right))


def block_layout(
    shape: tuple[int, ...],
    block_size: Optional[int],
    max_precondition_dim: int,
) -> Optional[BlockLayout]:
  """The blocks of a leaf, or ``None`` for a diagonally preconditioned leaf."""
  view = matrix_view(shape)
  if view is None:
    return None
  rows, cols = view
  left, right = rows <= max_precondition_dim, cols <= max_precondition_dim
  if not (left or right):
    return None

  def cuts(dim, preconditioned):
    return -(-dim // block_size) if preconditioned and block_size else 1

  return BlockLayout(rows, cols, cuts(rows, left), cuts(cols, right), left, right)


def to_blocks(x: jax.Array, layout: BlockLayout) -> jax.Array:
  """A leaf as its stack of (num_blocks, block_rows, block_cols) blocks."""
  br, bc = layout.block_rows, layout.block_cols
  x = x.reshape(layout.rows, layout.cols)
  x = jnp.pad(x, ((0, layout.row_blocks * br - layout.rows),
                  (0, layout.col_blocks * bc - layout.cols)))
  x = x.reshape(layout.row_blocks, br, layout.col_blocks, bc).swapaxes(1, 2)
  return x.reshape(layout.num_blocks, br, bc)


def from_blocks(
    blocks: jax.Array, layout: BlockLayout, shape: tuple[int, ...]
) -> jax.Array:
  """Inverse of ``to_blocks``: drops the padding, restores ``shape``."""
  br, bc = layout.block_rows, layout.block_cols
  x = blocks.reshape(layout.row_blocks, layout.col_blocks, br, bc).swapaxes(1, 2)
  x = x.reshape(layout.row_blocks * br, layout.col_blocks * bc)
  return x[: layout.rows, : layout.cols].reshape(shape)


class KroneckerPreconditionState(NamedTuple):
  """State of ``kronecker_precondition``; each field a tree structured like the params.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    left_stats: per leaf, the L statistics of its blocks, (blocks, r, r) in at
      least float32; an empty array where the rows are not preconditioned.
    right_stats: the R statistics, (blocks, c, c), or an empty array.
    left_root: L^{-1/p} as last recomputed, shaped like ``left_stats``.
    right_root: R^{-1/p}, shaped like ``right_stats``.
    diag_stats: for diagonal leaves (ndim ≤ 1, or both sides too long) the
      decayed sum of squared gradients, shaped like the leaf; else
      ``optax.MaskedNode()``.
  """

  count: jax.Array
  left_stats: optax.Updates
  right_stats: optax.Updates
  left_root: optax.Updates
  right_root: optax.Updates
  diag_stats: optax.Updates


def kronecker_precondition(
    b2: float = 1.0,
    eps: float = 1e-6,
    precondition_every: int = 1,
    *,
    block_size: Optional[int] = 256,
    max_precondition_dim: int = 4096,
    root_method: str = "eigh",
    relative_eps: float = 0.0,
) -> optax.GradientTransformation:
  r"""Shampoo's Kronecker-factored preconditioner, per block of every matrix leaf.

  .. math::
    L_t = β_2 L_{t-1} + G_t G_t^T,\quad R_t = β_2 R_{t-1} + G_t^T G_t,\quad
    u_t = (L_τ + δI)^{-1/4}\, G_t\, (R_τ + δI)^{-1/4}

  with :math:`L_0 = R_0 = 0`, δ = ε + ε_rel·λ_max (``inverse_pth_root``) and
  τ the last step at which the roots were recomputed: steps 1, 1 + k, 1 + 2k,
  ... for k = ``precondition_every`` (one ``lax.cond``; in between, a step
  costs the statistics' two matmuls and the two products with the stored
  roots). β₂ = 1, k = 1 is Algorithm 1 of Gupta et al. (statistics started at
  εI). With one side identity (longer than ``max_precondition_dim``) the other
  root is :math:`-1/2`; diagonal leaves get
  :math:`u = g / \sqrt{β_2 s + g^2 + ε}` element-wise. How leaves become
  blocks is described in the module docstring. A root that comes out
  non-finite is discarded and the previous one kept.

  Args:
    b2: decay of the statistics, in [0, 1]; 1 is AdaGrad's sum.
    eps: ε, the absolute ridge (Algorithm 1's εI), >= 0.
    precondition_every: recompute the roots every this many steps, >= 1.
    block_size: longest side of a block, >= 1; ``None``: never cut.
    max_precondition_dim: sides longer than this get the identity, >= 1.
    root_method: ``"eigh"`` (float32 or wider eigendecomposition, with
      pseudo-inverse truncation) or ``"newton"`` (coupled Newton iteration,
      matmul-only; give it ``eps > 0`` or ``relative_eps > 0``).
    relative_eps: ridge relative to each block's largest eigenvalue
      (distributed_shampoo uses 1e-6), >= 0.

  Returns:
    An ``optax.GradientTransformation`` with state
    ``KroneckerPreconditionState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.kronecker_precondition(eps=0.0)
    >>> g = jnp.array([[3.0, 0.0], [0.0, 2.0]])
    >>> u, _ = tx.update(g, tx.init(g))  # L^{-1/4} G R^{-1/4}: sign(G) here
    >>> u.round(4)
    Array([[1., 0.],
           [0., 1.]], dtype=float32)

  Reference: Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor
  Optimization", ICML 2018; Anil et al., "Scalable Second Order Optimization
  for Deep Learning", 2020 (blocking, grafting, amortised roots).
  """
  _validate.check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("relative_eps", relative_eps)
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
  layout_of = lambda x: block_layout(x.shape, block_size, max_precondition_dim)

  def init_fn(params):
    def leaf(p):
      # Every field gets its own buffer, so that the state can be donated.
      dtype, layout = _tree.compute_dtype(p), layout_of(p)
      if layout is None:
        return tuple(jnp.zeros((0,), dtype) for _ in range(4))
      nb, br, bc = layout.num_blocks, layout.block_rows, layout.block_cols
      left = (nb, br, br) if layout.left else (0,)
      right = (nb, bc, bc) if layout.right else (0,)
      return tuple(jnp.zeros(s, dtype) for s in (left, right, left, right))

    diag = _tree.zeros_where(
        params, lambda p: layout_of(p) is None, dtype_of=_tree.compute_dtype
    )
    return KroneckerPreconditionState(
        jnp.zeros([], jnp.int32), *_tree.map_statistics(leaf, 4, params), diag
    )

  def accumulate(g, left, right, diag):
    layout, x = layout_of(g), g.astype(_tree.compute_dtype(g))
    if layout is None:
      return left, right, b2 * diag + x * x
    x = to_blocks(_sharding.gather(x), layout)
    if layout.left:
      left = b2 * left + matmul(x, transpose(x))
    if layout.right:
      right = b2 * right + matmul(transpose(x), x)
    return left, right, diag

  def recompute(updates, left_stats, right_stats, left_roots, right_roots):
    def leaf(g, left, right, left_root, right_root):
      layout = layout_of(g)

      def root(stats, old, preconditioned):
        if not preconditioned:
          return old
        new = inverse_pth_root(
            stats, layout.exponent, root_method=root_method, eps=eps,
            relative_eps=relative_eps,
        )
        finite = jnp.isfinite(new).all((-2, -1), keepdims=True)
        return jnp.where(finite, new, old)

      if layout is None:
        return left_root, right_root
      return (root(left, left_root, layout.left),
              root(right, right_root, layout.right))

    return _tree.map_leaves(
        leaf, 2, updates, left_stats, right_stats, left_roots, right_roots
    )

  def precondition(g, left_root, right_root, diag):
    layout, x = layout_of(g), g.astype(_tree.compute_dtype(g))
    if layout is None:
      s = diag + eps
      u = jnp.where(s > 0, x * jax.lax.rsqrt(jnp.where(s > 0, s, 1)), 0)
      return (u.astype(g.dtype),)
    blocks = to_blocks(_sharding.gather(x), layout)
    if layout.left:
      blocks = left_root @ blocks
    if layout.right:
      blocks = blocks @ right_root
    u = from_blocks(blocks, layout, g.shape).astype(g.dtype)
    return (_sharding.reshard_like(u, g),)

  def update_fn(updates, state, params=None):
    del params
    count = _tree.increment(state.count)
    left, right, diag = _tree.map_leaves(
        accumulate, 3, updates, state.left_stats, state.right_stats,
        state.diag_stats,
    )
    roots = (updates, left, right, state.left_root, state.right_root)
    if precondition_every == 1:
      left_root, right_root = recompute(*roots)
    else:
      left_root, right_root = jax.lax.cond(
          (count - 1) % precondition_every == 0,
          recompute, lambda *args: (args[3], args[4]), *roots,
      )
    (u,) = _tree.map_leaves(precondition, 1, updates, left_root, right_root, diag)
    return u, KroneckerPreconditionState(
        count, left, right, left_root, right_root, diag
    )

  return optax.GradientTransformation(init_fn, update_fn)
