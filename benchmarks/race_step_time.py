"""Milliseconds per train step of the race's optimizers, round-robin in one process.

The race (``examples/char_lm.py --lr-factors ... --seeds ...``) counts steps;
its own ms/step are medians of runs done one after the other, on a machine
that may be busy. Here every optimizer's whole main-job train step (forward,
backward, update; ``char_lm.train_step``) is compiled once and timed by
``harness.time_round_robin``, one step of each per round in a new random
order, so load from elsewhere hits them alike. The wall-clock to AdamW's final
loss is then the race's median steps times each step's amortized time
(notebooks/03_fourth_quadrant.ipynb, RESULTS.md "Fourth quadrant"): the
median over windows of ``--window`` consecutive steps of the window's mean
(``harness.amortized``), so that SOAP's and Shampoo's refresh, one step in 10,
is paid for; the median of single steps (also printed and written) drops it.

  python -m benchmarks.race_step_time --optimizers adamw,muon,adamuon \\
      [--d-model 192 --num-layers 4] [--rounds 80] [--window 10] [--json out.json]
"""

import argparse
import json
import pathlib

import jax
import numpy as np
from flax import nnx

from benchmarks import harness
from examples import char_lm


def contender(name: str, config: char_lm.Config, initial, batch):
  """One train step of ``name`` as a callable that blocks, its state carried."""
  graphdef, host_state = initial
  model = nnx.merge(graphdef, jax.device_put(host_state))
  optimizer = char_lm.create_optimizer(model, name, config.steps)
  graphdef, state = nnx.split((model, optimizer))
  holder = {"state": state}

  def step():
    holder["state"], loss = char_lm.train_step(graphdef, holder["state"], *batch)
    jax.block_until_ready(loss)

  return step


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizers", default="adamw,muon,soap,soap_muon,normuon,adamuon,vmuon")
  parser.add_argument("--rounds", type=int, default=80)
  parser.add_argument("--window", type=int, default=10,
                      help="consecutive steps averaged: a multiple of every refresh period"
                           " raced (SOAP, SOAP-Muon and Shampoo refresh every 10)")
  parser.add_argument("--json", type=pathlib.Path)
  args, rest = parser.parse_known_args(argv)
  if not 1 <= args.window <= args.rounds:
    parser.error(f"--window must be in [1, --rounds = {args.rounds}], got {args.window}")
  if args.rounds // args.window < 3:
    print(f"note: {args.rounds // args.window} window(s) of {args.window} steps: the amortized"
          " step is their mean, a load spike not kept out (give --rounds >= 3 windows)")
  names = args.optimizers.split(",")
  config = char_lm.parse_args(["--optimizers", ",".join(names), *rest])
  tokens, _ = char_lm.load_corpus(config.corpus_mb)
  inputs, targets = char_lm.sample_batches(
      tokens, 1, config.batch_size, config.context, config.seed)
  batch = (inputs[0], targets[0])
  initial = char_lm.initial_model(config)
  banner = harness.machine_banner()
  print(banner)
  contenders = {name: contender(name, config, initial, batch) for name in names}
  times = harness.time_round_robin(contenders, rounds=args.rounds)
  print(f"d_model {config.d_model}, {config.num_layers} layers, batch {config.batch_size},"
        f" context {config.context}, {args.rounds} rounds\n")
  print(harness.ratio_table(times, anchor="adamw", label="optimizer", window=args.window))
  amortized = {name: 1e3 * harness.amortized(t, args.window) for name, t in times.items()}
  medians = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
  if args.json:
    args.json.write_text(json.dumps({"config": {"d_model": config.d_model,
                                                "num_layers": config.num_layers},
                                     "machine": banner, "load_at_end": harness.load_average(),
                                     "rounds": args.rounds, "window": args.window,
                                     "amortized_ms": amortized, "median_ms": medians},
                                    indent=1))
  print(harness.closing_line())
  return amortized


if __name__ == "__main__":
  main()
