"""Optimizer-state memory of the memory-lean optimizers, as ratios to float32 AdamW.

For each optimizer, on a GPT-2-style parameter tree (``step_time.gpt_shapes``):

* state bytes: the sum of the state pytree's leaves (``jax.eval_shape`` of
  ``init``, so nothing is allocated), and its ratio to float32 AdamW's;
* step peak: the memory one jitted step needs (``tx.update`` +
  ``optax.apply_updates``, parameters and state donated), from the compiled
  ``memory_analysis()``: arguments + outputs − donated aliases + temporaries.
  Parameters and gradients (8 bytes per parameter) are part of every step's
  peak, so its ratios are closer to 1 than the state's;
* step time of the 8-bit and bf16 variants against float32 AdamW, timed
  round-robin in one process (min and median over the rounds).

  python benchmarks/memory.py                  # GPT 12x256, 16K vocab (14M params)
  python benchmarks/memory.py --quick          # GPT 2x128: a smoke test
  python benchmarks/memory.py --rounds 50 --workload gpt:12x512
"""

import argparse
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import step_time

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


def state_bytes(tx: optax.GradientTransformation, params) -> int:
  shapes = jax.eval_shape(tx.init, params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def compiled_step(tx: optax.GradientTransformation, params):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(tx.init, params)
  return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()


def step_peak_bytes(compiled) -> tuple[int, int]:
  """(peak, temporaries) of a compiled step, from its memory analysis."""
  m = compiled.memory_analysis()
  peak = (
      m.argument_size_in_bytes + m.output_size_in_bytes
      - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  return peak, m.temp_size_in_bytes


def memory_table(workload: step_time.Workload) -> str:
  params = jax.eval_shape(lambda: step_time.random_tree(workload.shapes, 0, 0.02))
  n = workload.num_params
  rows = []
  for name, make in OPTIMIZERS.items():
    tx = make()
    peak, temp = step_peak_bytes(compiled_step(tx, params))
    rows.append((name, state_bytes(tx, params), peak, temp))
  anchor = next(r for r in rows if r[0] == ANCHOR)
  lines = [
      f"{workload.name}: {n / 1e6:.2f}M params in {len(workload.shapes)} leaves;"
      f" ratios to float32 {ANCHOR}",
      f"{'optimizer':14} {'state MB':>9} {'B/param':>8} {'x state':>8}"
      f" {'step peak MB':>13} {'x peak':>7} {'temp MB':>8}",
  ]
  for name, state, peak, temp in rows:
    lines.append(
        f"{name:14} {state / 2**20:9.2f} {state / n:8.3f} {state / anchor[1]:7.3f}x"
        f" {peak / 2**20:13.2f} {peak / anchor[2]:6.3f}x {temp / 2**20:8.2f}"
    )
  return "\n".join(lines)


def timed_step(name: str, workload: step_time.Workload) -> Callable[[], None]:
  """One donated, jitted step of optimizer ``name`` on real arrays."""
  tx = OPTIMIZERS[name]()
  params = step_time.random_tree(workload.shapes, 0, 0.02)
  grads = step_time.random_tree(workload.shapes, 1, 1.0)
  compiled = compiled_step(tx, params)
  carry = [params, tx.init(params)]

  def run():
    carry[0], carry[1] = compiled(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return run


def time_round_robin(
    steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 3
) -> dict[str, list[float]]:
  """Seconds per step of each optimizer, one step of each per round."""
  for step in steps.values():
    for _ in range(warmup):
      step()
  names = list(steps)
  times = {name: [] for name in names}
  for i in range(rounds):
    for name in names[i % len(names):] + names[: i % len(names)]:
      start = time.perf_counter()
      steps[name]()
      times[name].append(time.perf_counter() - start)
  return times


def time_table(workload: step_time.Workload, rounds: int) -> str:
  times = time_round_robin({n: timed_step(n, workload) for n in TIMED}, rounds)
  t_min = {k: min(v) for k, v in times.items()}
  t_med = {k: statistics.median(v) for k, v in times.items()}
  lines = [
      f"step time, {rounds} interleaved rounds ({jax.devices()[0].platform})",
      f"{'optimizer':14} {'min ms':>8} {'med ms':>8} {'x min':>7} {'x med':>7}",
  ]
  for name in TIMED:
    lines.append(
        f"{name:14} {t_min[name] * 1e3:8.2f} {t_med[name] * 1e3:8.2f}"
        f" {t_min[name] / t_min[ANCHOR]:6.2f}x {t_med[name] / t_med[ANCHOR]:6.2f}x"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--workload", default="gpt",
      help="gpt, gpt:LAYERSxWIDTH or a vector length (default: %(default)s)",
  )
  parser.add_argument("--rounds", type=int, default=20, help="timed steps per optimizer")
  parser.add_argument("--quick", action="store_true", help="gpt:2x128 and 5 rounds")
  args = parser.parse_args(argv)
  workload = step_time.parse_workload("gpt:2x128" if args.quick else args.workload)
  rounds = 5 if args.quick else args.rounds
  print(step_time.machine_summary())
  print(memory_table(workload))
  print()
  print(time_table(workload, rounds))


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
