"""The suite's wall-clock, measured: each optimizer's training step next to AdamW's.

A run's ``ms_per_step`` (``train.train``) is timed while whatever else ran on
the machine ran, so the tables' wall-clock ratios mix runs made at different
loads (read them as ±30%). Here every contender's training step (the one
``train.chunk_step`` program the runs use: forward, backward, update, chunks
of ``--chunk`` steps under ``lax.scan``) is compiled once per workload and
timed in one process, one chunk of each contender per round in a new random
order (``harness.time_round_robin``), so a drift in the machine's speed
reaches all of them alike. The wall-clock to the target is then exact steps
times measured step time:

    wall-clock ratio = median steps(o) · ms(o) / (median steps(AdamW) · ms(AdamW))

with the median steps of a results folder's summary (``--summary``: the
runner's ``summary_<ruleset>_<schedule>.json``) and AdamW's step time for the
baseline, whichever AdamW variant set the target (they differ in constants
only, not in work).

    python -m benchmarks.suite.step_time --workloads stdlib_lm,linen_lm \\
        --optimizers adamw,muon,adamuon:gram:fast_embeddings --rounds 7 \\
        --summary benchmarks/suite/results/tuned_baseline/summary_tuned_warmup_cosine.json
"""

import argparse
import json
import math
import pathlib
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from benchmarks import harness, registry
from benchmarks.suite import WORKLOADS, scoring
from benchmarks.suite import train as suite_train

# The wall-clock target is on every transformer workload (the ViT too).
TRANSFORMERS = ("stdlib_lm", "docs_lm", "linen_lm", "moe_lm", "scan_lm", "digits_vit")
OPTIMIZERS = ("adamw", "muon", "adamuon", "adamuon:gram:fast_embeddings", "soap")


class Chunk:
  """A contender: each call trains on ``batches`` (a chunk of steps) from where
  the last call left off (params and state are carried, donated), then blocks;
  ``losses`` holds the last call's train losses."""

  def __init__(self, step: Callable, params, state, batches):
    self.step, self.params, self.state, self.batches = step, params, state, batches
    self.losses = None

  def __call__(self) -> None:
    self.params, self.state, self.losses = self.step(self.params, self.state, *self.batches)
    jax.block_until_ready(self.losses)


def contenders(workload, optimizers: Sequence[str], chunk: int) -> dict[str, Chunk]:
  """Per optimizer (registry name, at 1x), its training chunk on ``workload``:
  the first ``chunk`` steps of a seed-0 run (its weights and batches)."""
  params, apply = workload.init(0)
  inputs, labels = (b[:chunk] for b in workload.batches(0, workload.steps))
  out = {}
  for name in optimizers:
    tx = suite_train.make_optimizer(name, workload.lr_scale, "warmup_cosine",
                                    workload.steps, workload.matrix_view)
    own = jax.tree.map(np.array, params)  # each contender donates its own copy
    out[name] = Chunk(suite_train.chunk_step(apply, tx), own, jax.jit(tx.init)(own),
                      (inputs, labels))
  return out


def step_milliseconds(workload, optimizers: Sequence[str], chunk: int,
                      rounds: int) -> dict[str, list[float]]:
  """Per optimizer, the milliseconds per training step of each round."""
  times = harness.time_round_robin(contenders(workload, optimizers, chunk), rounds=rounds)
  return {name: [1e3 * t / chunk for t in ts] for name, ts in times.items()}


def baseline_steps(summary: dict) -> float:
  """The median steps of the target's AdamW: the tuned one (a fixed ruleset's
  summary holds it apart from the fixed AdamW, under ``scoring.TARGET``)."""
  return scoring.median(summary.get(scoring.TARGET, summary[scoring.REFERENCE])["steps"])


def wall_clock_ratio(summary: dict, optimizer: str, ms: dict[str, float]) -> float:
  """Median steps to the target times step time, over tuned AdamW's (inf: not
  reached); every AdamW variant steps in AdamW's time."""
  steps = scoring.median(summary[optimizer]["steps"])
  return (steps * ms[optimizer]) / (baseline_steps(summary) * ms[scoring.REFERENCE])


def table(milliseconds: dict[str, dict[str, list[float]]],
          summaries: Optional[dict]) -> str:
  """One row per (workload, optimizer): step ms (min, median), x AdamW's step
  and, given the summaries, x AdamW's steps and wall-clock to the target."""
  header = ["workload", "optimizer", "ms/step (min)", "ms/step (median)", "x AdamW's step"]
  if summaries:
    header += ["x AdamW's steps", "x AdamW's wall-clock"]
  rows = []
  for workload, per_optimizer in milliseconds.items():
    ms = {name: min(ts) for name, ts in per_optimizer.items()}
    for name, ts in per_optimizer.items():
      row = [workload, name, f"{min(ts):.2f}", f"{np.median(ts):.2f}",
             f"{ms[name] / ms[scoring.REFERENCE]:.2f}x"]
      if summaries:
        summary = summaries.get(workload, {})
        if name in summary and scoring.REFERENCE in summary:
          steps = scoring.median(summary[name]["steps"]) / baseline_steps(summary)
          ratio = wall_clock_ratio(summary, name, ms)
          row += [f"{steps:.2f}x" if math.isfinite(steps) else "not reached",
                  f"{ratio:.2f}x" if math.isfinite(ratio) else "not reached"]
        else:
          row += ["", ""]
      rows.append(row)
  return harness.markdown_table(header, rows)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workloads", default=",".join(TRANSFORMERS))
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                      help="registry names; the first must be adamw")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--chunk", type=int, default=50,
                      help="steps per timed call (the runs' --eval-every)")
  parser.add_argument("--summary", type=pathlib.Path, default=None,
                      help="a runner's summary_<ruleset>_<schedule>.json: adds steps and"
                           " wall-clock to the target")
  parser.add_argument("--json", type=pathlib.Path, default=None,
                      help="write the machine and the milliseconds of every round here")
  parser.add_argument("--from-json", type=pathlib.Path, default=None,
                      help="time nothing: the milliseconds of an earlier --json (to score"
                           " them against another --summary)")
  args = parser.parse_args(argv)
  args.workloads = [w for w in args.workloads.split(",") if w]
  args.optimizers = [o for o in args.optimizers.split(",") if o]
  if not args.optimizers or args.optimizers[0] != scoring.REFERENCE:
    parser.error(f"--optimizers must start with {scoring.REFERENCE}")
  # Refused before minutes of timing, not after them.
  unknown = ([w for w in args.workloads if w not in WORKLOADS]
             + [o for o in args.optimizers if o not in registry.OPTIMIZERS])
  if unknown:
    parser.error(f"unknown names: {', '.join(unknown)}")
  for option, value in (("--rounds", args.rounds), ("--chunk", args.chunk)):
    if value < 1:
      parser.error(f"{option} must be at least 1, got {value}")
  for option, path in (("--summary", args.summary), ("--from-json", args.from_json)):
    if path is not None and not path.is_file():
      parser.error(f"{option}: no file {path}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> str:
  args = parse_args(argv)
  if args.from_json:
    measured = json.loads(args.from_json.read_text())
    print(measured["machine"])
    milliseconds = measured["milliseconds"]
  else:
    print(banner := harness.machine_banner())
    milliseconds = {}
    for name in args.workloads:
      milliseconds[name] = step_milliseconds(WORKLOADS[name](), args.optimizers, args.chunk,
                                             args.rounds)
      print(f"{name}: " + ", ".join(f"{o} {min(ts):.2f} ms"
                                    for o, ts in milliseconds[name].items()), flush=True)
    if args.json:
      args.json.write_text(json.dumps({"machine": banner, "milliseconds": milliseconds}, indent=1))
  summaries = json.loads(args.summary.read_text()) if args.summary else None
  text = table(milliseconds, summaries)
  print(text)
  return text


if __name__ == "__main__":
  main()
