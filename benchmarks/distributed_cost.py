"""Per-device cost of one optimizer update on a device mesh, from the compiled step.

For each optimizer and mesh axis type, the update (``tx.update`` +
``optax.apply_updates``) is compiled for N devices and read, not timed:

* FLOPs per device (``compiled.cost_analysis()["flops"]``) over the FLOPs of
  the same update compiled for one device;
* optimizer-state bytes held by one device (its ``addressable_shards``) over
  the state's total bytes;
* bytes produced by the collectives (all-gather, all-reduce, all-to-all,
  reduce-scatter, collective-permute) of the per-device program
  (``compiled.as_text()``), over one device's share of the parameter bytes.

Deterministic (no timing), so it measures scale on a 2-core machine with fake
CPU devices. XLA's cost analysis counts no FLOPs for LAPACK custom calls
(eigh, QR), so Shampoo's and SOAP's roots and bases do not appear in the FLOPs
column (they run on the owners like the rest).

The model (as in issue 10): 8 blocks of qkv 256×768, proj 256×256, fc
256×1024, out 1024×256 and a 1024 bias, parameters FSDP-style P('d', None)
(biases P('d')), state from ``jax.jit(tx.init)`` inside ``jax.set_mesh``
(Explicit) or with ``out_shardings=gt.state_shardings(tx, params)`` (Auto),
Shampoo and SOAP with ``precondition_every=1``.

  python -m benchmarks.distributed_cost                   # 8 devices
  python -m benchmarks.distributed_cost --devices 2,4,8   # scaling
  python -m benchmarks.distributed_cost --blocks 3        # 3 matrices a shape on 8
  python -m benchmarks.distributed_cost --against HEAD~1  # the library at HEAD~1
  python -m benchmarks.distributed_cost --mesh 2,2,2      # (data, fsdp, tensor)
  python -m benchmarks.distributed_cost --mesh 2,2,2 --kernel-spec fsdp,None
  python -m benchmarks.distributed_cost --scanned          # one stacked leaf per kernel
  python -m benchmarks.distributed_cost --mesh 1,1,8 --kernel-spec None,tensor --width 2048
"""

import argparse
import json
import os
import subprocess
import sys

_DEVICES_FLAG = "--xla_force_host_platform_device_count"

SHAPES = {"qkv": (256, 768), "proj": (256, 256), "fc": (256, 1024),
          "out": (1024, 256), "bias": (1024,)}
DEFAULT_OPTIMIZERS = "adamw,muon,shampoo,soap,adamw_8bit,optax:adamw,optax:muon"


def optimizers(revision: str = "", scanned: bool = False):
  """The contenders; ``revision``: gradtx as it was at that git revision;
  ``scanned``: the matrix optimizers read a stacked leaf as one matrix per
  layer (``gt.stacked_matrix_view()``)."""
  import optax

  if revision:
    import importlib

    from benchmarks import revisions
    gt, go = revisions.at_revision(revision)
    # measure()'s cost-analysis setting, on the revision's own copy too (its
    # large stacks were otherwise walked in a loop counted once: FLOPs 0.579
    # for 0.500 at the same code).
    try:
      stacks = importlib.import_module(f"{go.__name__.rpartition('.')[0]}._internal.block_stacks")
      stacks.PER_MATRIX_ON_CPU = float("inf")
    except ModuleNotFoundError:  # a revision before block stacks
      pass
  else:
    from gradtx import optimizers as go
    from gradtx import transforms as gt
  view = {"matrix_view": gt.stacked_matrix_view()} if scanned else {}
  return {
      "adamw": lambda: go.adamw(1e-3),
      "muon": lambda: go.muon(0.02, adam_learning_rate=1e-3, **view),
      "shampoo": lambda: go.shampoo(1e-3, precondition_every=1, **view),
      "soap": lambda: go.soap(1e-3, precondition_every=1, **view),
      "adamw_8bit": lambda: go.adamw_8bit(1e-3),
      "psgd_kron": lambda: go.psgd_kron(1e-3, precond_update_probability=1.0, **view),
      "optax:adamw": lambda: optax.adamw(1e-3),
      "optax:muon": lambda: optax.contrib.muon(0.02),
  }


def measure(devices: int, names: list, axis_types: list, width: int = 256,
            blocks: int = 8, replicated: bool = False, revision: str = "",
            mesh_shape: tuple = (), kernel_spec: tuple = ("fsdp", "tensor"),
            scanned: bool = False) -> list:
  """The table's rows; ``width`` scales the model (``SHAPES`` at 256).

  ``replicated``: data-parallel parameters (every device holds all of them)
  instead of FSDP rows. ``scanned``: the blocks stacked as ``nnx.scan``
  stacks them, one leaf per kernel with a leading layer axis, split below it
  (``P(None, 'd', None)``; on a (data, fsdp, tensor) mesh ``P(None,
  *kernel_spec)``).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  from gradtx._internal import block_stacks

  # XLA's cost analysis counts a while loop's body once: with large stacks
  # walked one matrix at a time (lax.map, CPU only) the one-device program
  # would look 1/n as costly. Batched, every matrix's FLOPs are counted.
  block_stacks.PER_MATRIX_ON_CPU = float("inf")
  rng = np.random.default_rng(0)
  shapes = {k: tuple(d * width // 256 for d in s) for k, s in SHAPES.items()}
  if scanned:
    params = {"layers": {k: jnp.asarray(0.02 * rng.standard_normal((blocks, *s)), jnp.float32)
                         for k, s in shapes.items()}}
  else:
    params = {f"block{i}": {k: jnp.asarray(0.02 * rng.standard_normal(s), jnp.float32)
                            for k, s in shapes.items()} for i in range(blocks)}
  grads = jax.tree.map(lambda p: jnp.cos(50 * p), params)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  factories = optimizers(revision, scanned)
  lead = (None,) if scanned else ()  # a scanned stack's layer axis stays whole

  def step(tx):
    def run(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    return jax.jit(run)

  def flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))

  rows = []
  for name in names:
    tx = factories[name]()
    state = tx.init(params)
    single = step(tx).lower(params, state, grads).compile()
    single_flops = flops(single)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    for axis_type in axis_types:
      kind = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[axis_type]
      if mesh_shape:
        # (data, fsdp, tensor): matrices split over fsdp rows and tensor columns.
        mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"),
                             axis_types=(kind,) * len(mesh_shape))
        spec = lambda x: P(*lead, *kernel_spec) if x.ndim == 2 + len(lead) else P(*lead, "fsdp")
      else:
        mesh = jax.make_mesh((devices,), ("d",), axis_types=(kind,))
        spec = lambda x: P(*lead, "d", None) if x.ndim == 2 + len(lead) else P(*lead, "d")
      shardings = jax.tree.map(
          lambda x, mesh=mesh, spec=spec: NamedSharding(
              mesh, P() if replicated else spec(x)), params)
      try:
        rows.append(_measure_on_mesh(
            tx, mesh, kind, params, grads, shardings, step, flops, single_flops,
            state_bytes, param_bytes, name, axis_type, devices))
      except Exception as error:  # an anchor that does not run on this mesh
        rows.append(dict(optimizer=name, axis_type=axis_type, devices=devices,
                         error=f"{type(error).__name__}: {str(error)[:120]}"))
  return rows


def collective_bytes(hlo_text: str) -> int:
  """The main job's count (``benchmarks.device_cost.collective_bytes``), imported
  late: the workers import jax only once ``XLA_FLAGS`` is set."""
  from benchmarks import device_cost
  return device_cost.collective_bytes(hlo_text)


def _measure_on_mesh(tx, mesh, kind, params, grads, shardings, step, flops,
                     single_flops, state_bytes, param_bytes, name, axis_type, devices):
  import jax
  from jax.sharding import AxisType

  from gradtx import transforms as gt

  with jax.set_mesh(mesh):
    placed = jax.device_put(params, shardings)
    placed_grads = jax.device_put(grads, shardings)
    if kind == AxisType.Explicit:
      state = jax.jit(tx.init)(placed)
    else:
      state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, placed))(placed)
    compiled = step(tx).lower(placed, state, placed_grads).compile()
  per_device_state = sum(
      x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
  return dict(
      optimizer=name, axis_type=axis_type, devices=devices,
      flops=flops(compiled) / single_flops if single_flops else float("nan"),
      state=per_device_state / state_bytes,
      collectives=collective_bytes(compiled.as_text()) / (param_bytes / devices),
  )


def table(rows: list) -> str:
  lines = ["| optimizer | axis type | devices | per-device FLOPs / 1-device |"
           " per-device state / 1-device | collective bytes per device /"
           " (param bytes / N) |", "|---|---|--:|--:|--:|--:|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['optimizer']} | {r['axis_type']} | {r['devices']} |"
                   f" fails: {r['error']} | | |")
      continue
    lines.append(f"| {r['optimizer']} | {r['axis_type']} | {r['devices']} |"
                 f" {r['flops']:.3f} | {r['state']:.3f} | {r['collectives']:.2f} |")
  return "\n".join(lines)


def _kernel_spec(text: str) -> tuple:
  """``"fsdp,tensor"`` -> ("fsdp", "tensor"); ``None`` for a replicated axis."""
  return tuple(None if a == "None" else a for a in text.split(","))


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", default="8",
                      help="comma-separated device counts, one subprocess each")
  parser.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS)
  parser.add_argument("--axis-types", default="explicit,auto")
  parser.add_argument("--json", help="write the rows to this file")
  parser.add_argument("--blocks", type=int, default=8,
                      help="transformer blocks: matrices of each shape (8 divides 2, 4, 8)")
  parser.add_argument("--against", default="",
                      help="measure the library at this git revision instead")
  parser.add_argument("--mesh", default="",
                      help="a (data, fsdp, tensor) mesh shape, e.g. 2,2,2, instead of one axis")
  parser.add_argument("--kernel-spec", default="fsdp,tensor",
                      help="with --mesh: the kernels' PartitionSpec, e.g. fsdp,None or None,tensor")
  parser.add_argument("--scanned", action="store_true",
                      help="the blocks stacked as nnx.scan stacks them, split below the layer axis")
  parser.add_argument("--width", type=int, default=256,
                      help="the model width (the shapes scale with it)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  names, axis_types = args.optimizers.split(","), args.axis_types.split(",")
  if args.worker:
    mesh_shape = tuple(int(n) for n in args.mesh.split(",")) if args.mesh else ()
    rows = measure(int(args.devices), names, axis_types, width=args.width,
                   blocks=args.blocks, revision=args.against, mesh_shape=mesh_shape,
                   kernel_spec=_kernel_spec(args.kernel_spec), scanned=args.scanned)
    print(json.dumps(rows))
    return rows
  rows = []
  for devices in (int(d) for d in args.devices.split(",")):
    env = dict(os.environ, XLA_FLAGS=f"{_DEVICES_FLAG}={devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.distributed_cost", "--worker",
         "--devices", str(devices), "--optimizers", args.optimizers,
         "--axis-types", args.axis_types, "--blocks", str(args.blocks),
         "--against", args.against, "--mesh", args.mesh, "--kernel-spec", args.kernel_spec,
         "--width", str(args.width), *(["--scanned"] if args.scanned else [])],
        env=env, capture_output=True, text=True, check=True)
    rows += json.loads(out.stdout.strip().splitlines()[-1])
  print(table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
