"""Scaling out: owner-compute matrix transforms on device meshes, and multi-host runs.

tests/conftest.py gives 8 CPU devices. What is checked:

* the per-device cost of the compiled update (``benchmarks/distributed_cost.py``,
  read from the compiled program, not timed): Muon, Shampoo and SOAP do at
  most 0.2x the one-device FLOPs per device, hold at most 0.2x of the state
  per device and move at most 4x a device's share of the parameters, on
  Explicit and Auto meshes; AdamW stays at 1/8, 1/8 and no collective;
* sharded runs equal unsharded ones within 1e-5 relative over 5 steps, for
  every optimizer, on both axis types;
* the matrix transforms trace their per-matrix program once per distinct
  shape on a mesh too (as tests/transforms/test_contract.py checks on one device);
* the edge cases: fewer matrices than devices, a Kronecker block split over
  devices, a two-axis (data x model) mesh, replicated (data-parallel) params;
* two processes x 4 CPU devices (``jax.distributed``, gloo) equal one process
  with 8 devices.
"""

import contextlib
import functools
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import distributed_cost
from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.support import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
AXIS_TYPES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}


@pytest.fixture(scope="session")
def costs():
  rows = distributed_cost.measure(
      8, ["adamw", "muon", "shampoo", "soap", "psgd_kron"], list(AXIS_TYPES), width=64)
  return {(r["optimizer"], r["axis_type"]): r for r in rows}


@pytest.mark.parametrize("axis_type", list(AXIS_TYPES))
@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_matrix_optimizers_split_their_work_state_and_traffic(costs, name, axis_type):
  row = costs[name, axis_type]
  assert row["flops"] <= 0.2, row
  assert row["state"] <= 0.2, row
  assert row["collectives"] <= 4.0, row


@pytest.mark.parametrize("axis_type", list(AXIS_TYPES))
def test_psgd_kron_splits_its_work_and_state(costs, axis_type):
  """Each leaf's factors fitted whole on one owner and stored split; its
  traffic (every factor to its owner and back, ~21-35x a device's parameter
  share: the factors are ~3.7x the parameters) is reported, not bounded."""
  row = costs["psgd_kron", axis_type]
  assert row["flops"] <= 0.2, row
  assert row["state"] <= 0.2, row


@pytest.mark.parametrize("axis_type", list(AXIS_TYPES))
def test_adamw_is_local(costs, axis_type):
  row = costs["adamw", axis_type]
  assert row["flops"] == pytest.approx(0.125, rel=1e-3)
  assert row["state"] == pytest.approx(0.125, rel=1e-3)
  assert row["collectives"] == 0


def test_8bit_state_of_scanned_stacks_is_split_and_local():
  """``--scanned``: stacks split below their layer axis. The 8-bit codes split
  with their rows (they were whole on every device, gathered each step)."""
  rows = distributed_cost.measure(8, ["adamw_8bit"], ["explicit"], width=256, blocks=2,
                                  scanned=True)
  (row,) = rows
  assert row["state"] <= 0.13 and row["flops"] <= 0.13, row
  assert row["collectives"] <= 0.1, row


def test_collective_bytes_are_read_from_the_compiled_text():
  text = ("%a = f32[2,8]{1,0} all-gather(f32[1,8]{1,0} %p)\n"
          "%b = (f32[4]{0}, f32[4]{0}) all-to-all(%x, %y)\n"
          "%c = bf16[16]{0} all-reduce-start(%z)\n"
          "%d = f32[64]{0} add(%u, %v)\n")
  assert distributed_cost.collective_bytes(text) == 64 + 32 + 32


# --- sharded equals unsharded --------------------------------------------

OPTIMIZERS = {
    "sgd": lambda: go.sgd(0.05, momentum=0.9),
    "adagrad": lambda: go.adagrad(0.05),
    "rmsprop": lambda: go.rmsprop(0.01, momentum=0.5),
    "adam": lambda: go.adam(0.01),
    "adamw": lambda: go.adamw(0.01),
    "adamw_8bit": lambda: go.adamw_8bit(0.01),
    "adabelief": lambda: go.adabelief(0.01),
    "signsgd": lambda: go.signsgd(0.01, momentum=0.9),
    "lion": lambda: go.lion(0.01),
    "tiger": lambda: go.tiger(0.01),
    "lars": lambda: go.lars(0.5, trust_coefficient=0.01),
    "lamb": lambda: go.lamb(0.01),
    "muon": lambda: go.muon(0.02, adam_learning_rate=0.01),
    "shampoo": lambda: go.shampoo(0.01, precondition_every=2, block_size=16, damping=1e-4),
    "soap": lambda: go.soap(0.01, precondition_every=2),
    "adafactor": lambda: go.adafactor(0.01, min_dim_size_to_factor=8, b1=0.9),
    "adam_mini": lambda: go.adam_mini(0.01, num_heads=4),
    "psgd_kron": lambda: go.psgd_kron(0.01, precond_update_probability=0.5),
    "sam": lambda: go.sam(go.adamw(0.01), rho=0.05),
    "lookahead": lambda: go.lookahead(go.adamw(0.01), sync_period=2),
}
# Square matrices: after one gradient both of SOAP's factors are full rank, so
# its first eigenbasis is unique; a rank-deficient factor's basis is arbitrary
# in its null space, where Adam turns round-off into O(1) steps (FIELD_NOTES).
# "experts": a stack of 8 (16, 8) matrices (its name makes it one: batch axis 0).
SHAPES = {"q": (32, 32), "k": (32, 32), "v": (32, 32), "out": (64, 64), "bias": (32,),
          "emb": (16, 8), "experts": (8, 16, 8)}


def _loss(params, target):
  return sum(jnp.sum(jnp.sin(params[k] - target[k]) ** 2) for k in params)


def _problem(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(0.5 * rng.standard_normal(s), dtype) for k, s in SHAPES.items()}
  target = {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}
  return params, target


# SOAP's first Adam step in a fresh eigenbasis is sign-like and its bases
# rotate with round-off: perturbing the initial params by 1e-9 (relative)
# moves its float64 result by 3% after 5 steps (measured,
# test_soap_is_this_sensitive_by_itself). So the 1e-9 differences of a
# sharded matmul's summation order in float32 grow to 1e-2 in both runs
# alike; SOAP is compared in float64, where they start at 1e-16. So is
# Shampoo: its inverse roots of the early, badly conditioned factors take the
# float32 summation-order differences to 1.2e-5 relative on a Zen 3 CPU
# without AVX-512 (under 1e-5 on Zen 4), against this file's 1e-5 bound.
_FLOAT64 = {"soap", "shampoo"}


def _compared(name):
  """(context, dtype) of a comparison: float64 for SOAP, float32 otherwise."""
  if name in _FLOAT64:
    return jax.enable_x64(True), jnp.float64
  return contextlib.nullcontext(), jnp.float32


def _run(tx, params, target, steps=5, state=None):
  tx = optax.with_extra_args_support(tx)
  state = tx.init(params) if state is None else state
  grad_fn = jax.grad(_loss)

  @jax.jit
  def step(params, state, target):
    grads = grad_fn(params, target)
    updates, state = tx.update(
        grads, state, params, grad_fn=lambda p: grad_fn(p, target))
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state, target)
  return params


def _relative(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _sharded_run(make, mesh, specs, params, target):
  tx = make()
  shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  with jax.set_mesh(mesh):
    placed = jax.device_put(params, shardings)
    placed_target = jax.device_put(target, shardings)
    state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, placed))(placed)
    new = _run(tx, placed, placed_target, state=state)
  for k, leaf in new.items():
    assert leaf.sharding.is_equivalent_to(shardings[k], leaf.ndim), k
  return new


_FSDP = {k: P("d", *[None] * (len(s) - 1)) for k, s in SHAPES.items()}


@functools.cache
def _reference(name):
  """The unsharded run of ``name`` on ``_problem``, shared by the axis types."""
  context, dtype = _compared(name)
  with context:
    return _run(OPTIMIZERS[name](), *_problem(dtype))


@pytest.mark.parametrize("axis_type", list(AXIS_TYPES))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_sharded_equals_unsharded_over_five_steps(name, axis_type):
  context, dtype = _compared(name)
  with context:
    params, target = _problem(dtype)
    reference = _reference(name)
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AXIS_TYPES[axis_type],))
    sharded = _sharded_run(OPTIMIZERS[name], mesh, _FSDP, params, target)
  for k in SHAPES:
    assert _relative(sharded[k], reference[k]) <= 1e-5, (k, _relative(sharded[k], reference[k]))
  # The run went somewhere.
  assert max(_relative(reference[k], params[k]) for k in SHAPES) > 1e-3


def test_soap_is_this_sensitive_by_itself():
  """Why SOAP is compared in float64 (see ``_FLOAT64``): unsharded, on one
  device, a 1e-9 relative change of the initial params moves the result of 5
  steps by more than 1e-3."""
  with jax.enable_x64(True):
    params, target = _problem(jnp.float64)
    reference = _run(OPTIMIZERS["soap"](), params, target)
    nudged = _run(OPTIMIZERS["soap"](), jax.tree.map(lambda x: x * (1 + 1e-9), params), target)
  assert max(_relative(nudged[k], reference[k]) for k in SHAPES) > 1e-3



@pytest.mark.parametrize("name", sorted(helpers.MATRIX_TRANSFORMS))
def test_matrix_work_is_traced_once_per_shape_on_a_mesh(name):
  """On an 8-device Explicit mesh as on one device: the owners' per-matrix
  program is traced once per distinct shape (the same matrix products for
  two and eight matrices of each shape)."""
  mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,))
  factory = helpers.MATRIX_TRANSFORMS[name]

  def products(per_shape):
    tree = helpers.two_shape_tree(per_shape)
    with jax.set_mesh(mesh):
      placed = jax.device_put(tree, NamedSharding(mesh, P("d")))
      tx = factory()
      state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, placed))(placed)
      return helpers.matrix_products(tx, placed, state)

  assert products(2) == products(8) > 0


# --- edge cases ----------------------------------------------------------


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_fewer_matrices_than_devices(name):
  """Three 32x32 matrices on 8 devices: the step pads the stack with zero
  matrices to 8 entries, one per device, and the result is the unsharded
  one; the state stores the 3 real entries (the same shape on any mesh),
  split along their rows, 1/8 of them per device."""
  context, dtype = _compared(name)
  keep = ("q", "k", "v", "bias")
  specs = {k: _FSDP[k] for k in keep}
  mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,))
  with context:
    params, target = _problem(dtype)
    params = {k: params[k] for k in keep}
    target = {k: target[k] for k in keep}
    reference = _run(OPTIMIZERS[name](), params, target)
    sharded = _sharded_run(OPTIMIZERS[name], mesh, specs, params, target)
  for k in keep:
    assert _relative(sharded[k], reference[k]) <= 1e-5, k
  with jax.set_mesh(mesh):
    placed = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in specs.items()})
    tx = OPTIMIZERS[name]()
    state = jax.jit(tx.init)(placed)
  stacks = [x for x in jax.tree.leaves(state) if x.ndim == 3]
  for x in stacks:
    # 3 matrices (times their Kronecker blocks), not padded to 8.
    assert x.shape[0] % 3 == 0 and x.shape[0] % 8, x.shape
    assert x.addressable_shards[0].data.size * 8 == x.size, x.sharding
  if name == "muon":  # Muon keeps no stacks: the padding is inside the step
    assert not stacks
  else:
    assert stacks


def test_a_kronecker_block_split_over_devices():
  """A 24x20 leaf on 8 devices holds 3 rows per device; 8x8 blocks span
  three devices each. Matrices travel whole to their owners and back."""
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.standard_normal((24, 20)), jnp.float32)}
  target = {"w": jnp.asarray(rng.standard_normal((24, 20)), jnp.float32)}
  make = lambda: go.shampoo(0.01, precondition_every=1, block_size=8, damping=1e-4)
  reference = _run(make(), params, target)
  mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,))
  sharded = _sharded_run(make, mesh, {"w": P("d", None)}, params, target)
  assert _relative(sharded["w"], reference["w"]) <= 1e-5


@pytest.mark.parametrize("name", ["adamw", "muon", "shampoo", "soap", "adamw_8bit"])
def test_two_axis_data_by_model_mesh(name):
  """Tensor-parallel columns, FSDP rows, 2-D and replicated leaves on a
  (data 2, model 4) mesh; stacks split over both axes."""
  context, dtype = _compared(name)
  specs = {"q": P(None, "model"), "k": P("data", "model"), "v": P("model", None),
           "out": P("data", None), "bias": P(), "emb": P(), "experts": P("data", None, None)}
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with context:
    params, target = _problem(dtype)
    reference = _run(OPTIMIZERS[name](), params, target)
    sharded = _sharded_run(OPTIMIZERS[name], mesh, specs, params, target)
    shardings = gt.state_shardings(OPTIMIZERS[name](), jax.device_put(
        params, {k: NamedSharding(mesh, s) for k, s in specs.items()}))
  for k in SHAPES:
    assert _relative(sharded[k], reference[k]) <= 1e-5, k
  for sharding in jax.tree.leaves(shardings):
    assert sharding.mesh.axis_names == ("data", "model")
  if name in ("shampoo", "soap"):
    # Split over both axes: along the stack, or along the rows where 8 does
    # not divide the stack (stored unpadded).
    # (The expert stack's element-wise state, 3-D too, is laid out like it.)
    axes = ("data", "model")
    stack_specs = {s.spec for s in jax.tree.leaves(shardings)
                   if len(s.spec) == 3} - {specs["experts"]}
    assert stack_specs and stack_specs <= {P(axes, None, None), P(None, axes, None)}


def test_replicated_params_still_split_the_work():
  """Data parallel: each device holds every matrix, orthogonalizes its own
  slice of each stack (no transfer in) and gathers the results."""
  (row,) = distributed_cost.measure(8, ["muon"], ["explicit"], width=64, replicated=True)
  assert row["flops"] <= 0.2, row
  params, target = _problem()
  mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,))
  reference = _run(OPTIMIZERS["muon"](), params, target)
  sharded = _sharded_run(OPTIMIZERS["muon"], mesh, {k: P() for k in SHAPES}, params, target)
  for k in SHAPES:
    assert _relative(sharded[k], reference[k]) <= 1e-5


# --- multi-host ----------------------------------------------------------


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker(out, process_id, processes, port, devices, *args, cpus=None):
  # Small programs: compiled as tests/conftest.py compiles them. ``cpus``:
  # the worker runs on that many cores (XLA:CPU's thread pool has one thread
  # per core), pinned before it imports jax.
  flags = (f"--xla_force_host_platform_device_count={devices}"
           " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             GRADTX_TEST_CPUS="" if cpus is None else str(cpus))
  return subprocess.Popen(
      [sys.executable, str(ROOT / "tests" / "multihost_worker.py"), str(out),
       str(process_id), str(processes), str(port), *args],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finished(processes, timeout=900):
  """Each process's output, all killed if one is still running ``timeout``
  seconds from now: a hang detector (the runs take 15-60 s), not a bound on
  their speed, so that a deadlock fails the test instead of stalling CI."""
  deadline = time.monotonic() + timeout
  try:
    return [process.communicate(timeout=max(0.0, deadline - time.monotonic()))[0]
            for process in processes]
  except subprocess.TimeoutExpired:
    for process in processes:
      process.kill()
      process.communicate()
    pytest.fail(f"a worker was still running after {timeout} s (hung)")


def test_two_processes_equal_one_process(tmp_path):
  single = _worker(tmp_path / "single.npz", 0, 1, 0, 8)
  port = _free_port()
  workers = [_worker(tmp_path / "multi.npz", i, 2, port, 4) for i in range(2)]
  processes = [single, *workers]
  for process, output in zip(processes, _finished(processes)):
    assert process.returncode == 0, output[-3000:]
  one, two = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
  assert set(one.files) == set(two.files)
  assert {k.split("/")[0] for k in one.files} == {
      "adamw", "muon", "shampoo", "soap", "adamw_8bit"}
  for k in one.files:
    assert _relative(two[k], one[k]) <= 1e-5, k


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins the workers' cores")
def test_psgd_kron_on_two_processes_of_two_devices_fits_stacks(tmp_path):
  """PSGD Kron's triangular solve, vmapped over the entries of a stack split
  below its layer axis (and over a group of same-shape matrices), was one
  batched LAPACK call per device; jaxlib 0.10 hands its batch to XLA:CPU's
  thread pool and waits, so with as many devices per process as the pool has
  threads (2 devices, 2 cores) every thread waited: the first fit hung (3
  times in 4 on the old code; tests/test_integration.py's
  test_no_batched_lapack_call_on_cpu catches the batched call every time).
  On CPU it is now one call per matrix (``one_matrix_per_call_on_cpu``);
  two processes x 2 devices equal one process with 4."""
  single = _worker(tmp_path / "single.npz", 0, 1, 0, 4, "stacks", cpus=2)
  port = _free_port()
  workers = [_worker(tmp_path / "multi.npz", i, 2, port, 2, "stacks", cpus=2) for i in range(2)]
  processes = [single, *workers]
  for process, output in zip(processes, _finished(processes)):
    assert process.returncode == 0, output[-3000:]
  one, two = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
  assert sorted(one.files) == sorted(two.files) == [
      "psgd_kron/a", "psgd_kron/b", "psgd_kron/layers"]
  for k in one.files:
    assert _relative(two[k], one[k]) <= 1e-5, k
