"""Compile time of one optimizer step against the number of layers, next to optax.adamw.

The tree is ``layers`` blocks of four same-shaped-per-block dense kernels
(d×3d, d×d, d×4d, 4d×d) with their biases, so it holds ``4·layers`` matrices
of four shapes. For every optimizer, one jitted ``update + apply_updates``
(``harness.donated_step``) is lowered and compiled from abstract arguments
(nothing runs), and the seconds of ``lower`` + ``compile`` are reported next
to optax.adamw's, compiled in the same process at the same size: ratios to the
anchor, and the growth from the smallest to the largest tree. A transform
whose program holds one copy of its per-matrix work per distinct shape
(stacks, ``lax.map``) grows like optax.adamw; one that traces per leaf grows
with the number of matrices.

    python -m benchmarks.compile_time                       # 48 and 192 matrices
    python -m benchmarks.compile_time --layers 12 24 48 --d 128 --repeats 3
    python -m benchmarks.compile_time --optimizers muon shampoo
    python -m benchmarks.compile_time --all --layers 48 --repeats 3   # every gradtx optimizer
    python -m benchmarks.compile_time --optimizers muon --against HEAD~1
    python -m benchmarks.compile_time --optimizers adamw_8bit --against HEAD --step-rounds 20
    python -m benchmarks.compile_time --transforms --layers 12 48   # the matrix transforms alone
    python -m benchmarks.compile_time --scanned --layers 12 48      # layers stacked (nnx.scan)
    python -m benchmarks.compile_time --references --optimizers shampoo psgd_kron
    python -m benchmarks.compile_time --devices 8 --optimizers muon shampoo   # on a mesh

Each figure is the minimum over ``--repeats`` compilations (the JAX caches
are cleared before each, so every one is a cold trace, lower and compile),
taken in rounds that visit every contender once in a new random order, so a
drift in the machine's speed reaches all of them alike.

``--transforms`` compiles the matrix transforms alone (Newton–Schulz, the
Kronecker preconditioner, SOAP, PSGD Kron) on the kernels only, next to
``optax.scale_by_adam``: what the optimizers add to a per-leaf transform.
Besides the growth, every table gives the milliseconds of compile each
added matrix costs (from the smallest to the largest tree): a per-matrix
program stacked or mapped once per shape costs no more per added matrix than
a per-leaf element-wise transform does.

``--scanned`` stacks the layers as ``nnx.scan`` does: one leaf per kernel
and bias with a leading layer axis, 8 leaves at any depth; every gradtx
optimizer that takes a matrix view gets ``gt.stacked_matrix_view()`` (one
matrix per layer), and optax.contrib.muon, which has no such view, is left
out. What a deep model's first step costs when its layers are scanned.

``--references`` adds the methods' own JAX implementations (psgd-jax's
``kron``, precondition's ``distributed_shampoo``; ``benchmarks.references``,
optional packages) next to gradtx's psgd_kron and shampoo.

``--devices N`` compiles the same steps for N fake CPU devices (a one-axis
Explicit mesh ``d``), the parameters laid out FSDP-style: a kernel's rows
``P('d', None)``, a bias ``P('d')`` (a dimension N does not divide stays
whole), the state as ``jax.eval_shape(tx.init)`` lays it out; optax.adamw is
compiled on the same mesh. The matrix optimizers' mesh path (owner stacks,
collectives) is another program than their one-device path: this is its
compile time, and with ``--step-rounds`` its step time on the fake devices.

``--step-rounds N`` then times the compiled steps themselves on the largest
tree (random parameters and gradients), one step of each contender per round
in a new random order (``harness.time_round_robin``): a change that buys
compile time must not cost step time.
"""

import argparse
import contextlib
import functools
import inspect
import os
import random
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from benchmarks import harness, references, revisions
from gradtx import optimizers as go
from gradtx import transforms as gt

ANCHOR = "optax.adamw"
LEARNING_RATE = 1e-3



# --all adds every other optimizer of gradtx.optimizers built from a learning
# rate alone (the wrappers, K-FAC and SAM take a model or an optimizer).
MORE_OPTIMIZERS = (
    "acprop", "adabelief", "adadelta", "adagrad", "adam", "adamax", "adamaxw", "adamh",
    "adamuon", "adan", "ademamix", "adopt", "adoptw", "cocob", "dadapt_adamw", "dion", "dog",
    "dowg", "fromage",
    "lars", "lion", "madgrad", "mars_adamw", "muonh", "normuon", "novograd", "prodigy", "radam",
    "radamw", "rmsprop", "schedule_free_adamw", "schedule_free_sgd", "sgd", "signsgd", "sm3",
    "soap_muon", "tiger", "vmuon", "yogi",
)


def gradtx_optimizers(
    optimizers, matrix_view: Optional[Callable] = None,
) -> dict[str, Callable[[], optax.GradientTransformation]]:
  """The contenders, built from a ``gradtx.optimizers`` module (any revision's);
  ``matrix_view`` goes to those that take one."""

  def build(name, **kwargs):
    def make():
      factory = getattr(optimizers, name)  # on use: a deprecated name warns then
      takes_view = "matrix_view" in inspect.signature(factory).parameters
      view = {"matrix_view": matrix_view} if matrix_view is not None and takes_view else {}
      return factory(LEARNING_RATE, **kwargs, **view)

    make.factory = name
    return make

  return {
      "adamw": build("adamw"),
      "muon": build("muon"),
      "muon:gram": build("muon", method="gram"),
      "adamuon_lm": build("adamuon_lm"),
      "shampoo": build("shampoo"),
      "soap": build("soap"),
      "adamw_8bit": build("adamw_8bit"),
      "adafactor": build("adafactor"),
      "adam_mini": build("adam_mini"),
      "lamb": build("lamb"),
      "psgd_kron": build("psgd_kron"),
      **{name: build(name) for name in MORE_OPTIMIZERS},
  }


# optax's own versions of the same methods, for reference next to the anchor.
OPTAX_REFERENCES = {
    "optax.adafactor": lambda: optax.adafactor(LEARNING_RATE),
    "optax.lamb": lambda: optax.lamb(LEARNING_RATE),
    "optax.contrib.muon": lambda: optax.contrib.muon(LEARNING_RATE),
}

OPTIMIZERS = {
    ANCHOR: lambda: optax.adamw(LEARNING_RATE), **OPTAX_REFERENCES, **gradtx_optimizers(go),
}

# --references: the methods' own implementations (optional packages, built on use).
METHOD_REFERENCES = {
    name: functools.partial(factory, LEARNING_RATE)
    for name, factory in references.REFERENCES.items()
}

# Not in --scanned: no per-layer view of a stacked kernel.
SCANNED_UNSUPPORTED = ("optax.contrib.muon",)

# --transforms: the matrix transforms alone, next to a per-leaf transform.
TRANSFORM_ANCHOR = "optax.scale_by_adam"
TRANSFORMS = {
    TRANSFORM_ANCHOR: optax.scale_by_adam,
    "orthogonalize_newton_schulz": gt.orthogonalize_newton_schulz,
    "kronecker_precondition": gt.kronecker_precondition,
    "scale_by_soap": gt.scale_by_soap,
    "scale_by_psgd_kron": gt.scale_by_psgd_kron,
}


def layered_tree(layers: int, d: int, biases: bool = True, scanned: bool = False,
                 mesh: Optional[jax.sharding.Mesh] = None) -> dict:
  """``layers`` blocks of 4 kernels (and 4 biases), float32, as abstract arrays.

  ``scanned``: as ``nnx.scan`` stacks them, one leaf per kernel (and bias)
  with a leading layer axis: 8 leaves whatever the depth. ``mesh``: laid out
  on its one axis FSDP-style (``fsdp_sharding``).
  """
  shapes = {"qkv": (d, 3 * d), "out": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}

  def spec(shape):
    sharding = None if mesh is None else fsdp_sharding(shape, mesh, scanned)
    return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)

  if scanned:
    return {"layers": {
        name: {"kernel": spec((layers, *shape)),
               **({"bias": spec((layers, shape[1]))} if biases else {})}
        for name, shape in shapes.items()}}
  return {
      f"layer_{i}": {
          name: {"kernel": spec(shape), **({"bias": spec(shape[1:])} if biases else {})}
          for name, shape in shapes.items()
      }
      for i in range(layers)
  }


def fsdp_sharding(shape: tuple, mesh: jax.sharding.Mesh,
                  scanned: bool = False) -> jax.sharding.NamedSharding:
  """A leaf's rows over the mesh's one axis (past a scanned leaf's layer axis),
  whole where the axis does not divide them."""
  (axis,), size = mesh.axis_names, mesh.devices.size
  row = 1 if scanned else 0
  spec = [None] * len(shape)
  if shape[row] % size == 0:
    spec[row] = axis
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def compile_seconds(tx: optax.GradientTransformation, params: dict) -> float:
  """Seconds to trace, lower and compile ``tx``'s donated step, from cold caches."""
  jax.clear_caches()
  state = jax.eval_shape(tx.init, params)
  start = time.perf_counter()
  harness.donated_step(tx).lower(params, state, params).compile()
  return time.perf_counter() - start


def measure(builders, layers, d, repeats, biases=True, scanned=False,
            mesh: Optional[jax.sharding.Mesh] = None) -> dict[str, dict[int, float]]:
  """Per contender and tree size, the fastest of ``repeats`` cold compiles,
  in rounds that visit the contenders in a new random order each."""
  rng = random.Random(0)
  seconds = {name: {} for name in builders}
  for count in layers:
    params = layered_tree(count, d, biases, scanned, mesh)
    for _ in range(repeats):
      for name in rng.sample(list(builders), len(builders)):
        took = compile_seconds(builders[name](), params)
        seconds[name][count] = min(seconds[name].get(count, took), took)
  return seconds


def step_milliseconds(names, layers: int, d: int, rounds: int, scanned: bool = False,
                      mesh: Optional[jax.sharding.Mesh] = None) -> dict[str, list[float]]:
  """Milliseconds of each contender's step on a random tree of ``layers`` blocks."""
  shapes = layered_tree(layers, d, scanned=scanned, mesh=mesh)
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(0), 2 * len(leaves))
  normal = lambda key, s: jax.device_put(jax.random.normal(key, s.shape, s.dtype), s.sharding)
  params = treedef.unflatten([normal(k, s) for k, s in zip(keys, leaves)])
  grads = treedef.unflatten(
      [1e-2 * normal(k, s) for k, s in zip(keys[len(leaves):], leaves)])
  contenders = {name: harness.stepper(OPTIMIZERS[name](), params, grads) for name in names}
  times = harness.time_round_robin(contenders, rounds=rounds)
  return {name: [1e3 * t for t in ts] for name, ts in times.items()}


def step_table(milliseconds: dict[str, list[float]], window: int = 10) -> str:
  """Min, median and their ratios to optax.adamw's; with three windows of
  ``window`` rounds or more, the amortized step too (``harness.amortized``:
  Shampoo's and SOAP's refresh, one step in 10, is a slow step that the min
  and median drop)."""
  seconds = {name: [m / 1e3 for m in ms] for name, ms in milliseconds.items()}
  return harness.ratio_table(seconds, anchor=ANCHOR, label="optimizer", window=window)


def table(seconds: dict[str, dict[int, float]], layers, anchor_name: str = ANCHOR) -> str:
  anchor = seconds[anchor_name]
  first, last = layers[0], layers[-1]
  header = ["contender"]
  for count in layers:
    header += [f"{4 * count} matrices s", f"x {anchor_name}"]
  if last > first:
    header += [f"growth {4 * first} -> {4 * last}", "ms per added matrix"]
  rows = []
  for name, by_size in seconds.items():
    row = [name]
    for count in layers:
      row += [f"{by_size[count]:.2f}", f"{by_size[count] / anchor[count]:.2f}x"]
    if last > first:
      row += [f"{by_size[last] / by_size[first]:.2f}x",
              f"{1e3 * (by_size[last] - by_size[first]) / (4 * (last - first)):.1f}"]
    rows.append(row)
  return harness.markdown_table(header, rows)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, nargs="+", default=[12, 48])
  parser.add_argument("--d", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS),
                      default=[n for n in OPTIMIZERS if n not in MORE_OPTIMIZERS])
  parser.add_argument("--all", action="store_true",
                      help="every gradtx optimizer built from a learning rate alone")
  parser.add_argument("--against", default="",
                      help="also compile the library at this git revision")
  parser.add_argument("--step-rounds", type=int, default=0,
                      help="also time this many round-robin steps on the largest tree")
  parser.add_argument("--transforms", action="store_true",
                      help="compile the matrix transforms alone, on the kernels only")
  parser.add_argument("--scanned", action="store_true",
                      help="the layers stacked as nnx.scan stacks them (one leaf per kernel)")
  parser.add_argument("--devices", type=int, default=1,
                      help="compile for this many fake CPU devices, parameters FSDP-sharded")
  parser.add_argument("--references", action="store_true",
                      help="also the methods' own implementations (psgd-jax, distributed_shampoo;"
                      f" {references.INSTALL})")
  args = parser.parse_args(argv)
  if args.transforms and (args.against or args.step_rounds):
    parser.error("--transforms takes neither --against nor --step-rounds")
  mesh = fake_device_mesh(parser, args.devices)
  with contextlib.ExitStack() as stack:
    if mesh is not None:
      stack.enter_context(jax.set_mesh(mesh))
    run(parser, args, mesh)


def fake_device_mesh(parser, devices: int) -> Optional[jax.sharding.Mesh]:
  """``devices`` fake CPU devices as a one-axis Explicit mesh; ``None`` for one.

  XLA reads the device count when JAX first uses its CPU backend, which this
  module has not done before ``main``.
  """
  if devices < 1:
    parser.error(f"--devices must be at least 1, got {devices}")
  if devices == 1:
    return None
  flag = f"--xla_force_host_platform_device_count={devices}"
  saved = os.environ.get("XLA_FLAGS")
  os.environ["XLA_FLAGS"] = f"{saved or ''} {flag}".strip()
  try:
    count = jax.device_count()  # starts the backend, if nothing has yet
  finally:  # the flag is read once: leave the caller's environment as it was
    if saved is None:
      del os.environ["XLA_FLAGS"]
    else:
      os.environ["XLA_FLAGS"] = saved
  if count != devices:
    parser.error(f"--devices {devices}: JAX already runs on {count} devices"
                 " (run the module in a fresh process)")
  return jax.make_mesh((devices,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))


def run(parser, args, mesh) -> None:
  print(harness.machine_banner())
  if args.transforms:
    print(f"\nlower + compile of one update+apply step of each transform alone, the kernels"
          f" only (no biases), d = {args.d}, min of {args.repeats}\n")
    seconds = measure(TRANSFORMS, args.layers, args.d, args.repeats, biases=False, mesh=mesh)
    print(table(seconds, args.layers, TRANSFORM_ANCHOR))
    print(harness.closing_line())
    return
  names = [ANCHOR] + [n for n in args.optimizers if n != ANCHOR]
  if args.all:
    names += [n for n in OPTIMIZERS if n not in names and n not in OPTAX_REFERENCES]
  if args.references:
    if args.scanned:
      parser.error("--references takes no --scanned (neither reference is given a layer view)")
    OPTIMIZERS.update(METHOD_REFERENCES)
    names += list(METHOD_REFERENCES)
  if args.scanned:
    # Each gradtx optimizer sees one matrix per layer of a stacked kernel;
    # optax.contrib.muon has no such view (it would run Adam on the stacks).
    OPTIMIZERS.update(gradtx_optimizers(go, gt.stacked_matrix_view()))
    names = [n for n in names if n not in SCANNED_UNSUPPORTED]
  if args.against:
    old_transforms, old_optimizers = revisions.at_revision(args.against)
    view = old_transforms.stacked_matrix_view() if args.scanned else None
    old = gradtx_optimizers(old_optimizers, view)
    missing = [n for n in names if n in old and not hasattr(old_optimizers, old[n].factory)]
    if missing:
      print(f"not at {args.against} (rows left out): {', '.join(missing)}")
    for name in [n for n in names if n in old and n not in missing]:  # optax's rows do not change
      OPTIMIZERS[f"{name} @{args.against}"] = old[name]
      names.append(f"{name} @{args.against}")
  layout = ("scanned: each kernel one leaf with a leading layer axis" if args.scanned
            else "one leaf per kernel per layer")
  if mesh is not None:
    layout += f", FSDP-sharded over {mesh.devices.size} fake devices (Explicit axis)"
  print(f"\nlower + compile of one update+apply step, d = {args.d}, {layout}, min of"
        f" {args.repeats}\n")
  builders = {name: OPTIMIZERS[name] for name in names}
  print(table(measure(builders, args.layers, args.d, args.repeats, scanned=args.scanned,
                      mesh=mesh), args.layers))
  if args.step_rounds:
    print(f"\nstep time, {4 * args.layers[-1]} matrices, {args.step_rounds} rounds round-robin\n")
    print(step_table(step_milliseconds(names, args.layers[-1], args.d, args.step_rounds,
                                       args.scanned, mesh)))
  print(harness.closing_line())


if __name__ == "__main__":
  main()
