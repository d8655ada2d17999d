"""Optimizer-state memory of the memory-lean optimizers, as ratios to float32 AdamW.

For each optimizer, on a GPT-2-style parameter tree (``workloads.gpt_shapes``):

* state bytes: the sum of the state pytree's leaves (``jax.eval_shape`` of
  ``init``, so nothing is allocated), and its ratio to float32 AdamW's;
* step peak: the memory one ``harness.donated_step`` needs (``tx.update`` +
  ``optax.apply_updates``, parameters and state donated), from the compiled
  ``memory_analysis()``: arguments + outputs − donated aliases + temporaries.
  Parameters and gradients (8 bytes per parameter) are part of every step's
  peak, so its ratios are closer to 1 than the state's;
* step time of the 8-bit and bf16 variants against float32 AdamW, timed by
  ``harness.time_round_robin`` (min and median over the rounds), next to
  torch's AdamW (``foreach``) and bitsandbytes' ``AdamW8bit`` on the same
  tree, where bitsandbytes is installed (the test extra): whether an 8-bit
  step's cost is the method's or gradtx's.

  python -m benchmarks.memory                  # GPT 12x256, 16K vocab (14M params)
  python -m benchmarks.memory --quick          # GPT 2x128: a smoke test
  python -m benchmarks.memory --rounds 50 --workload gpt:12x512
"""

import argparse
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
import torch

from benchmarks import harness, step_time
from benchmarks.workloads import Workload, params_and_grads, parse_workload
from gradtx import optimizers as go
from gradtx import transforms as gt

ANCHOR = "adamw"
LEARNING_RATE = 1e-3
NUM_HEADS = 8

OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "adamw": lambda: go.adamw(LEARNING_RATE),
    "adamw bf16-nu": lambda: go.adamw(LEARNING_RATE, nu_dtype=jnp.bfloat16),
    "adamw bf16-sr": lambda: go.adamw(
        LEARNING_RATE, mu_dtype=gt.StochasticBfloat16(),
        nu_dtype=gt.StochasticBfloat16(),
    ),
    "adamw_8bit": lambda: go.adamw_8bit(LEARNING_RATE),
    "adafactor": lambda: go.adafactor(),
    "adafactor+m8": lambda: go.adafactor(b1=0.9, mu_dtype="int8"),
    "adam_mini": lambda: go.adam_mini(LEARNING_RATE, num_heads=NUM_HEADS),
    "lion": lambda: go.lion(LEARNING_RATE / 10),
}
TIMED = ("adamw", "adamw_8bit", "adamw bf16-nu", "adamw bf16-sr")


def torch_optimizers() -> dict[str, Callable[[list], torch.optim.Optimizer]]:
  """The torch references timed beside them: AdamW, and bitsandbytes'
  8-bit AdamW if it is installed (its CPU backend, on this machine)."""
  references = {"torch AdamW (foreach)": lambda params: torch.optim.AdamW(
      params, lr=LEARNING_RATE, foreach=True)}
  try:
    import bitsandbytes
  except ImportError:
    return references
  return references | {"bitsandbytes AdamW8bit": lambda params: bitsandbytes.optim.AdamW8bit(
      params, lr=LEARNING_RATE)}


def state_bytes(tx: optax.GradientTransformation, params) -> int:
  shapes = jax.eval_shape(tx.init, params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def step_peak_bytes(tx: optax.GradientTransformation, params) -> tuple[int, int]:
  """(peak, temporaries) of the compiled donated step, from its memory analysis."""
  state = jax.eval_shape(tx.init, params)
  m = harness.donated_step(tx).lower(params, state, params).compile().memory_analysis()
  peak = (
      m.argument_size_in_bytes + m.output_size_in_bytes
      - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  return peak, m.temp_size_in_bytes


def memory_table(workload: Workload) -> str:
  params = jax.eval_shape(lambda: params_and_grads(workload)[0])
  n = workload.num_params
  rows = []
  for name, make in OPTIMIZERS.items():
    tx = make()
    rows.append((name, state_bytes(tx, params), *step_peak_bytes(tx, params)))
  _, anchor_state, anchor_peak, _ = next(r for r in rows if r[0] == ANCHOR)
  title = (f"{workload.name}: {n / 1e6:.2f}M params in {len(workload.shapes)} leaves;"
           f" ratios to float32 {ANCHOR}")
  table = harness.markdown_table(
      ["optimizer", "state MiB", "bytes/param", "x state", "step peak MiB", "x peak",
       "temp MiB"],
      [(name, f"{state / 2**20:.2f}", f"{state / n:.3f}", f"{state / anchor_state:.3f}x",
        f"{peak / 2**20:.2f}", f"{peak / anchor_peak:.3f}x", f"{temp / 2**20:.2f}")
       for name, state, peak, temp in rows])
  return f"{title}\n\n{table}"


def time_table(workload: Workload, rounds: int) -> str:
  params, grads = params_and_grads(workload)
  contenders = {n: harness.stepper(OPTIMIZERS[n](), params, grads) for n in TIMED} | {
      name: step_time.torch_runner(workload, make).step
      for name, make in torch_optimizers().items()}
  times = harness.time_round_robin(contenders, rounds=rounds)
  title = f"step time, {rounds} interleaved rounds ({jax.devices()[0].platform})"
  return f"{title}\n\n{harness.ratio_table(times, anchor=ANCHOR, label='optimizer')}"


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--workload", default="gpt",
      help="gpt, gpt:LAYERSxWIDTH or a vector length (default: %(default)s)",
  )
  parser.add_argument("--rounds", type=int, default=None,
                      help="timed steps per optimizer (default: 20; 5 with --quick)")
  parser.add_argument("--quick", action="store_true",
                      help="gpt:2x128 and 5 rounds (a smoke test; takes no --workload)")
  args = parser.parse_args(argv)
  if args.quick and args.workload != parser.get_default("workload"):
    parser.error("--quick sets the workload (gpt:2x128): give --workload or --quick")
  if args.rounds is not None and args.rounds < 1:
    parser.error(f"--rounds must be at least 1, got {args.rounds}")
  workload = parse_workload("gpt:2x128" if args.quick else args.workload)
  rounds = args.rounds or (5 if args.quick else 20)
  print(harness.machine_banner())
  print()
  print(memory_table(workload))
  print()
  print(time_table(workload, rounds))
  print()
  print(harness.closing_line())


if __name__ == "__main__":
  main()
