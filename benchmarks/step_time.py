"""Time of one AdamW step on CPU: gradtx vs optax vs torch, as ratios to optax.

A step is ``tx.update`` + ``optax.apply_updates`` under one ``jax.jit`` with
the parameters and the optimizer state donated, or ``torch.optim.AdamW.step``
(``foreach=True`` and ``fused=True``). All implementations live in the same
process and are timed round-robin (in a new random order every round), so a
burst of load from elsewhere on the machine hits them all alike. The bandwidth is
the effective one at 28 bytes per float32 parameter: read g, p, m, v and write
p, m, v, the least any implementation has to move.

  python benchmarks/step_time.py                     # 16M vector and GPT tree
  python benchmarks/step_time.py --quick             # small sizes, a smoke test
  python benchmarks/step_time.py --impls all         # also benchmarks/_variants.py
  XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion \\
      python benchmarks/step_time.py                 # XLA:CPU flags via the env

See RESULTS.md for the numbers and what was tried.
"""

import argparse
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, NamedTuple, Sequence

import _variants
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from gradtx import optimizers as go

BYTES_PER_PARAM = 28
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
ANCHOR = "optax"
DEFAULT_IMPLS = ("optax", "gradtx", "torch-foreach", "torch-fused")


class Workload(NamedTuple):
  name: str
  shapes: dict[str, tuple[int, ...]]

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(s)) for s in self.shapes.values())


class Runner(NamedTuple):
  """One implementation ready to run: ``step()`` takes one timed step."""

  name: str
  step: Callable[[], None]
  params: Callable[[], dict[str, np.ndarray]]
  note: str


def gpt_shapes(
    layers: int = 12, width: int = 256, vocab: int = 16384, context: int = 1024
) -> dict[str, tuple[int, ...]]:
  """Parameter shapes of a GPT-2-style decoder (12 leaves per block)."""
  shapes = {"tok_embed": (vocab, width), "pos_embed": (context, width)}
  for i in range(layers):
    block = {
        "ln1_scale": (width,), "ln1_bias": (width,),
        "qkv_kernel": (width, 3 * width), "qkv_bias": (3 * width,),
        "proj_kernel": (width, width), "proj_bias": (width,),
        "ln2_scale": (width,), "ln2_bias": (width,),
        "fc1_kernel": (width, 4 * width), "fc1_bias": (4 * width,),
        "fc2_kernel": (4 * width, width), "fc2_bias": (width,),
    }
    shapes.update({f"block{i:02d}/{k}": v for k, v in block.items()})
  shapes.update({"ln_f_scale": (width,), "ln_f_bias": (width,)})
  return shapes


def parse_workload(token: str) -> Workload:
  """``gpt``, ``gpt:LAYERSxWIDTH``, or a vector length such as ``16M``/``256K``."""
  if token.startswith("gpt"):
    if ":" not in token:
      return Workload("gpt", gpt_shapes())
    layers, width = (int(x) for x in token.split(":")[1].split("x"))
    return Workload(token, gpt_shapes(layers, width, vocab=8 * width, context=4 * width))
  scale = {"K": 2**10, "M": 2**20}.get(token[-1].upper(), 1)
  digits = token[:-1] if scale > 1 else token
  return Workload(f"vector {token}", {"vector": (int(digits) * scale,)})


def random_tree(shapes: dict, seed: int, scale: float) -> dict:
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return {
      name: scale * jax.random.normal(key, shape, jnp.float32)
      for key, (name, shape) in zip(keys, shapes.items())
  }


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


def jax_runner(
    name: str, init: Callable, step: Callable, workload: Workload,
    compiler_options: dict,
) -> Runner:
  """Jits ``step(params, state, grads)`` with params and state donated."""
  params = random_tree(workload.shapes, 0, 0.02)
  grads = random_tree(workload.shapes, 1, 1.0)
  state = init(params)
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads)
  compiled = lowered.compile(compiler_options)
  hlo = compiled.as_text()
  note = f"{count_loop_fusions(hlo)} loops, {count_big_copies(hlo)} copies"
  carry = [params, state]

  def run():
    carry[0], carry[1] = compiled(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return Runner(name, run, lambda: jax.tree.map(np.asarray, carry[0]), note)


def transformation_runner(
    name: str, tx: optax.GradientTransformation, workload: Workload,
    compiler_options: dict,
) -> Runner:
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax_runner(name, tx.init, step, workload, compiler_options)


def torch_runner(name: str, workload: Workload, *, fused: bool) -> Runner:
  as_torch = lambda tree: [torch.from_numpy(np.array(x)) for x in tree.values()]
  params = [torch.nn.Parameter(x) for x in as_torch(random_tree(workload.shapes, 0, 0.02))]
  for p, g in zip(params, as_torch(random_tree(workload.shapes, 1, 1.0))):
    p.grad = g
  opt = torch.optim.AdamW(
      params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
      foreach=not fused, fused=fused,
  )

  def final_params():
    return {k: p.detach().numpy() for k, p in zip(workload.shapes, params)}

  return Runner(name, opt.step, final_params, f"{torch.get_num_threads()} threads")


def make_runner(impl: str, workload: Workload, compiler_options: dict) -> Runner:
  if impl in ("torch-foreach", "torch-fused"):
    return torch_runner(impl, workload, fused=impl == "torch-fused")
  if impl in _variants.STEPS:
    init, step = _variants.STEPS[impl](LEARNING_RATE, WEIGHT_DECAY)
    return jax_runner(impl, init, step, workload, compiler_options)
  factories = {"optax": optax.adamw, "gradtx": go.adamw} | {
      name: lambda lr, weight_decay, f=f: f(lr, weight_decay)
      for name, f in _variants.VARIANTS.items()
  }
  if impl not in factories:
    raise ValueError(f"unknown implementation {impl!r}")
  tx = factories[impl](LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  return transformation_runner(impl, tx, workload, compiler_options)


def parse_compiler_options(pairs: Sequence[str]) -> dict:
  """``KEY=VALUE`` strings to ``compile()`` options (true/false become bools)."""
  options = {}
  for pair in pairs:
    key, value = pair.split("=", 1)
    options[key] = {"true": True, "false": False}.get(value.lower(), value)
  return options


def time_round_robin(
    runners: Sequence[Runner], rounds: int, warmup: int = 3
) -> dict[str, list[float]]:
  """Seconds per step of each runner, one step of each per round.

  The order is shuffled every round: torch's OpenMP workers keep spinning for
  a while after a step and slow down whatever runs next, so a fixed order
  made whichever implementation always followed torch 10-15% slower.
  """
  for runner in runners:
    for _ in range(warmup):
      runner.step()
  times = {r.name: [] for r in runners}
  order = np.random.default_rng(0)
  for _ in range(rounds):
    for i in order.permutation(len(runners)):
      start = time.perf_counter()
      runners[i].step()
      times[runners[i].name].append(time.perf_counter() - start)
  return times


def max_difference(runner: Runner, reference: dict[str, np.ndarray]) -> float:
  """Largest |p - p_ref| over all parameters after the same number of steps."""
  params = runner.params()
  return max(float(np.max(np.abs(params[k] - v))) for k, v in reference.items())


def format_table(
    workload: Workload,
    runners: Sequence[Runner],
    times: dict[str, list[float]],
    differences: dict[str, float],
) -> str:
  """A markdown table: min and median ms, GB/s at 28 B/param, ratios to optax."""
  n = workload.num_params
  anchor = times.get(ANCHOR)
  lines = [
      f"{workload.name}: {n / 1e6:.2f}M params in {len(workload.shapes)} leaves,"
      f" {len(next(iter(times.values())))} rounds",
      "",
      "| impl | min ms | median ms | GB/s (min) | GB/s (median) | x optax (min)"
      " | x optax (median) | max abs diff vs optax | compiled |",
      "|---|--:|--:|--:|--:|--:|--:|--:|---|",
  ]
  for r in runners:
    t_min, t_med = min(times[r.name]), statistics.median(times[r.name])
    ratios = (
        (f"{t_min / min(anchor):.2f}x", f"{t_med / statistics.median(anchor):.2f}x")
        if anchor else ("-", "-")
    )
    lines.append(
        f"| {r.name} | {t_min * 1e3:.2f} | {t_med * 1e3:.2f}"
        f" | {BYTES_PER_PARAM * n / t_min / 1e9:.1f}"
        f" | {BYTES_PER_PARAM * n / t_med / 1e9:.1f}"
        f" | {ratios[0]} | {ratios[1]} | {differences.get(r.name, float('nan')):.1e}"
        f" | {r.note} |"
    )
  return "\n".join(lines)


def machine_summary() -> str:
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines()
         if line.startswith("Model name")),
        platform.processor(),
    )
  except OSError:
    model = platform.processor()
  return (
      f"cpu: {model}, {os.cpu_count()} cores; jax {jax.__version__},"
      f" optax {optax.__version__}, torch {torch.__version__}"
      f" ({torch.get_num_threads()} threads); jax devices: {jax.device_count()};"
      f" XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )


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
      help="comma-separated, or 'all' to add benchmarks/_variants.py"
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
    args.sizes = "1M,gpt:2x128"
  rounds = args.rounds or (5 if args.quick else 30)
  compiler_options = parse_compiler_options(args.xla_option)
  impls = args.impls.split(",")
  if impls == ["all"]:
    impls = [*DEFAULT_IMPLS, *_variants.VARIANTS, *_variants.STEPS]

  print(machine_summary(), f"compile options: {compiler_options}")
  for token in args.sizes.split(","):
    workload = parse_workload(token)
    runners = [make_runner(impl, workload, compiler_options) for impl in impls]
    times = time_round_robin(runners, rounds)
    reference = next((r.params() for r in runners if r.name == ANCHOR), None)
    differences = {
        r.name: max_difference(r, reference) for r in runners if reference is not None
    }
    print()
    print(format_table(workload, runners, times, differences))
    del runners


if __name__ == "__main__":
  main()
