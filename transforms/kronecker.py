"""Kronecker-factored preconditioning (Shampoo): statistics, blocks, the update.

The inverse roots are ``gradtx.linalg.matrix_roots``; grafting, which
Shampoo pairs with it, is ``gradtx.transforms.graft``.

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

The statistics and roots of all matrices of one shape, across all leaves, are
one stack of blocks (``gradtx._internal.block_stacks``): every root
computation of a shape is one batched call, and on a device mesh the stack is
split along its block axis over all devices, each matrix with all its blocks
on one owner device, where its statistics live and are updated, rooted and
applied; only gradient matrices travel to the owners (one all-to-all) and
preconditioned ones back. With fewer matrices of a shape than devices some
devices own none of that shape (the stack is padded with zero matrices).
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import block_stacks
from gradtx._internal import routing as _routing
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx._internal.block_stacks import (
  BlockLayout,  # noqa: F401 (re-exported)
  from_blocks,  # noqa: F401 (re-exported)
  to_blocks,  # noqa: F401 (re-exported)
)
from gradtx.linalg.matrix_roots import ROOT_METHODS, inverse_pth_root, matmul, transpose
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule


def block_layout(
    view: Any,
    shape: tuple[int, ...],
    block_size: Optional[int],
    max_precondition_dim: float = float("inf"),
) -> Optional[BlockLayout]:
  """The blocks of a leaf, or ``None`` (diagonal: no view, or both sides too long).

  A side longer than ``max_precondition_dim`` is not preconditioned (``left``/``right``
  False); a preconditioned side longer than ``block_size`` is cut into
  ⌈d/block_size⌉ equal blocks (``block_stacks.block_layout``).
  ``block_size=None``: every matrix is one block.
  """
  if view is None:
    return None
  _, rows, cols = view.matrix_shape(shape)
  left, right = rows <= max_precondition_dim, cols <= max_precondition_dim
  if not (left or right):
    return None
  return block_stacks.block_layout(view, shape, block_size, left, right)


def exponent(left: bool, right: bool) -> int:
  """p of L^{-1/p}: 4 with two factors, 2 with one (−1/(2k), k factors)."""
  return 2 * (int(left) + int(right))


def layouts_of(
    tree, matrix_view: Optional[MatrixViewRule], block_size: Optional[int],
    max_precondition_dim: float,
) -> list:
  """The ``BlockLayout`` (or ``None``: diagonal) of every leaf of ``tree``, as a list."""
  layouts = [
      block_layout(view, tuple(jnp.shape(leaf)), block_size, max_precondition_dim)
      for view, leaf in zip(_matrix_view.views_of(tree, matrix_view),
                            jax.tree.leaves(tree))
  ]
  _routing.report_per_leaf(tree, "layouts", layouts)
  _routing.report_per_leaf(tree, "roles", ["diagonal" if b is None else None for b in layouts])
  return layouts


def owner_plan(
    tree, matrix_view: Optional[MatrixViewRule], block_size: Optional[int],
    max_precondition_dim: float,
) -> tuple[block_stacks.OwnerPlan, list]:
  """(the owner plan of the leaves' whole matrices, per leaf its ``BlockLayout``).

  The plan stacks each leaf's matrices whole, in its compute dtype; leaves
  whose layout is ``None`` are diagonal and not stacked. A matrix's blocks
  stay together with it: its owner keeps the statistics of all of them, so
  only whole matrices travel (an all-to-all).
  """
  leaves = jax.tree.leaves(tree)
  blocks = layouts_of(tree, matrix_view, block_size, max_precondition_dim)
  matrices = [None if b is None else b._replace(row_blocks=1, col_blocks=1)
              for b in blocks]
  owners = block_stacks.OwnerPlan.build(
      leaves, matrices, [_tree.compute_dtype(x) for x in leaves])
  return owners, blocks


def stack_bytes(tree, groups, fields) -> tuple[list, list]:
  """(paths, bytes): each member leaf's share of the stacks in ``fields``
  (dicts of stacks keyed by group name), for ``gradtx.describe``."""
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  out_paths, out_bytes = [], []
  for g in groups:
    per_block = sum(x.nbytes for f in fields if g.name in f
                    for x in jax.tree.leaves(f[g.name])) // g.count
    for index, _, count in g.members:
      out_paths.append(paths[index])
      out_bytes.append(per_block * count)
  return out_paths, out_bytes


class KroneckerPreconditionState(NamedTuple):
  """State of ``kronecker_precondition``.

  The matrix statistics are stacks, one per matrix shape (a dict keyed by
  the shape of the leaves' matrix views, e.g. ``"256x768"``; ``_left`` /
  ``_right`` where one side is not preconditioned), holding the blocks of
  every matrix of that shape, matrix by matrix in leaf order, padded with
  zero matrices to a multiple of the mesh size.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    left_stats: per block shape, the L statistics, (blocks, r, r) in at least
      float32 (shapes whose rows are not preconditioned have none).
    right_stats: the R statistics, (blocks, c, c).
    left_root: L^{-1/p} as last recomputed, shaped like ``left_stats``.
    right_root: R^{-1/p}, shaped like ``right_stats``.
    diag_stats: for diagonal leaves (no matrix view, or both sides too long)
      the decayed sum of |g|², shaped like the leaf; else ``MaskedNode()``.
  """

  count: jax.Array
  left_stats: dict
  right_stats: dict
  left_root: dict
  right_root: dict
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
  non-finite from finite statistics is discarded and the previous one kept;
  statistics made non-finite by a gradient give non-finite roots (the
  failure shows, as README's "Non-finite gradients" has it).

  Args:
    precondition_b2: β, the decay of the statistics, in [0, 1]; 1 is
      AdaGrad's sum.
    damping: δ, the absolute ridge (Algorithm 1's εI), >= 0.
    precondition_every: recompute the roots every this many steps, >= 1 (may
      be traced, e.g. by ``optax.inject_hyperparams``).
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
      "precondition_every", precondition_every, traced=True)
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
  precondition_every_step = isinstance(precondition_every, int) and precondition_every == 1

  def plan(tree):
    """``owner_plan``, and per group the block layout of its members."""
    owners, blocks = owner_plan(tree, matrix_view, block_size, max_precondition_dim)
    # All members of a group share the matrix shape, hence the cuts.
    group_blocks = {g.name: blocks[g.members[0][0]] for g in owners.groups}
    return blocks, owners, group_blocks

  def init_fn(params):
    _validate.check_shaped_params(params, "kronecker_precondition")
    blocks, owners, group_blocks = plan(params)

    def side(on, which):
      stacks = {}
      for g in owners.groups:
        if getattr(g, on):
          b = group_blocks[g.name]
          d = b.block_rows if which == 0 else b.block_cols
          stacks[g.name] = owners.zeros(g, (d, d), per_entry=b.row_blocks * b.col_blocks)
      return stacks

    # Every field gets its own buffer, so that the state can be donated.
    sides = dict(left_stats=side("left", 0), right_stats=side("right", 1),
                 left_root=side("left", 0), right_root=side("right", 1))
    _routing.report_stack_bytes(*stack_bytes(params, owners.groups, sides.values()))
    diagonal = iter([b is None for b in blocks])
    diag = _tree.zeros_where(
        params, lambda path, p: next(diagonal),
        lambda p: _tree.real_dtype(_tree.compute_dtype(p)))
    return KroneckerPreconditionState(jnp.zeros([], jnp.int32), **sides, diag_stats=diag)

  def root(stats, old, p, owners):
    traced = _tree.traced_hyperparameters(damping=damping, relative_damping=relative_damping)
    dampings = lambda hyper: {"damping": damping, "relative_damping": relative_damping, **hyper}
    new = owners.on_owners(
        lambda s, *hyper: inverse_pth_root(
            s, p, root_method=root_method, **dampings(hyper[0] if hyper else {})),
        stats, shared=traced or None)
    # A root that fails on finite statistics (an ill-conditioned eigh or
    # Newton run) is discarded; statistics a non-finite gradient reached give
    # a non-finite root, not a silently stale one.
    finite = lambda x: jnp.isfinite(x).all((-2, -1), keepdims=True)
    return jnp.where(finite(stats) & ~finite(new), old, new)

  def recompute(owners, left_stats, right_stats, left_roots, right_roots):
    exponents = {g.name: exponent(g.left, g.right) for g in owners.groups}
    return (
        {k: root(v, left_roots[k], exponents[k], owners) for k, v in left_stats.items()},
        {k: root(v, right_roots[k], exponents[k], owners) for k, v in right_stats.items()},
    )

  def diagonal_step(g, diag):
    x = g.astype(_tree.compute_dtype(g))
    diag = beta * diag + _tree.abs_sq(x)
    s = diag + damping
    u = jnp.where(s > 0, x * jax.lax.rsqrt(jnp.where(s > 0, s, 1)), 0)
    return u.astype(g.dtype), diag

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "kronecker_precondition")
    updates = _sharding.committed_like(updates, params)
    count = optax.safe_increment(state.count)
    treedef = jax.tree.structure(updates)
    blocks, owners, group_blocks = plan(updates)
    owners.check_state({**state.left_stats, **state.right_stats}, updates,
                       "kronecker_precondition")
    for g in owners.groups:
      b = group_blocks[g.name]
      for on, stats, d in (("left", state.left_stats, b.block_rows),
                           ("right", state.right_stats, b.block_cols)):
        if getattr(g, on):
          _validate.check_state_shape(
              stats[g.name].shape[-2:], (d, d),
              f"kronecker_precondition: the {on} statistics' blocks of {g.name}",
              "block_size, max_precondition_dim and the matrix view")
    # The state's stacks are stored unpadded (the same on any mesh): padded to
    # the owners' length for the step, cut back after it.
    per_entry = {k: b.row_blocks * b.col_blocks for k, b in group_blocks.items()}
    to_owners = lambda stacks: {
        k: owners.to_owners(k, v, per_entry[k]) for k, v in stacks.items()}
    to_state = lambda stacks: {
        k: owners.to_state(k, v, per_entry[k]) for k, v in stacks.items()}
    left_stats, right_stats, left_root, right_root = map(to_owners, (
        state.left_stats, state.right_stats, state.left_root, state.right_root))
    stacks = owners.stack()

    def accumulate(g, x, left, right, decay=beta):  # a traced β comes as an argument
      x = block_stacks.matrix_blocks(x, group_blocks[g.name])
      if left is not None:
        left = decay * left + matmul(x, transpose(x))
      if right is not None:
        right = decay * right + matmul(transpose(x), x)
      return left, right

    left, right = {}, {}
    for g, (l_new, r_new) in zip(owners.groups, owners.map(
        accumulate, stacks, left_stats, right_stats,
        shared=beta if isinstance(beta, jax.Array) else None)):
      if g.left:
        left[g.name] = l_new
      if g.right:
        right[g.name] = r_new

    roots = (left, right, left_root, right_root)
    if precondition_every_step:
      left_root, right_root = recompute(owners, *roots)
    else:
      left_root, right_root = jax.lax.cond(
          (count - 1) % precondition_every == 0,
          lambda *a: recompute(owners, *a), lambda *a: (a[2], a[3]), *roots)

    def precondition(g, x, left, right):
      layout = group_blocks[g.name]
      x = block_stacks.matrix_blocks(x, layout)
      if left is not None:
        x = left @ x
      if right is not None:
        x = x @ right
      return block_stacks.blocks_matrix(x, layout)

    preconditioned = owners.map(precondition, stacks, left_root, right_root)
    out = owners.unstack(preconditioned, alike=True)
    diag_leaves = treedef.flatten_up_to(state.diag_stats)
    new_diag = list(diag_leaves)
    diagonal = _tree.traced_once_per_shape(diagonal_step, owners.leaves)
    for i, (g, layout) in enumerate(zip(owners.leaves, blocks)):
      if layout is None:
        out[i], new_diag[i] = diagonal(g, diag_leaves[i])
    return treedef.unflatten(out), KroneckerPreconditionState(
        count, *map(to_state, (left, right, left_root, right_root)),
        treedef.unflatten(new_diag))

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))
