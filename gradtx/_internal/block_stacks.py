"""Same-shape blocks of many leaves, stacked and laid out on their owner devices.

The matrix transforms (Newton–Schulz, singular-value clipping, Kronecker
preconditioning, SOAP) see each leaf through its matrix view, cut it into
blocks (``BlockLayout``; a whole matrix is one block) and work on stacks of
same-shape blocks: one batched call for many small matrices.

On a device mesh (the context mesh of ``jax.set_mesh``, or the mesh an
Explicit-axes leaf is typed with) each stack is padded with zero blocks to a
multiple of the mesh's size and split along its stack axis over all devices:
every block is computed whole, once, on the one device that owns it, with no
collective inside the computation. A transform plans this once per step
(``OwnerPlan.build``): its ``stack`` moves the blocks of the leaves' own
layouts to their owners and ``unstack`` moves the results back (XLA turns
both into all-to-alls where the layouts allow); ``map`` and ``on_owners`` run
per-block work there; ``zeros``, ``to_owners`` and ``to_state`` keep state
stacks. A transform whose state is kept per leaf (PSGD's factors) stacks it
with ``stack_entries`` and passes traced scalars to ``on_owners`` whole (``shared``).
Because every group is padded to a multiple of the mesh size, each device
owns the same number of blocks of each shape: the work is balanced across
shapes. Without a mesh the stacks are plain arrays and nothing moves.
Per-leaf work that needs no owner (a matrix's row and column statistics) runs
off a mesh as one vmapped call per shape with ``map_alike``.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P


class BlockLayout(NamedTuple):
  """How one leaf is cut into equal blocks (static, from its view and shape).

  Cutting a matrix into more than one block (``block_size``) is Kronecker
  preconditioning's, which also decides the sides
  (``kronecker.block_layout``). The cutting stays here: ``OwnerPlan.stack``
  and ``unstack`` take every leaf apart with it (a whole matrix is one block,
  and those ops are in every matrix transform's program), and kronecker.py
  imports this module.
  """

  view: Any  # a gt.MatrixView
  matrices: int
  rows: int
  cols: int
  row_blocks: int
  col_blocks: int
  left: bool = True  # rows are preconditioned (Kronecker's L, SOAP's Q_L)
  right: bool = True  # columns are preconditioned (R, Q_R)

  @property
  def block_rows(self) -> int:
    return -(-self.rows // self.row_blocks)

  @property
  def block_cols(self) -> int:
    return -(-self.cols // self.col_blocks)

  @property
  def num_blocks(self) -> int:
    return self.matrices * self.row_blocks * self.col_blocks


def block_layout(
    view: Any,
    shape: tuple[int, ...],
    block_size: Optional[int] = None,
    left: bool = True,
    right: bool = True,
) -> Optional[BlockLayout]:
  """The blocks of a leaf, or ``None`` (no view).

  A side ``left``/``right`` says is preconditioned and that is longer than
  ``block_size`` is cut into ⌈d/block_size⌉ equal blocks (zero-padded by
  fewer rows than there are blocks). ``block_size=None``: every matrix is
  one block.
  """
  if view is None:
    return None
  matrices, rows, cols = view.matrix_shape(shape)

  def cuts(dim, preconditioned):
    return -(-dim // block_size) if preconditioned and block_size else 1

  return BlockLayout(view, matrices, rows, cols, cuts(rows, left), cuts(cols, right),
                     left, right)


def matrix_blocks(m: jax.Array, layout: BlockLayout) -> jax.Array:
  """(n, rows, cols) matrices as their (n·blocks, block_rows, block_cols) blocks."""
  br, bc = layout.block_rows, layout.block_cols
  n = m.shape[0]
  m = jnp.pad(m, ((0, 0), (0, layout.row_blocks * br - layout.rows),
                  (0, layout.col_blocks * bc - layout.cols)))
  m = m.reshape(n, layout.row_blocks, br, layout.col_blocks, bc)
  return m.swapaxes(2, 3).reshape(n * layout.row_blocks * layout.col_blocks, br, bc)


def blocks_matrix(blocks: jax.Array, layout: BlockLayout) -> jax.Array:
  """Inverse of ``matrix_blocks``: the (n, rows, cols) matrices, padding dropped."""
  br, bc = layout.block_rows, layout.block_cols
  n = blocks.shape[0] // (layout.row_blocks * layout.col_blocks)
  m = blocks.reshape(n, layout.row_blocks, layout.col_blocks, br, bc)
  m = m.swapaxes(2, 3).reshape(n, layout.row_blocks * br, layout.col_blocks * bc)
  return m[:, : layout.rows, : layout.cols]


def to_blocks(x: jax.Array, layout: BlockLayout) -> jax.Array:
  """A leaf as its stack of (num_blocks, block_rows, block_cols) blocks."""
  return matrix_blocks(layout.view.to_matrices(x), layout)


def from_blocks(
    blocks: jax.Array, layout: BlockLayout, shape: tuple[int, ...]
) -> jax.Array:
  """Inverse of ``to_blocks``: drops the padding, restores ``shape``."""
  return layout.view.from_matrices(blocks_matrix(blocks, layout), shape)


class Group(NamedTuple):
  """One stack: the blocks of one shape (and dtype) of all member leaves.

  Attributes:
    name: a readable, unique key ("256x768", "128x128_left", ...).
    block_shape: (block_rows, block_cols).
    dtype: the dtype the blocks are computed in.
    left, right: which sides are preconditioned (as in ``BlockLayout``).
    members: (leaf index, first block, number of blocks), in leaf order.
    size: the number of blocks, padded to a multiple of the mesh size (the
      stacks the step computes on).
    count: the number of real blocks (the stacks a state stores, whatever
      the mesh size).
  """

  name: str
  block_shape: tuple[int, int]
  dtype: Any
  left: bool
  right: bool
  members: tuple[tuple[int, int, int], ...]
  size: int
  count: int


def groups_of(
    layouts: Sequence[Optional[BlockLayout]],
    dtypes: Sequence[Any],
    devices: int,
) -> tuple[Group, ...]:
  """The stacks of a list of leaves' layouts, in order of first appearance."""
  found: dict = {}
  for index, (layout, dtype) in enumerate(zip(layouts, dtypes)):
    if layout is None:
      continue
    key = (layout.block_rows, layout.block_cols, jnp.dtype(dtype), layout.left,
           layout.right)
    found.setdefault(key, []).append((index, layout.num_blocks))
  groups = []
  for (br, bc, dtype, left, right), entries in found.items():
    members, start = [], 0
    for index, count in entries:
      members.append((index, start, count))
      start += count
    sides = "" if left and right else ("_left" if left else "_right")
    suffix = "" if dtype == jnp.float32 else f"_{dtype.name}"
    groups.append(Group(f"{br}x{bc}{sides}{suffix}", (br, bc), dtype, left,
                        right, tuple(members), -(-start // devices) * devices, start))
  return tuple(groups)


def owner_mesh(leaves: Sequence[Any]) -> Optional[Any]:
  """The mesh to spread stacks over: the context mesh, else the leaves' own.

  ``None`` without a mesh. A mesh of one device is kept: its leaves are still
  typed with its axes (on Explicit axes a reshape across a sharded axis is
  refused even when that axis has one device), and the owner path lays the
  blocks out for it like for any other size. Under ``Auto`` axes only the
  context mesh (``jax.set_mesh``) is seen.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    for leaf in leaves:
      sharding = getattr(_typeof(leaf), "sharding", None)
      candidate = getattr(sharding, "mesh", None)
      if candidate is not None and not candidate.empty:
        mesh = candidate
        break
  if mesh is None or mesh.empty:
    return None
  return mesh


def _typeof(x: Any) -> Any:
  try:
    return jax.typeof(x)
  except TypeError:
    return None


def _explicit(mesh: Any) -> bool:
  return all(t == AxisType.Explicit for t in mesh.axis_types)


def owner_spec(mesh: Any, ndim: int, first: Sequence[str] = ()) -> P:
  """A stack split along its first axis over every axis of ``mesh``.

  The axes ``first`` are the major ones (``stack_axes``), the others follow
  in the mesh's order.
  """
  axes = tuple(first) + tuple(a for a in mesh.axis_names if a not in first)
  return P(axes, *([None] * (ndim - 1)))


def stack_axes(leaves: Sequence[Any], layouts: Sequence[Optional[BlockLayout]],
               groups: Sequence[Group], *, interleave: bool = True) -> list:
  """Per group, the mesh axes its stack is already split over, else ``()``.

  A group of expert stacks (leaves whose matrices are their first axis, whole,
  split over the same mesh axes: ``P('expert', None, None)``) is laid out on
  its owners with those axes major: each device then owns matrices it already
  holds, and nothing moves to the owners. A group of one such leaf always; a
  group of several of the same length (a SwiGLU MoE's ``gate`` and ``up``)
  with ``interleave``: ``OwnerPlan.stack`` interleaves its members
  expert-major (``interleaved``). Such a stack is padded and split within
  each part its axes hold (``padded_per_shard``), so a part's experts stay
  on its devices however many there are. Other groups take the mesh's order.
  """
  out = []
  for group in groups:
    axes = {_expert_axes(leaves[i], layouts[i], count) for i, _, count in group.members}
    counts = {count for _, _, count in group.members}
    alone = len(group.members) == 1
    ok = (alone or (interleave and len(counts) == 1)) and len(axes) == 1 and None not in axes
    out.append(next(iter(axes)) if ok else ())
  return out


def _expert_axes(leaf: Any, layout: BlockLayout, count: int) -> Optional[tuple]:
  """The mesh axes a leaf's first axis is split over, when its matrices are
  that axis (batch view (0,), one block each); else ``None``."""
  spec = _leaf_spec(leaf)
  whole = layout.row_blocks == layout.col_blocks == 1
  if (spec is None or spec[0] is None or not whole or tuple(layout.view.batch) != (0,)
      or count != leaf.shape[0]):
    return None
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  return axes if count % _shards(_typeof(leaf).sharding.mesh, axes) == 0 else None


def _shards(mesh: Any, axes: Sequence[str]) -> int:
  """How many parts mesh axes ``axes`` split an array into."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  out = 1
  for axis in axes:
    out *= sizes[axis]
  return out


def _axes_of(spec: Sequence[Any]) -> tuple:
  """Each entry of a spec as a tuple of mesh axes (``()`` for ``None``)."""
  return tuple(() if e is None else tuple(e) if isinstance(e, tuple) else (e,) for e in spec)


def rows_over_mesh(spec: Optional[P], shape: tuple, mesh: Any) -> Optional[tuple]:
  """The layouts a sharded leaf passes through on its way to the owners.

  A leaf split along an axis other than its first (a tensor-parallel kernel
  ``P('fsdp', 'tensor')``), or over some of the mesh's axes only, is first
  split along its first axis over its own axes (an all-to-all within each
  group of its column shards), then over every mesh axis (over the axes it
  is replicated on, a local slice): a layout whose move to the owners' stack
  XLA lays out as an all-to-all, where asked for the owners' layout directly
  its partitioner gathered such a leaf whole on every device (on a (data 2,
  fsdp 2, tensor 2) mesh Muon's collectives fell from 24 to 10 times a
  device's share of the parameters, ``benchmarks/RESULTS.md``). The way back
  takes the layouts in reverse. ``spec``: the leaf's (padded here to its
  rank; only known on Explicit axes). ``None`` (go directly) for a leaf that
  is replicated, already so split, of rank < 2, or whose first axis the
  mesh size does not divide.
  """
  if spec is None or len(shape) < 2 or shape[0] % mesh.size:
    return None
  spec = P(*spec, *([None] * (len(shape) - len(spec))))
  own = tuple(a for axes in _axes_of(spec) for a in axes)
  if not own:
    return None
  rest = [None] * (len(shape) - 1)
  steps = []
  for axes in (own, own + tuple(a for a in mesh.axis_names if a not in own)):
    step = P(axes, *rest)
    if _axes_of(step) not in {_axes_of(spec), *map(_axes_of, steps)}:
      steps.append(step)
  return tuple(steps) or None


def padded_per_shard(stack: jax.Array, size: int, mesh: Any, first: Sequence[str]) -> jax.Array:
  """``stack``, split along its first axis over mesh axes ``first``, as a
  ``size``-long stack split over every axis of ``mesh`` with ``first`` major
  (``owner_spec``) where every entry stays on the devices that hold it.

  Each of the parts ``first`` holds is padded with zero entries to
  ``size / parts`` and split over the other axes there (a slice of what
  those devices hold: nothing moves).
  """
  parts = _shards(mesh, first)
  rest = tuple(a for a in mesh.axis_names if a not in first)
  held = lambda x, *axes: jax.lax.with_sharding_constraint(
      x, P(tuple(first), *axes, *([None] * (x.ndim - 1 - len(axes)))))
  part = held(stack).reshape(parts, stack.shape[0] // parts, *stack.shape[1:])
  pad = [(0, 0), (0, size // parts - part.shape[1])] + [(0, 0)] * (stack.ndim - 1)
  part = jnp.pad(part, pad) if size > stack.shape[0] else part
  return held(part, rest or None).reshape(size, *stack.shape[1:])


def unpadded_per_shard(stack: jax.Array, count: int, shards: int) -> jax.Array:
  """Inverse of ``padded_per_shard``: the ``count`` real entries."""
  part = stack.reshape(shards, stack.shape[0] // shards, *stack.shape[1:])
  return part[:, : count // shards].reshape(count, *stack.shape[1:])


def interleaved(blocks: Sequence[jax.Array]) -> jax.Array:
  """k (E, r, c) stacks as one (E·k, r, c) stack, expert-major: [e0 of each
  member, e1 of each, ...]. Split into equal parts over the devices (expert
  axes major), each part holds the matrices of the experts its device holds."""
  return jnp.stack(blocks, axis=1).reshape(-1, *blocks[0].shape[1:])


def deinterleaved(stack: jax.Array, k: int, j: int) -> jax.Array:
  """Inverse of ``interleaved``: the j-th of its k members."""
  return stack.reshape(-1, k, *stack.shape[1:])[:, j]


def _in_mesh(mesh: Any, fn: Callable) -> Any:
  if jax.sharding.get_abstract_mesh().empty:
    with jax.sharding.use_abstract_mesh(mesh):
      return fn()
  return fn()


def entries_at_hidden_offset(stack: jax.Array, start: int, count: int) -> jax.Array:
  """``stack[start:start + count]`` at an offset XLA's partitioner cannot see.

  On an Auto mesh, an entry sliced at a constant offset from an owner stack
  and taken to the layout of its leaf (which Auto axes do not type) made the
  partitioner emit an out-of-range slice (two same-shape kernels ``P('x')``
  and ``P('x', 'y')``: the HLO verifier refused the step). A dynamic slice
  at an offset behind an optimization barrier is partitioned as such; the
  leaves keep their layouts.
  """
  offset = jax.lax.optimization_barrier(jnp.int32(start))
  return jax.lax.dynamic_slice_in_dim(stack, offset, count)


def place_on_owners(x: jax.Array, mesh: Optional[Any]) -> jax.Array:
  """``x`` (a stack) split along its first axis over the devices of ``mesh``."""
  if mesh is None:
    return x
  spec = owner_spec(mesh, x.ndim)
  if _explicit(mesh):
    return _in_mesh(mesh, lambda: jax.sharding.reshard(x, spec))
  return _in_mesh(mesh, lambda: jax.lax.with_sharding_constraint(x, spec))


def on_owners(fn: Callable, mesh: Optional[Any], *stacks: Any,
              first: Sequence[str] = (), shared: Any = None) -> Any:
  """``fn`` of the stacks' local slices, on every device (``jax.shard_map``).

  For per-block work that XLA must not partition itself, such as LAPACK
  calls walked one matrix at a time (``matrix_roots.unbatched_on_cpu``):
  each device runs ``fn`` on the blocks it owns. ``fn``'s outputs are stacks
  too (pytrees of arrays with the stack axis first). Without a mesh it is
  ``fn(*stacks)``. ``first``: the major mesh axes (``owner_spec``).
  ``shared``: a pytree of arrays (e.g. traced scalars) given whole to every
  device as ``fn``'s last argument, ``fn(*stacks, shared)``.
  """
  args = stacks if shared is None else (*stacks, shared)
  if mesh is None:
    return fn(*args)
  spec = lambda x: owner_spec(mesh, x.ndim, first)
  # fn's outputs, traced on untyped local slices (one device's blocks).
  local = lambda x: jax.ShapeDtypeStruct((x.shape[0] // mesh.size, *x.shape[1:]), x.dtype)
  local_args = jax.tree.map(local, stacks) + (() if shared is None else (shared,))
  out_shape = jax.eval_shape(fn, *local_args)
  in_specs = jax.tree.map(spec, stacks)
  if shared is not None:
    in_specs = (*in_specs, jax.tree.map(lambda _: P(), shared))

  def run():
    return jax.shard_map(
        fn, in_specs=in_specs, out_specs=jax.tree.map(spec, out_shape))(*args)

  return _in_mesh(mesh, run)


def _leaf_spec(leaf: Any) -> Optional[P]:
  sharding = getattr(_typeof(leaf), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is None:
    return None
  return P(*spec, *([None] * (jnp.ndim(leaf) - len(spec))))


# From this many elements per matrix, XLA:CPU runs a stack faster one matrix
# at a time (a 2-D dot uses every core; a batched one gives each matrix one
# thread): (1, 512, 2048) Newton–Schulz 94 ms batched, 60 ms as 2-D.
PER_MATRIX_ON_CPU = 1 << 17


def _stacked(stacks: tuple, per_entry: Callable, batched: Callable,
             per_matrix_from: Optional[int]) -> Any:
  """``per_entry`` of every entry of ``stacks``: one unbatched call for a
  stack of one; on CPU, entries of at least ``per_matrix_from`` elements (the
  first stack's) walked with ``lax.map``; otherwise ``batched(*stacks)``."""
  if per_matrix_from is None:
    per_matrix_from = PER_MATRIX_ON_CPU
  first = jax.tree.leaves(stacks)[0]
  if first.shape[0] == 1:
    out = per_entry(*jax.tree.map(lambda x: x[0], stacks))
    return jax.tree.map(lambda y: y[None], out)
  if first[0].size < per_matrix_from:
    return batched(*stacks)
  walked = lambda *xs: jax.lax.map(lambda entry: per_entry(*entry), xs)
  return jax.lax.platform_dependent(*stacks, cpu=walked, default=batched)


def map_stack(fn: Callable, stack: jax.Array, *, per_matrix_from: Optional[int] = None) -> Any:
  """``fn`` of a (n, rows, cols) stack, batched or one matrix at a time on CPU.

  ``fn`` takes a stack or a single matrix (it works on the last two axes) and
  returns arrays with the same leading axes. A stack of one is one 2-D call;
  on CPU a stack of matrices of at least ``per_matrix_from`` elements
  (default ``PER_MATRIX_ON_CPU``) is walked with ``lax.map`` (each step a 2-D
  call that XLA:CPU threads), elsewhere and for smaller matrices it is one
  batched call. The program holds one copy of ``fn`` either way.
  """
  return _stacked((stack,), fn, fn, per_matrix_from)


def map_entries(fn: Callable, *stacks: Any, shared: Any = None,
                per_matrix_from: Optional[int] = None) -> Any:
  """``fn(*entries, shared)`` over the entries of stacked arguments, run as
  ``map_stack`` runs a stack, its batched form ``jax.vmap``. ``fn`` returns a
  pytree of per-entry arrays; the result has the stack axis first.
  ``stacks`` may hold ``None`` (an absent argument) and tuples of stacks."""
  per_entry = lambda *entry: fn(*entry, shared)
  return _stacked(stacks, per_entry, lambda *xs: jax.vmap(per_entry)(*xs),
                  per_matrix_from)


def state_spec(shape: tuple[int, ...], mesh: Any) -> P:
  """How a state stack of ``shape`` is stored on ``mesh``.

  Split along the stack axis over every device (the owners) when the mesh
  size divides its length; otherwise split along its first matrix axis when
  the size divides that (each device still holds 1/N of it, and the step
  moves it to the owners and back, one all-to-all each way); replicated when
  neither does.
  """
  axes = tuple(mesh.axis_names)
  if shape[0] % mesh.size == 0:
    return P(axes, *([None] * (len(shape) - 1)))
  if len(shape) > 1 and shape[1] % mesh.size == 0:
    return P(None, axes, *([None] * (len(shape) - 2)))
  return P(*([None] * len(shape)))


def place_as_state(x: jax.Array, mesh: Optional[Any]) -> jax.Array:
  """A state stack laid out as it is stored (``state_spec``).

  A state stored unpadded has the same shape on every mesh, so a checkpoint
  saved on N devices restores on M; ``to_owners`` pads it for the step.
  """
  if mesh is None:
    return x
  spec = state_spec(x.shape, mesh)
  if _explicit(mesh):
    return _in_mesh(mesh, lambda: jax.sharding.reshard(x, spec))
  return _in_mesh(mesh, lambda: jax.lax.with_sharding_constraint(x, spec))


def _moved(fn: Callable, x: jax.Array, mesh: Any, spec: P) -> jax.Array:
  """``fn(x)`` with XLA laying out the move, the result typed with ``spec``."""
  if _explicit(mesh):
    return _in_mesh(mesh, lambda: jax.sharding.auto_axes(fn, out_sharding=spec)(x))
  return _in_mesh(mesh, lambda: jax.lax.with_sharding_constraint(fn(x), spec))


def to_owners(x: jax.Array, length: int, mesh: Optional[Any]) -> jax.Array:
  """A stored state stack padded with zero entries to ``length``, on the owners."""
  pad = lambda y: jnp.pad(y, [(0, length - y.shape[0])] + [(0, 0)] * (y.ndim - 1))
  if mesh is None:
    return pad(x) if length > x.shape[0] else x
  if length == x.shape[0]:
    return place_on_owners(x, mesh)
  return _moved(pad, x, mesh, owner_spec(mesh, x.ndim))


def to_state(x: jax.Array, length: int, mesh: Optional[Any]) -> jax.Array:
  """Inverse of ``to_owners``: the first ``length`` entries, laid out as state."""
  if length == x.shape[0]:
    return place_as_state(x, mesh)
  if mesh is None:
    return x[:length]
  return _moved(lambda y: y[:length], x, mesh, state_spec((length, *x.shape[1:]), mesh))


def opaque(values: Sequence[int], arrays: tuple) -> tuple:
  """(``values`` as int32 scalars, ``arrays``), both opaque to XLA's optimiser.

  They come out of a loop that runs zero times (its bound is minus the
  absolute value of a bit pattern of ``arrays[0]``, never positive), so XLA
  knows neither the scalars' values nor that the arrays come out unchanged.
  Pieces of the arrays taken at those offsets are then alike for the
  compiler: XLA:CPU compiles one kernel per *distinct* fusion, and a constant
  offset baked into every slice made each piece distinct (~25 ms of compile
  each on 2 cores); and the arrays are computed once, before the slicing,
  instead of XLA pushing each slice up into their computation (a copy of it
  per piece, a dot per leaf). For differentiation it is the identity (a
  ``custom_jvp``): reverse mode cannot go through a loop with a traced bound.
  """
  return _opaque(tuple(int(v) for v in values), tuple(arrays))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _opaque(values: tuple, arrays: tuple) -> tuple:
  first = jnp.abs(jnp.ravel(arrays[0])[0]).astype(jnp.float32)  # complex too
  word = jax.lax.bitcast_convert_type(first, jnp.int32)
  stop = -jnp.abs(word)

  def body(carry):
    step, ks, xs = carry
    # Not k + 1: a common increment lets XLA rewrite every k as k₀ + i.
    changed = lambda x: jnp.where(step > 0, jnp.zeros_like(x), x)
    return step + 1, tuple(k * step for k in ks), tuple(map(changed, xs))

  init = (jnp.int32(0), tuple(jnp.int32(v) for v in values), arrays)
  return jax.lax.while_loop(lambda c: c[0] < stop, body, init)[1:]


@_opaque.defjvp
def _opaque_jvp(values: tuple, primals: tuple, tangents: tuple) -> tuple:
  (arrays,), (array_tangents,) = primals, tangents
  offsets = tuple(np.zeros((), jax.dtypes.float0) for _ in values)
  return _opaque(values, arrays), (offsets, tuple(array_tangents))


def map_alike(fn: Callable, statics: Sequence[Any], *columns: Sequence[Any]) -> list:
  """Per index i, ``fn(statics[i])(columns[0][i], columns[1][i], ...)``,
  off a mesh one vmapped call per distinct (static, argument shapes).

  Entries alike are stacked (``jnp.stack``), ``fn(static)`` is vmapped over
  the stack and the results are taken back at ``opaque`` offsets: the
  per-leaf work of a tree of 192 same-shape matrices becomes one program
  and one slicing kernel per shape (XLA:CPU's compile grows with the
  instructions and distinct kernels of a program, ~20 fusions per leaf for
  a matrix-statistics step otherwise). Each ``fn(static)`` must be a
  per-entry function whose vmap is the same computation entry by entry;
  LAPACK calls in it must go through ``unbatched_on_cpu`` or
  ``one_matrix_per_call_on_cpu``, which stay one matrix per call under the
  vmap (a batched call deadlocks jaxlib 0.10 on CPU). The stack and the
  slices back are copies: Dion's step taken this way compiled 2.2x faster
  but stepped 6-9% slower with twice the temporaries (benchmarks/RESULTS.md,
  Compile time, stop 56), so it is Dion's option (``batch_same_shape``), not its default.
  Where the leaves live on a mesh (``owner_mesh``) every entry is its own
  call, in its own layout, so that nothing moves between devices.
  """
  rows = list(zip(*columns))
  if owner_mesh([x for row in rows for x in jax.tree.leaves(row)]) is not None:
    return [fn(static)(*row) for static, row in zip(statics, rows)]
  groups: dict = {}
  for i, (static, row) in enumerate(zip(statics, rows)):
    key = (static, tuple((jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(row)),
           jax.tree.structure(row))
    groups.setdefault(key, []).append(i)
  out = [None] * len(rows)
  for (static, _, _), members in groups.items():
    if len(members) == 1:
      out[members[0]] = fn(static)(*rows[members[0]])
      continue
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(rows[i] for i in members))
    results, treedef = jax.tree.flatten(jax.vmap(fn(static))(*stacked))
    starts, results = opaque(range(len(members)), tuple(results))
    for i, start in zip(members, starts):
      out[i] = treedef.unflatten(
          [jax.lax.dynamic_index_in_dim(x, start, keepdims=False) for x in results])
  return out


@dataclasses.dataclass(frozen=True)
class OwnerPlan:
  """The stacks of a list of leaves and the devices that own their blocks.

  Built once per ``init`` or ``update`` (``OwnerPlan.build``); every matrix
  transform moves its leaves' blocks with it (``stack``, ``unstack``), runs
  per-block work on the owners (``map``, ``on_owners``, with ``shared``
  arrays given whole to every owner) and keeps its state stacks with it (``zeros``, ``to_owners``,
  ``to_state``), or per-leaf state with ``stack_entries`` and
  ``unstack_entries``.

  Attributes:
    leaves: the leaves (arrays or tracers), in tree order.
    layouts: per leaf its ``BlockLayout``, or ``None`` (not stacked).
    groups: the stacks (``groups_of``), padded for ``mesh``.
    mesh: the owner mesh (``owner_mesh``), or ``None``.
    first: per group, the major mesh axes of its owner layout
      (``stack_axes``; ``()``: the mesh's order). A group of several members
      with such axes is stacked ``interleaved``.
  """

  leaves: tuple
  layouts: tuple
  groups: tuple[Group, ...]
  mesh: Optional[Any]
  first: tuple

  @classmethod
  def build(cls, leaves: Sequence[Any], layouts: Sequence[Optional[BlockLayout]],
            dtypes: Optional[Sequence[Any]] = None, *,
            keep_split: bool = False) -> "OwnerPlan":
    """The plan of ``leaves`` cut by ``layouts``, computed in ``dtypes``.

    ``dtypes`` defaults to the leaves' own. ``keep_split``: a stack of
    expert leaves already split over mesh axes along their matrices stays
    there (``stack_axes``); only for stacks without state, which is stored in
    the mesh's order.
    """
    leaves, layouts = tuple(leaves), tuple(layouts)
    mesh = owner_mesh(leaves)
    dtypes = [x.dtype for x in leaves] if dtypes is None else dtypes
    groups = groups_of(layouts, dtypes, 1 if mesh is None else mesh.size)
    if keep_split and mesh is not None:
      first = tuple(stack_axes(leaves, layouts, groups, interleave=mesh.size > 1))
    else:
      first = ((),) * len(groups)
    return cls(leaves, layouts, groups, mesh, first)

  def stack(self) -> tuple[jax.Array, ...]:
    """The blocks of the leaves (in each group's dtype), one stack per group,
    each laid out on its owners."""
    leaves, layouts, groups, mesh = list(self.leaves), self.layouts, self.groups, self.mesh

    via = self._rows_over_mesh()

    def build(leaves):
      stacks = []
      for group, first in zip(groups, self.first):
        blocks = [to_blocks(self._laid_out_through(leaves[i], via[i]).astype(group.dtype),
                            layouts[i]) for i, _, _ in group.members]
        join = interleaved if first else jnp.concatenate
        s = blocks[0] if len(blocks) == 1 else join(blocks)
        pad = group.size - s.shape[0]
        if first:
          s = padded_per_shard(s, group.size, mesh, first)
        elif pad:
          s = jnp.pad(s, ((0, pad), (0, 0), (0, 0)))
        stacks.append(s)
      return tuple(stacks)

    if mesh is None:
      return build(leaves)
    specs = tuple(owner_spec(mesh, 3, f) for f in self.first)
    if _explicit(mesh):
      # The blocking reshapes cross sharded axes, which Explicit types refuse:
      # XLA's partitioner lays out the move (auto_axes), into owner layout.
      return _in_mesh(mesh, lambda: jax.sharding.auto_axes(
          build, out_sharding=specs)(leaves))
    return tuple(_in_mesh(mesh, lambda s=s, spec=spec: jax.lax.with_sharding_constraint(s, spec))
                 for s, spec in zip(build(leaves), specs))

  def unstack(self, stacks: Sequence[jax.Array], *, alike: bool = False) -> list:
    """Per leaf, its blocks of ``stacks`` put back together, in its dtype.

    Leaves in no group come back as ``None``. On an Explicit mesh every
    result has its leaf's sharding. ``alike`` (no mesh): each leaf's blocks
    are taken at an ``opaque`` offset, so the same-shape leaves of a group
    share one slicing kernel (compiled once per shape, not once per leaf);
    the results are the same.
    """
    if alike and self.mesh is None:
      return self._unstack_alike(stacks)
    leaves, layouts, mesh = self.leaves, self.layouts, self.mesh
    members = [(g, i, start, count) for g, group in enumerate(self.groups)
               for i, start, count in group.members]

    def piece(stack, g, start, count):
      group, first = self.groups[g], self.first[g]
      k = len(group.members)
      if first and group.size > group.count:
        stack = unpadded_per_shard(stack, group.count, _shards(mesh, first))
      if first and k > 1:  # interleaved, its members of one count
        return deinterleaved(stack, k, start // count)
      if mesh is not None and not _explicit(mesh):
        return entries_at_hidden_offset(stack, start, count)
      return stack[start:start + count]

    via = self._rows_over_mesh()

    def split(stacks):
      return tuple(
          self._laid_out_through(from_blocks(piece(stacks[g], g, start, count), layouts[i],
                                    leaves[i].shape), via[i], back=True).astype(leaves[i].dtype)
          for g, i, start, count in members)

    if mesh is not None and _explicit(mesh):
      specs = tuple(_leaf_spec(leaves[i]) or P() for _, i, _, _ in members)
      parts = _in_mesh(mesh, lambda: jax.sharding.auto_axes(
          split, out_sharding=specs)(tuple(stacks)))
    else:
      parts = split(tuple(stacks))
    out = [None] * len(leaves)
    for (_, i, _, _), part in zip(members, parts):
      out[i] = part
    return out

  def _rows_over_mesh(self) -> list:
    """Per leaf, the layouts it passes through to and from its owners
    (``rows_over_mesh``); ``None`` off a mesh and for the leaves of a stack
    already split where it lies (``first``)."""
    via = [None] * len(self.leaves)
    for group, first in zip(self.groups, self.first):
      for i, _, _ in group.members:
        via[i] = None if first else self._layouts_on_the_way(_leaf_spec(self.leaves[i]),
                                                             jnp.shape(self.leaves[i]))
    return via

  def _layouts_on_the_way(self, spec: Optional[P], shape: tuple) -> Optional[tuple]:
    """``rows_over_mesh`` on this plan's mesh; ``None`` off a mesh."""
    return None if self.mesh is None else rows_over_mesh(spec, shape, self.mesh)

  def _laid_out_through(self, x: jax.Array, specs: Optional[tuple], *,
                        back: bool = False) -> jax.Array:
    """``x`` laid out with each of ``specs`` in turn (``back``: in reverse;
    ``None``: as it is)."""
    for spec in (specs or ())[::-1 if back else 1]:
      x = _in_mesh(self.mesh, lambda x=x, spec=spec: jax.lax.with_sharding_constraint(x, spec))
    return x

  def _unstack_alike(self, stacks: Sequence[jax.Array]) -> list:
    """``unstack`` off a mesh with every piece sliced at an ``opaque`` offset."""
    leaves, layouts = self.leaves, self.layouts
    out = [None] * len(leaves)
    for stack, group in zip(stacks, self.groups):
      members = group.members
      if len(members) > 1:
        starts, (stack,) = opaque([start for _, start, _ in members], (stack,))
      else:
        starts = [start for _, start, _ in members]
      for (i, _, count), start in zip(members, starts):
        part = jax.lax.dynamic_slice_in_dim(stack, start, count)
        out[i] = from_blocks(part, layouts[i], leaves[i].shape).astype(leaves[i].dtype)
    return out

  def on_owners(self, fn: Callable, *stacks: Any, first: Sequence[str] = (),
                shared: Any = None) -> Any:
    """``fn`` of the stacks' local slices on every owner (``on_owners``;
    ``shared``: arrays given whole to every owner, ``fn``'s last argument)."""
    return on_owners(fn, self.mesh, *stacks, first=first, shared=shared)

  def map(self, fn: Callable, *per_group: Any, shared: Any = None) -> list:
    """Per group, ``fn(group, *its stacks)`` on the owners of its blocks.

    Each of ``per_group`` is a sequence in group order or a dict keyed by
    group name (a missing name gives ``None``). ``shared``: arrays given whole
    to every owner, ``fn``'s last argument (traced hyperparameters: a value
    ``fn`` closed over would be refused on an Explicit mesh).
    """
    out = []
    for i, (group, first) in enumerate(zip(self.groups, self.first)):
      args = [a.get(group.name) if isinstance(a, dict) else a[i] for a in per_group]
      out.append(on_owners(lambda *a, group=group: fn(group, *a), self.mesh, *args,
                           first=first, shared=shared))
    return out

  def zeros(self, group: Group, shape: tuple[int, ...], dtype: Any = None, *,
            per_entry: int = 1) -> jax.Array:
    """A zero state stack: ``group.count · per_entry`` entries of ``shape``.

    Laid out by ``place_as_state``; its shape does not depend on the mesh.
    """
    dtype = group.dtype if dtype is None else dtype
    return place_as_state(jnp.zeros((group.count * per_entry, *shape), dtype), self.mesh)

  def to_owners(self, name: str, x: jax.Array, per_entry: int = 1) -> jax.Array:
    """Group ``name``'s state stack (stored unpadded) padded for the step, on
    the owners (``to_owners``)."""
    return to_owners(x, self._group(name).size * per_entry, self.mesh)

  def to_state(self, name: str, x: jax.Array, per_entry: int = 1) -> jax.Array:
    """Inverse of ``to_owners``: the real entries, laid out as state."""
    return to_state(x, self._group(name).count * per_entry, self.mesh)

  def _group(self, name: str) -> Group:
    return next(g for g in self.groups if g.name == name)

  def stack_entries(self, size: int, columns: Sequence[Sequence[jax.Array]]) -> tuple:
    """Per column (one array per member of a group, alike), its stack of
    ``size`` entries (the group's ``size``) on the owners.

    For state kept per leaf rather than per block (PSGD's factors, the
    random probes): the group's layouts must be whole matrices; off a mesh
    any same-shape leaves may be stacked. Each stack is padded with copies of
    its first entry (numbers a step can take as it takes the real ones,
    unlike zeros that a solve turns into NaNs); on an Explicit mesh XLA lays
    out the move.
    """
    mesh = self.mesh

    via = [[self._layouts_on_the_way(_leaf_spec(x), jnp.shape(x)) for x in xs]
           for xs in columns]

    def build(columns):
      out = []
      for xs, vias in zip(columns, via):
        s = jnp.stack([self._laid_out_through(x, v) for x, v in zip(xs, vias)])
        if size > len(xs):
          s = jnp.concatenate([s, jnp.broadcast_to(s[:1], (size - len(xs), *s.shape[1:]))])
        out.append(s)
      return tuple(out)

    columns = tuple(map(tuple, columns))
    if mesh is None:
      return build(columns)
    specs = tuple(owner_spec(mesh, jnp.ndim(xs[0]) + 1) for xs in columns)
    if _explicit(mesh):
      return _in_mesh(mesh, lambda: jax.sharding.auto_axes(build, out_sharding=specs)(columns))
    return tuple(_in_mesh(mesh, lambda s=s, spec=spec: jax.lax.with_sharding_constraint(s, spec))
                 for s, spec in zip(build(columns), specs))

  def unstack_entries(self, stacks: Sequence[jax.Array],
                      specs: Sequence[Sequence[Optional[P]]]) -> tuple:
    """Inverse of ``stack_entries``: per stack, its first ``len(specs[i])``
    entries, entry j laid out with ``specs[i][j]`` (``None``: as XLA likes; on
    an Explicit mesh every spec must be given). Off a mesh the entries are
    taken at ``opaque`` offsets, so one kernel slices all of a stack's
    entries (as ``unstack(alike=True)``); stacks of one length share one
    opaque loop (PSGD's update, factors and momentum: a third of the loop
    outputs XLA copies)."""
    mesh = self.mesh

    def split(stacks, entry=lambda s, j: s[j]):
      return tuple(tuple(
          self._laid_out_through(entry(s, j), self._layouts_on_the_way(spec, s.shape[1:]),
                                 back=True)
          for j, spec in enumerate(sp)) for s, sp in zip(stacks, specs))

    def split_alike(stack, count):
      if count == 1:
        return (stack[0],)
      starts, (stack,) = opaque(range(count), (stack,))
      return tuple(jax.lax.dynamic_index_in_dim(stack, j, keepdims=False) for j in starts)

    if mesh is None:
      counts = {len(sp) for sp in specs}
      if len(counts) == 1 and min(counts) > 1:
        # The stacks of one group: one opaque loop gives all their offsets.
        starts, stacks = opaque(range(min(counts)), tuple(stacks))
        return tuple(tuple(jax.lax.dynamic_index_in_dim(s, j, keepdims=False) for j in starts)
                     for s in stacks)
      return tuple(split_alike(s, len(sp)) for s, sp in zip(stacks, specs))
    if _explicit(mesh):
      return _in_mesh(mesh, lambda: jax.sharding.auto_axes(
          split, out_sharding=tuple(map(tuple, specs)))(tuple(stacks)))
    constrain = lambda x, spec: x if spec is None else _in_mesh(
        mesh, lambda: jax.lax.with_sharding_constraint(x, spec))
    hidden = lambda s, j: entries_at_hidden_offset(s, j, 1)[0]  # see its docstring
    return tuple(tuple(constrain(x, spec) for x, spec in zip(xs, sp))
                 for xs, sp in zip(split(tuple(stacks), hidden), specs))

  def check_state(self, state_stacks: Any, updates: Any, transform: str) -> None:
    """Raises ``ValueError`` for a group the state has no stack for.

    The state's stacks are keyed by the block shapes of the parameters it
    was initialised on; an update leaf of another shape (a transposed
    gradient) names a stack that does not exist.
    """
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    for group in self.groups:
      if group.name not in state_stacks:
        index = group.members[0][0]
        path, leaf = flat[index]
        raise ValueError(
            f"{transform}: the update of {jax.tree_util.keystr(path)} has shape"
            f" {jnp.shape(leaf)}, whose blocks ({group.name}) match no statistics of"
            f" the state (built for blocks {sorted(state_stacks)}): is the gradient"
            " shaped like its parameter?")


def leaf_spec(leaf: Any) -> Optional[P]:
  """The spec ``leaf`` is typed with (padded to its rank), or ``None``."""
  return _leaf_spec(leaf)
