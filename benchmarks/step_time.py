"""Time of one AdamW step on CPU: gradtx vs optax vs torch, as ratios to optax.

A step is ``harness.donated_step``: ``tx.update`` + ``optax.apply_updates``
under one ``jax.jit`` with the parameters and the optimizer state donated, or
``torch.optim.AdamW.step`` (``foreach=True`` and ``fused=True``). All
implementations live in the same process and are timed by
``harness.time_round_robin`` (one step of each per round, in a new random
order every round), so a burst of load from elsewhere on the machine hits them
all alike. The bandwidth is the effective one at 28 bytes per float32
parameter: read g, p, m, v and write p, m, v, the least any implementation has
to move.

  python -m benchmarks.step_time                     # 16M vector and GPT tree
  python -m benchmarks.step_time --quick             # small sizes, a smoke test
  python -m benchmarks.step_time --impls all         # also benchmarks/adamw_variants.py
  XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion \\
      python -m benchmarks.step_time                 # XLA:CPU flags via the env

See RESULTS.md ("AdamW step time") for the numbers and what was tried.
"""

import argparse
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax
import torch

from benchmarks import adamw_variants, harness
from benchmarks.workloads import Workload, params_and_grads, parse_workload
from gradtx import optimizers as go

BYTES_PER_PARAM = 28
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
ANCHOR = "optax"
DEFAULT_IMPLS = ("optax", "gradtx", "torch-foreach", "torch-fused")


class Runner(NamedTuple):
  """One implementation ready to run: ``step()`` takes one timed step."""

  step: Callable[[], None]
  params: Callable[[], dict[str, np.ndarray]]
  note: str


def count_big_copies(hlo_text: str) -> int:
  """Copies of non-scalar arrays in compiled HLO: what failed donation leaves."""
  return sum(
      1 for line in hlo_text.splitlines()
      if " copy(" in line and "[]" not in line.split("=")[1].split("copy(")[0]
  )


def count_loop_fusions(hlo_text: str) -> int:
  """Non-scalar fusions in the entry computation: passes over the data, roughly."""
  entry = hlo_text.split("\nENTRY ")[1]
  return sum(
      1 for line in entry.splitlines()
      if " fusion(" in line and "[]" not in line.split("=")[1].split("fusion(")[0]
  )


def jax_runner(step: harness.Step, init: Callable, workload: Workload,
               compiler_options: dict) -> Runner:
  """``harness.donated(step)`` compiled with ``compiler_options``, on the workload."""
  params, grads = params_and_grads(workload)
  state = init(params)
  lowered = harness.donated(step).lower(params, state, grads)
  compiled = lowered.compile(compiler_options)
  hlo = compiled.as_text()
  note = f"{count_loop_fusions(hlo)} loops, {count_big_copies(hlo)} copies"
  contender = harness.Stepper(compiled, params, state, grads)
  return Runner(contender, lambda: jax.tree.map(np.asarray, contender.params), note)


def torch_runner(
    workload: Workload, make_optimizer: Callable[[list], torch.optim.Optimizer]
) -> Runner:
  """A torch optimizer's ``step`` on the workload's parameters and gradients."""
  as_torch = lambda tree: [torch.from_numpy(np.array(x)) for x in tree.values()]
  jax_params, jax_grads = params_and_grads(workload)
  params = [torch.nn.Parameter(x) for x in as_torch(jax_params)]
  for p, g in zip(params, as_torch(jax_grads)):
    p.grad = g
  opt = make_optimizer(params)

  def final_params():
    return {k: p.detach().numpy() for k, p in zip(workload.shapes, params)}

  return Runner(opt.step, final_params, f"{torch.get_num_threads()} threads")


def make_runner(impl: str, workload: Workload, compiler_options: dict) -> Runner:
  if impl in ("torch-foreach", "torch-fused"):
    fused = impl == "torch-fused"
    return torch_runner(workload, lambda params: torch.optim.AdamW(
        params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, foreach=not fused, fused=fused))
  if impl in adamw_variants.STEPS:
    init, step = adamw_variants.STEPS[impl](LEARNING_RATE, WEIGHT_DECAY)
    return jax_runner(step, init, workload, compiler_options)
  factories = {"optax": optax.adamw, "gradtx": go.adamw} | {
      name: lambda lr, weight_decay, f=f: f(lr, weight_decay)
      for name, f in adamw_variants.VARIANTS.items()
  }
  if impl not in factories:
    raise ValueError(f"unknown implementation {impl!r}")
  tx = factories[impl](LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  return jax_runner(harness.update_then_apply(tx), tx.init, workload, compiler_options)


def parse_compiler_options(pairs: Sequence[str]) -> dict:
  """``KEY=VALUE`` strings to ``compile()`` options (true/false become bools)."""
  options = {}
  for pair in pairs:
    key, value = pair.split("=", 1)
    options[key] = {"true": True, "false": False}.get(value.lower(), value)
  return options


def max_difference(runner: Runner, reference: dict[str, np.ndarray]) -> float:
  """Largest |p - p_ref| over all parameters after the same number of steps."""
  params = runner.params()
  return max(float(np.max(np.abs(params[k] - v))) for k, v in reference.items())


def format_table(workload: Workload, runners: dict[str, Runner], times: dict) -> str:
  """Min and median ms, ratios to optax, GB/s at 28 B/param, drift from optax."""
  reference = runners[ANCHOR].params() if ANCHOR in runners else None
  bandwidth = lambda pick: {
      name: f"{BYTES_PER_PARAM * workload.num_params / pick(t) / 1e9:.1f}"
      for name, t in times.items()}
  columns = {
      "GB/s (min)": bandwidth(min),
      "GB/s (median)": bandwidth(lambda t: float(np.median(t))),
      "max abs diff vs optax": {
          name: f"{max_difference(r, reference):.1e}" if reference else "-"
          for name, r in runners.items()},
      "compiled": {name: r.note for name, r in runners.items()},
  }
  title = (f"{workload.name}: {workload.num_params / 1e6:.2f}M params in"
           f" {len(workload.shapes)} leaves, {len(next(iter(times.values())))} rounds")
  anchor = ANCHOR if ANCHOR in times else next(iter(times))
  table = harness.ratio_table(times, anchor=anchor, label="impl", columns=columns)
  return f"{title}\n\n{table}"


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--sizes", default="16M,gpt",
      help="comma-separated workloads: a vector length (16M, 256K, 1000) or"
      " gpt / gpt:LAYERSxWIDTH (default: %(default)s)",
  )
  parser.add_argument(
      "--rounds", type=int, default=None, help="timed steps per impl (default 30)"
  )
  parser.add_argument(
      "--impls", default=",".join(DEFAULT_IMPLS),
      help="comma-separated, or 'all' to add benchmarks/adamw_variants.py"
      " (default: %(default)s)",
  )
  parser.add_argument(
      "--xla-option", action="append", default=[], metavar="KEY=VALUE",
      help="a DebugOptions field for every jax compile, e.g."
      " xla_cpu_copy_insertion_use_region_analysis=true (repeatable)",
  )
  parser.add_argument(
      "--quick", action="store_true", help="1M vector and a 2x128 GPT, 5 rounds"
  )
  args = parser.parse_args(argv)
  if args.quick:
    if args.sizes != parser.get_default("sizes"):
      parser.error("--quick sets its own sizes (1M,gpt:2x128): drop --sizes or --quick")
    args.sizes = "1M,gpt:2x128"
  rounds = args.rounds or (5 if args.quick else 30)
  compiler_options = parse_compiler_options(args.xla_option)
  impls = args.impls.split(",")
  if impls == ["all"]:
    impls = [*DEFAULT_IMPLS, *adamw_variants.VARIANTS, *adamw_variants.STEPS]

  print(harness.machine_banner())
  print(f"compile options: {compiler_options}")
  for token in args.sizes.split(","):
    workload = parse_workload(token)
    runners = {impl: make_runner(impl, workload, compiler_options) for impl in impls}
    times = harness.time_round_robin(
        {name: r.step for name, r in runners.items()}, rounds=rounds)
    print()
    print(format_table(workload, runners, times))
    del runners
  print()
  print(harness.closing_line())


if __name__ == "__main__":
  main()
