"""gradtx/_internal/block_stacks.py: block layouts, groups, owner plans, round trips."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import transforms as gt
from gradtx._internal import block_stacks as bs
from gradtx.transforms import kronecker as kron

V = gt.MatrixView
MATRIX = V((0,), (1,))
LEAVES = [jnp.arange(24.0).reshape(4, 6), jnp.arange(42.0).reshape(6, 7) + 1,
          jnp.arange(48.0).reshape(2, 4, 6) - 3, jnp.ones(5)]
VIEWS = [MATRIX, MATRIX, V((1,), (2,), batch=(0,)), None]


def _layouts(block_size=None):
  return [bs.block_layout(v, x.shape, block_size) for v, x in zip(VIEWS, LEAVES)]


def _plan(leaves, layouts, devices):
  """An owner plan without a mesh whose stacks are padded for ``devices``."""
  groups = bs.groups_of(layouts, [x.dtype for x in leaves], devices)
  return bs.OwnerPlan(tuple(leaves), tuple(layouts), groups, None, ((),) * len(groups))


def test_layout_cuts_preconditioned_sides_into_equal_blocks():
  layout = bs.block_layout(MATRIX, (6, 7), 3)
  assert (layout.row_blocks, layout.col_blocks) == (2, 3)
  assert (layout.block_rows, layout.block_cols) == (3, 3)  # 7 columns padded to 9
  assert layout.num_blocks == 6
  one_side = bs.block_layout(MATRIX, (6, 70), 3, right=False)
  assert (one_side.left, one_side.right, one_side.col_blocks) == (True, False, 1)
  assert bs.block_layout(None, (6, 7), 3) is None
  # Kronecker's rule: a side longer than max_precondition_dim is not preconditioned.
  assert kron.block_layout(MATRIX, (6, 70), 3, max_precondition_dim=10) == one_side
  assert kron.block_layout(MATRIX, (60, 70), 3, max_precondition_dim=10) is None
  assert (kron.exponent(True, True), kron.exponent(True, False)) == (4, 2)


@pytest.mark.parametrize("block_size", [None, 2, 3, 5])
def test_blocks_round_trip_and_hold_the_matrix(block_size):
  for x, layout in zip(LEAVES, _layouts(block_size)):
    if layout is None:
      continue
    blocks = bs.to_blocks(x, layout)
    assert blocks.shape == (layout.num_blocks, layout.block_rows, layout.block_cols)
    np.testing.assert_array_equal(bs.from_blocks(blocks, layout, x.shape), x)
    # The blocks tile the zero-padded matrix: same sum, nothing duplicated.
    np.testing.assert_allclose(blocks.sum(), x.sum())


def test_blocks_are_taken_row_block_major_and_zero_padded():
  x = np.arange(42.0).reshape(6, 7)
  blocks = np.asarray(bs.to_blocks(jnp.asarray(x), bs.block_layout(MATRIX, (6, 7), 3)))
  np.testing.assert_array_equal(blocks[1], x[:3, 3:6])
  np.testing.assert_array_equal(blocks[2][:, :1], x[:3, 6:])  # last column block: padded
  np.testing.assert_array_equal(blocks[2][:, 1:], 0)
  np.testing.assert_array_equal(blocks[3], x[3:, :3])


def test_groups_by_block_shape_dtype_and_sides_padded_for_the_mesh():
  layouts = _layouts()
  groups = bs.groups_of(layouts, [jnp.float32] * 4, devices=8)
  assert [(g.name, g.members, g.size) for g in groups] == [
      ("4x6", ((0, 0, 1), (2, 1, 2)), 8), ("6x7", ((1, 0, 1),), 8)]
  bf16 = bs.groups_of(layouts, [jnp.bfloat16, jnp.float32, jnp.float32, jnp.float32], 1)
  assert [g.name for g in bf16] == ["4x6_bfloat16", "6x7", "4x6"]
  one_sided = bs.groups_of([bs.block_layout(MATRIX, (4, 60), None, right=False)],
                           [jnp.float32], 3)
  assert [(g.name, g.size) for g in one_sided] == [("4x60_left", 3)]


@pytest.mark.parametrize("devices", [1, 8])
def test_stack_and_unstack_round_trip(devices):
  layouts = _layouts(block_size=3)
  plan = _plan(LEAVES, layouts, devices)
  stacks = plan.stack()
  assert [s.shape[0] for s in stacks] == [g.size for g in plan.groups]
  for s, g in zip(stacks, plan.groups):
    real = sum(count for _, _, count in g.members)
    np.testing.assert_array_equal(s[real:], 0)  # the padding is zero blocks
  out = plan.unstack([2 * s for s in stacks])
  for x, o, layout in zip(LEAVES, out, layouts):
    if layout is None:
      assert o is None
    else:
      np.testing.assert_array_equal(o, 2 * x)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_on_a_mesh_stacks_live_on_their_owners(axis_type):
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type,) * 2)
  leaves = [jax.device_put(x, NamedSharding(mesh, P("x") if x.ndim < 3 else P(None, "x")))
            for x in [LEAVES[0], jnp.arange(56.0).reshape(8, 7), LEAVES[2]]]
  layouts = [bs.block_layout(v, x.shape, None) for v, x in zip(VIEWS, leaves)]

  def roundtrip(leaves):
    plan = bs.OwnerPlan.build(leaves, layouts)
    assert plan.mesh is not None
    stacks = plan.on_owners(lambda *s: tuple(x @ jnp.swapaxes(x, 1, 2) @ x for x in s),
                            *plan.stack())
    mapped = plan.map(lambda g, x: x @ jnp.swapaxes(x, 1, 2) @ x, plan.stack())
    return stacks, plan.unstack(stacks), plan.unstack(mapped)

  with jax.set_mesh(mesh):
    stacks, out, mapped = jax.jit(roundtrip)(leaves)
  for s in stacks:
    assert s.shape[0] % 8 == 0
    assert s.sharding.is_equivalent_to(NamedSharding(mesh, P(("x", "y"))), 3), s.sharding
  for x, o, o_mapped in zip(leaves, out, mapped):
    m = np.asarray(x)
    np.testing.assert_allclose(o, m @ np.swapaxes(m, -1, -2) @ m, rtol=1e-5)
    np.testing.assert_array_equal(o_mapped, o)
    if axis_type == AxisType.Explicit:
      assert o.sharding.is_equivalent_to(x.sharding, x.ndim)


def test_an_expert_stack_split_over_its_matrices_keeps_its_axis_major():
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
  experts = jax.device_put(jnp.ones((8, 4, 6)), NamedSharding(mesh, P("y")))
  layouts = [bs.block_layout(VIEWS[2], experts.shape)]
  assert bs.OwnerPlan.build([experts], layouts).first == ((),)
  assert bs.OwnerPlan.build([experts], layouts, keep_split=True).first == (("y",),)



def test_same_shape_expert_stacks_are_interleaved_expert_by_expert():
  """Two (8, 4, 6) expert stacks split over ``y`` (a SwiGLU's gate and up)
  share one stack, interleaved [e0 gate, e0 up, e1 gate, ...]: each device
  owns matrices of experts it holds, and ``unstack`` gives the leaves back. A
  group that must be padded for the mesh is padded within each expert's part."""
  a, b = jnp.arange(192.0).reshape(8, 4, 6), -jnp.arange(192.0).reshape(8, 4, 6)
  np.testing.assert_array_equal(bs.interleaved([a, b])[1::2], b)
  for j, x in enumerate([a, b]):
    np.testing.assert_array_equal(bs.deinterleaved(bs.interleaved([a, b]), 2, j), x)
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
  split = NamedSharding(mesh, P("y"))
  leaves = [jax.device_put(x, split) for x in (a, b)]
  plan_of = lambda leaves: bs.OwnerPlan.build(
      leaves, [bs.block_layout(VIEWS[2], x.shape) for x in leaves], keep_split=True)
  assert plan_of(leaves).first == (("y",),)

  def roundtrip(leaves):
    stacks = plan_of(leaves).stack()
    return stacks, plan_of(leaves).unstack(stacks)

  with jax.set_mesh(mesh):
    (stack,), out = jax.jit(roundtrip)(leaves)
  np.testing.assert_array_equal(stack, np.stack([a, b], 1).reshape(16, 4, 6))
  held = {s.device: s.index[0] for s in leaves[0].addressable_shards}
  for shard in stack.addressable_shards:  # two blocks: one expert's gate and up
    expert = shard.index[0].start // 2
    assert held[shard.device].start <= expert < held[shard.device].stop
  for x, o in zip(leaves, out):
    np.testing.assert_array_equal(o, x)
    assert o.sharding.is_equivalent_to(split, 3)
  # Three stacks of 2 experts: 6 blocks, padded to 8 within each expert's
  # part ([e0 of each, 0, e1 of each, 0]): every real block stays put.
  small = [jax.device_put(jnp.arange(48.0).reshape(2, 4, 6) + 100 * i, split)
           for i in range(3)]
  assert plan_of(small).first == (("y",),)
  with jax.set_mesh(mesh):
    (stack,), out = jax.jit(roundtrip)(small)
  parts = np.asarray(stack).reshape(2, 4, 4, 6)
  np.testing.assert_array_equal(parts[:, :3], np.stack(small, 1))
  np.testing.assert_array_equal(parts[:, 3], 0)
  held = {s.device: s.index[0] for s in small[0].addressable_shards}
  for shard in stack.addressable_shards:  # one block each
    entry = shard.index[0].start
    if entry % 4 < 3:
      assert held[shard.device].start <= entry // 4 < held[shard.device].stop
  for x, o in zip(small, out):
    np.testing.assert_array_equal(o, x)


def test_without_a_mesh_there_are_no_owners():
  assert bs.owner_mesh(LEAVES) is None
  plan = bs.OwnerPlan.build(LEAVES, _layouts(), [jnp.float32] * 4)
  assert plan.mesh is None
  g = plan.groups[0]
  z = plan.zeros(g, (4, 4))
  assert z.shape == (g.count, 4, 4) == (g.size, 4, 4) and z.dtype == jnp.float32
  np.testing.assert_array_equal(plan.to_owners(g.name, z), z)


def test_check_state_names_the_leaf_without_a_stack():
  plan = bs.OwnerPlan.build(LEAVES, _layouts())
  plan.check_state({"4x6": 0, "6x7": 0}, LEAVES, "t")
  with pytest.raises(ValueError, match=r"t: the update of \[1\] has shape \(6, 7\)"):
    plan.check_state({"4x6": 0}, LEAVES, "t")


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("length", [3, 8])
def test_state_stacks_are_stored_unpadded_and_padded_for_the_owners(axis_type, length):
  """A state stack keeps its real length on any mesh (a checkpoint restores on
  another mesh size): split over the owners when the mesh divides it, along
  its rows otherwise; ``to_owners`` pads it for the step and ``to_state``
  gives back the same entries."""
  mesh = jax.make_mesh((8,), ("d",), axis_types=(axis_type,))
  x = jnp.arange(length * 16.0).reshape(length, 8, 2)
  with jax.set_mesh(mesh):
    stored = jax.jit(lambda x: bs.place_as_state(x, mesh))(x)
    padded = jax.jit(lambda s: bs.to_owners(s, 8, mesh))(stored)
    back = jax.jit(lambda p: bs.to_state(p, length, mesh))(padded)
  owners = NamedSharding(mesh, P("d", None, None))
  expected = owners if length % 8 == 0 else NamedSharding(mesh, P(None, "d", None))
  assert stored.sharding.is_equivalent_to(expected, 3)
  assert padded.shape == (8, 8, 2) and padded.sharding.is_equivalent_to(owners, 3)
  np.testing.assert_array_equal(np.asarray(padded)[:length], x)
  np.testing.assert_array_equal(np.asarray(padded)[length:], 0)
  assert back.sharding.is_equivalent_to(expected, 3)
  np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("jit", [False, True])
def test_unstack_alike_is_unstack(jit):
  leaves = LEAVES + [x + 10 for x in LEAVES]  # two leaves of each shape
  plan = bs.OwnerPlan.build(leaves, _layouts(block_size=3) * 2)
  stacks = plan.stack()

  def both(stacks):
    return plan.unstack(stacks), plan.unstack(stacks, alike=True)

  expected, got = (jax.jit(both) if jit else both)([2 * s for s in stacks])
  for e, g in zip(expected, got):
    if e is None:
      assert g is None
    else:
      np.testing.assert_array_equal(g, e)


def test_same_shape_pieces_share_one_compiled_kernel():
  # 16 same-shape pieces of one stack: static slices compile a kernel each
  # (their offsets differ), unstack_alike's one for all of them.
  leaves = [jnp.full((8, 8), float(i)) for i in range(16)]
  layouts = [bs.block_layout(MATRIX, x.shape) for x in leaves]

  def step(leaves):
    plan = bs.OwnerPlan.build(leaves, layouts)
    return plan.unstack([2 * s for s in plan.stack()], alike=True)

  out = jax.jit(step)(leaves)
  for i, o in enumerate(out):
    np.testing.assert_array_equal(o, 2.0 * i)
  text = jax.jit(step).lower(leaves).compile().as_text()
  bodies = re.findall(r"^%\S+ \([^\n]*\n(.*?)\n\}", text, re.M | re.S)
  anonymous = lambda b: re.sub(r", metadata=\{[^}]*\}", "", re.sub(r"[\w-]+\.\d+", "x", b))
  slicing = {anonymous(b) for b in bodies if "slice" in b}
  assert len(slicing) <= 2  # the pieces share one kernel (and the opaque loop reads one element)


@pytest.mark.parametrize("members", [1, 2, 3])
def test_fewer_experts_than_devices_stay_where_they_are(members):
  """Four experts split over ``expert`` of a (data 2, expert 4) mesh, in
  ``members`` same-shape stacks: 4, 8 or 12 blocks, padded to 8, 8 or 16
  within each expert's part (``padded_per_shard``). Stacking them moves
  nothing (the compiled program has no collective), each device owns blocks
  of an expert it holds, and ``unstack`` gives the leaves back."""
  mesh = jax.make_mesh((2, 4), ("data", "expert"), axis_types=(AxisType.Explicit,) * 2)
  split = NamedSharding(mesh, P("expert"))
  leaves = [jax.device_put(jnp.arange(4 * 8 * 6.0).reshape(4, 8, 6) + 1000 * i, split)
            for i in range(members)]
  plan_of = lambda leaves: bs.OwnerPlan.build(
      leaves, [bs.block_layout(VIEWS[2], x.shape) for x in leaves], keep_split=True)
  assert plan_of(leaves).first == (("expert",),)
  stack_only = jax.jit(lambda leaves: plan_of(leaves).stack())
  roundtrip = jax.jit(lambda leaves: plan_of(leaves).unstack(plan_of(leaves).stack()))
  with jax.set_mesh(mesh):
    text = stack_only.lower(leaves).compile().as_text()
    (stack,), out = stack_only(leaves), roundtrip(leaves)
  for op in ("all-to-all", "collective-permute", "all-gather", "all-reduce"):
    assert f" {op}(" not in text, op
  assert stack.shape[0] == -(-4 * members // 8) * 8
  held = {s.device: s.index[0] for s in leaves[0].addressable_shards}
  per_part = stack.shape[0] // 4
  for shard in stack.addressable_shards:
    entry = shard.index[0].start
    if entry % per_part < members:  # a real block: expert entry // per_part
      assert held[shard.device].start <= entry // per_part < held[shard.device].stop
  for x, o in zip(leaves, out):
    np.testing.assert_array_equal(o, x)


@pytest.mark.parametrize("count,per_matrix_from", [(1, None), (3, None), (3, 1)])
def test_map_entries_is_fn_of_each_entry(count, per_matrix_from):
  """One call, vmapped, or walked with lax.map (per_matrix_from=1 forces it on
  CPU): the same per-entry results, with None arguments and tuples of stacks."""
  rng = np.random.default_rng(5)
  a = jnp.asarray(rng.normal(size=(count, 4, 6)), jnp.float32)
  pair = (jnp.asarray(rng.normal(size=(count, 4, 4)), jnp.float32),
          jnp.asarray(rng.normal(size=(count, 6)), jnp.float32))
  scale = jnp.float32(2.5)

  def fn(x, absent, qs, shared):
    assert absent is None and x.ndim == 2
    return qs[0] @ x * shared, jnp.sum(x, axis=0) + qs[1]

  out = jax.jit(lambda a, pair: bs.map_entries(
      fn, a, None, pair, shared=scale, per_matrix_from=per_matrix_from))(a, pair)
  for j in range(count):
    expected = fn(a[j], None, (pair[0][j], pair[1][j]), scale)
    for got, want in zip(out, expected):
      np.testing.assert_allclose(got[j], want, rtol=1e-6, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(lambda a, pair: bs.map_entries(
      fn, a, None, pair, shared=scale, per_matrix_from=per_matrix_from))(a, pair))
  assert ("scan" in jaxpr) == (count > 1 and per_matrix_from == 1)


def test_map_alike_is_fn_of_each_entry_one_program_per_shape():
  """Same-shape entries (and the same static) run as one vmapped call whose
  results are sliced by one kernel; each result is fn of its own entry."""
  rng = np.random.default_rng(3)
  shapes = [(4, 6), (4, 6), (3, 5), (4, 6), (4, 6)]
  xs = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  ys = [jnp.asarray(rng.normal(size=s[:1]), jnp.float32) for s in shapes]
  statics = [1.0, 1.0, 1.0, 1.0, 2.0]  # the last is alone in its group

  def fn(static):
    return lambda x, y: (static * jnp.sum(x * x, axis=1) + y, x / jnp.linalg.norm(x))

  run = jax.jit(lambda xs, ys: bs.map_alike(fn, statics, xs, ys))
  for got, static, x, y in zip(run(xs, ys), statics, xs, ys):
    for g, want in zip(got, fn(static)(x, y)):
      np.testing.assert_allclose(g, want, rtol=1e-6)
  text = run.lower(xs, ys).compile().as_text()
  assert text.count(" while(") == 1  # one group of several: one opaque loop
  eager = bs.map_alike(fn, statics, xs, ys)  # no trace: the same
  np.testing.assert_allclose(eager[1][0], fn(1.0)(xs[1], ys[1])[0], rtol=1e-6)


def test_map_alike_on_a_mesh_calls_fn_per_entry_where_the_entry_lives():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  xs = [jax.device_put(jnp.arange(16.0).reshape(8, 2) + i, NamedSharding(mesh, P("data")))
        for i in range(3)]
  calls = []

  def fn(static):
    def per_entry(x):
      calls.append(x.shape)
      return 2 * x
    return per_entry

  with jax.set_mesh(mesh):
    out = jax.jit(lambda xs: bs.map_alike(fn, [None] * 3, xs))(xs)
  assert calls == [(8, 2)] * 3  # per entry, never a stack of them
  for x, o in zip(xs, out):
    np.testing.assert_array_equal(o, 2 * x)
    assert o.sharding.is_equivalent_to(x.sharding, o.ndim)
