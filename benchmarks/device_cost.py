"""The main job on a device mesh (``examples/char_lm.py --devices N``): layout and cost.

The layout: the parameters FSDP (``fsdp_spec``: each split along the first
axis the mesh size divides), the optimizer state laid out by ``init`` as
``gt.state_shardings`` gives it (``sharded_model_and_optimizer``); the main
job splits every batch over the devices (data parallel).

The cost, read from the compiled train step, not timed (``per_device_cost``):
its per-device FLOPs over the same step's on one device
(``single_device_flops``), the per-device share of the optimizer state, and
the bytes its collectives produce on each device (``collective_bytes``,
which benchmarks/distributed_cost.py counts too); ``cost_table`` is the
main job's second table.

The step and the optimizer come from the caller (``examples/char_lm.py``:
its jitted ``train_step(graphdef, state, inputs, targets)`` and a function
of the model building its ``nnx.Optimizer``), so this module does not import
the example.
"""

import math
import re
from typing import Callable, Optional

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter",
               "collective-permute")
_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s64": 8, "s32": 4, "u32": 4,
          "s8": 1, "u8": 1, "pred": 1, "c64": 8, "c128": 16}


def collective_bytes(hlo_text: str) -> int:
  """Bytes produced by the collectives of a compiled (per-device) HLO module."""
  total = 0
  ops = "|".join(COLLECTIVES)
  for line in hlo_text.splitlines():
    match = re.match(rf"\s*%?\S+ = (.*?) (?:{ops})(?:-start)?\(", line)
    if not match:
      continue
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
      if dtype in _BYTES:
        total += math.prod(int(d) for d in dims.split(",") if d) * _BYTES[dtype]
  return total


def fsdp_spec(shape: tuple, devices: int) -> P:
  """Split the first axis the mesh size divides (FSDP); else replicate."""
  for axis, size in enumerate(shape):
    if size % devices == 0 and size >= devices:
      return P(*([None] * axis), "d")
  return P()


def place(tree, mesh: Optional[Mesh], spec_of: Callable):
  """``tree`` on ``mesh``, each leaf by ``spec_of(leaf)``; as is without a mesh."""
  if mesh is None:
    return tree
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec_of(x))), tree)


def sharded_model_and_optimizer(initial, make_optimizer: Callable, mesh: Mesh):
  """FSDP parameters and the optimizer state laid out by ``init`` on an
  Explicit copy of ``mesh`` (as ``gt.state_shardings`` gives it: on Auto axes
  ``jax.jit(tx.init)`` would replicate the state), then retyped for ``mesh``.

  ``initial``: the model's (graphdef, host state); ``make_optimizer(model)``:
  its ``nnx.Optimizer``. Returns (model, optimizer).
  """
  graphdef, host_state = initial
  explicit = Mesh(mesh.devices, mesh.axis_names,
                  axis_types=(AxisType.Explicit,) * len(mesh.axis_names))
  with jax.set_mesh(explicit):
    model = nnx.merge(graphdef, place(host_state, explicit,
                                      lambda x: fsdp_spec(x.shape, mesh.size)))
    optimizer = make_optimizer(model)
  graphdef, state = nnx.split((model, optimizer))
  state = jax.tree.map(
      lambda x: jax.device_put(x, NamedSharding(mesh, x.sharding.spec))
      if isinstance(x, jax.Array) else x, state)
  return nnx.merge(graphdef, state)


def per_device_cost(step: Callable, graphdef, state, batch, single_device_flops: float) -> dict:
  """The compiled ``step``'s per-device FLOPs (over the 1-device step's), the
  state's per-device bytes (over its total) and its collective bytes."""
  compiled = step.lower(graphdef, state, *batch).compile()
  leaves = [x for x in jax.tree.leaves(state[1]) if isinstance(x, jax.Array)]
  local = sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves)
  return {"flops_ratio": compiled.cost_analysis()["flops"] / single_device_flops,
          "state_ratio": local / max(1, sum(leaf.nbytes for leaf in leaves)),
          "collective_mb": collective_bytes(compiled.as_text()) / 2**20}


def single_device_flops(step: Callable, initial, make_optimizer: Callable, batch) -> float:
  """The FLOPs of the same train step, with its own state, on one device (a
  mesh's state stacks are padded for its size and do not fit another)."""
  graphdef, host_state = initial
  model = nnx.merge(graphdef, jax.device_put(host_state))
  graphdef, state = nnx.split((model, make_optimizer(model)))
  batch = jax.device_put(batch, jax.devices()[0])
  return step.lower(graphdef, state, *batch).compile().cost_analysis()["flops"]


def cost_table(results: dict, devices: int) -> str:
  """The per-device cost of each optimizer's train step on the mesh."""
  lines = [f"| optimizer ({devices} devices) | per-device FLOPs / 1-device step"
           " | per-device state / all state | collective MiB per device per step |",
           "|---|---:|---:|---:|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['flops_ratio']:.3f} | {r['state_ratio']:.3f}"
                 f" | {r['collective_mb']:.2f} |")
  return "\n".join(lines)
