"""Shampoo and SOAP against AdamW on the main job's model: update step, whole train step, roots.

The model, batches and optimizers are those of the main job
(``examples.char_lm``) at its default size (d_model 96, 2 layers, 4 heads,
context 64, batch 16; 0.25M float32 parameters): adamw, shampoo and soap are
its registry entries (with their schedules, weight decay and masks), the
variants change one keyword (``precondition_every``, ``block_size``,
``grafting``). Four measurements, each with the implementations interleaved
in one process in a new random order every round (``harness``):

* ``update``: ``harness.donated_step`` (``tx.update + optax.apply_updates``,
  params and state donated), on the model's real gradients of one batch.
* ``train step``: the main job's own ``train_step`` (forward, backward and
  update jitted together, state donated), on its batches.
* ``each step``: the same train steps, each blocked and timed on its own,
  split into the refresh step (the first of each window) and the others.
* ``roots alone``: the eigh inverse roots of every block statistic of the
  Shampoo state at each block size (what a refresh step adds), jitted on
  their own, also divided by 10 (the per-step share at precondition_every=10).

A round times ``--window`` consecutive steps (10: each window of a
``precondition_every=10`` run holds exactly one root refresh, so its mean is
the amortised per-step cost) and records the mean ms per step; we print the
median and min over rounds and the ratios to AdamW's median and min. The
``no refresh`` variants (precondition_every=10**9: roots or basis computed at
step 1 only) and ``no grafting`` isolate where the time goes.

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.kron_step [--rounds 20]

On CPU, run it with OPENBLAS_NUM_THREADS=1: the OpenBLAS behind jaxlib's eigh
otherwise starts its own threads, which fight XLA's pool for the cores; on a
2-core machine that made one root computation take 0.2 to 11 s instead of a
steady 0.08 s.
"""

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks import harness, registry
from examples import char_lm
from gradtx import transforms as gt

NEVER = 10**9  # precondition_every that refreshes at step 1 only

# name -> (registry entry, keyword arguments passed to it)
VARIANTS = {
    "adamw": ("adamw", {}),
    "shampoo every 1": ("shampoo", dict(precondition_every=1)),
    "shampoo every 10": ("shampoo", {}),
    "shampoo every 10 (block 128)": ("shampoo", dict(block_size=128)),
    "shampoo every 10 (block 96)": ("shampoo", dict(block_size=96)),
    "shampoo every 10 (no blocks)": ("shampoo", dict(block_size=None)),
    "shampoo no refresh": ("shampoo", dict(precondition_every=NEVER)),
    "shampoo every 10 (no grafting)": ("shampoo", dict(grafting=None)),
    "shampoo every 10 (newton)": ("shampoo", dict(root_method="newton",
                                                 relative_damping=1e-6)),
    "soap every 10": ("soap", {}),
    "soap no refresh": ("soap", dict(precondition_every=NEVER)),
}
DEFAULT = ("adamw,shampoo every 1,shampoo every 10,shampoo every 10 (block 128),"
           "shampoo every 10 (no blocks),shampoo no refresh,"
           "shampoo every 10 (no grafting),soap every 10,soap no refresh")


def make_tx(name: str, steps: int) -> optax.GradientTransformation:
  entry, kwargs = VARIANTS[name]
  return registry.OPTIMIZERS[entry](steps, **kwargs)


def per_step(contenders: dict, rounds: int, window: int) -> dict:
  """Mean seconds per step of each contender's ``window``-step call, per round.

  The untimed first call compiles and keeps step 1's refresh out of the rounds.
  """
  times = harness.time_round_robin(contenders, rounds=rounds, warmup=1)
  return {name: [t / window for t in ts] for name, ts in times.items()}


def train_runner(tx, initial, batches):
  """``run(n, each=False)``: n of the main job's train steps, carried on."""
  graphdef, host_state = initial
  model = nnx.merge(graphdef, jax.device_put(host_state))
  optimizer = nnx.jit(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param))(model)
  graphdef, state = nnx.split((model, optimizer))
  inputs, targets = (jnp.asarray(b) for b in batches)
  carry = {"state": state, "i": 0}

  def run(n, each=False):
    """Runs n steps; ``each``: blocks after every step, returns their seconds."""
    state, i, loss, seconds = carry["state"], carry["i"], None, []
    for _ in range(n):
      j = i % len(inputs)
      start = time.perf_counter()
      state, loss = char_lm.train_step(graphdef, state, inputs[j], targets[j])
      if each:
        jax.block_until_ready(loss)
        seconds.append(time.perf_counter() - start)
      i += 1
    jax.block_until_ready(loss)
    carry.update(state=state, i=i)
    return seconds

  return run


def refresh_profile(runners: dict, rounds: int, window: int) -> dict:
  """Per-step seconds of train steps, split into refresh and other steps.

  Every step is timed on its own (blocking), the runners take turns by
  window, in ``harness.shuffled_rounds`` order; the first step of each window
  is the refresh step of a ``precondition_every=10`` run (the windows start
  at steps 11, 21, ...). Returns name -> (refresh-step seconds, other-step
  seconds).
  """
  split = {name: ([], []) for name in runners}
  for order in harness.shuffled_rounds(list(runners), rounds):
    for name in order:
      seconds = runners[name](window, each=True)
      split[name][0].append(seconds[0])
      split[name][1].extend(seconds[1:])
  return split


def roots_contender(params, grads, block_size):
  """All eigh inverse roots of the Shampoo state at ``block_size``, and the block shapes."""
  tx = gt.kronecker_precondition(precondition_b2=0.99, block_size=block_size)
  _, state = jax.jit(tx.update)(grads, tx.init(params))
  stacks = []
  for left, right in zip(jax.tree.leaves(state.left_stats),
                         jax.tree.leaves(state.right_stats)):
    p = 2 * ((left.size > 0) + (right.size > 0))
    stacks += [(s, p) for s in (left, right) if s.size]
  exponents = [p for _, p in stacks]
  fn = jax.jit(lambda mats: [
      gt.inverse_pth_root(s, p, damping=1e-6) for s, p in zip(mats, exponents)])
  mats = [s for s, _ in stacks]
  shapes = sorted({tuple(s.shape) for s in mats})
  return (lambda: jax.block_until_ready(fn(mats))), shapes


def print_table(title: str, times: dict) -> None:
  print(f"\n{title}\n")
  print(harness.ratio_table(times, anchor="adamw", label="optimizer"))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--window", type=int, default=10)
  parser.add_argument("--impls", default=DEFAULT,
                      help=f"comma-separated, from: {', '.join(VARIANTS)}")
  parser.add_argument("--skip", default="",
                      help="comma-separated parts to skip: update,train,roots")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.impls.split(",") if n.strip()]
  if "adamw" not in names:
    names.insert(0, "adamw")
  skip = set(args.skip.split(","))

  config = char_lm.parse_args([])
  initial = char_lm.initial_model(config)
  train_tokens, _ = char_lm.load_corpus(config.corpus_mb)
  batches = char_lm.sample_batches(train_tokens, args.window, config.batch_size,
                                   config.context, config.seed)
  graphdef, host_state = initial
  params = nnx.to_pure_dict(jax.device_put(host_state))
  grads = jax.grad(lambda p: char_lm.cross_entropy(
      nnx.merge(graphdef, p), batches[0][0], batches[1][0]))(params)
  size = sum(p.size for p in jax.tree.leaves(params))
  print(harness.machine_banner())
  if jax.default_backend() == "cpu" and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
    print("warning: OPENBLAS_NUM_THREADS is not 1; eigh timings will be noisy")
  print(f"model: char_lm defaults (d_model {config.d_model}, {config.num_layers}"
        f" layers, context {config.context}, batch {config.batch_size}),"
        f" {size / 1e6:.3f}M params; {args.rounds} rounds x {args.window} steps")

  if "update" not in skip:
    contenders = {n: harness.stepper(make_tx(n, config.steps), params, grads,
                                     steps=args.window) for n in names}
    print_table("update step (tx.update + apply_updates), per step",
                per_step(contenders, args.rounds, args.window))
  if "train" not in skip:
    runners = {n: train_runner(make_tx(n, config.steps), initial, batches)
               for n in names}
    windows = {n: functools.partial(run, args.window) for n, run in runners.items()}
    print_table("whole train step (forward + backward + update, one jit), per step",
                per_step(windows, args.rounds, args.window))
    if args.window == 10:
      profile = refresh_profile(runners, args.rounds, args.window)
      print("\nwhole train step, each step blocked and timed on its own\n")
      print(harness.markdown_table(
          ["optimizer", "refresh step: median ms", "other steps: median ms",
           "other steps: min ms"],
          [(name, f"{statistics.median(refresh) * 1e3:.2f}",
            f"{statistics.median(other) * 1e3:.2f}", f"{min(other) * 1e3:.2f}")
           for name, (refresh, other) in profile.items()]))
  if "roots" not in skip:
    roots = {block: roots_contender(params, grads, block) for block in (256, 128, None)}
    times = harness.time_round_robin(
        {str(block): run for block, (run, _) in roots.items()}, rounds=args.rounds,
        warmup=1)
    print("\nroots alone (eigh, all leaves), the block sizes interleaved\n")
    print(harness.markdown_table(
        ["block_size", "block shapes", "median ms", "min ms", "median / 10 ms"],
        [(block, " ".join(f"{s[1]}²×{s[0]}" for s in shapes),
          f"{statistics.median(times[str(block)]) * 1e3:.2f}",
          f"{min(times[str(block)]) * 1e3:.2f}",
          f"{statistics.median(times[str(block)]) * 1e2:.2f}")
         for block, (_, shapes) in roots.items()], align="llrrr"))
  print()
  print(harness.closing_line())


if __name__ == "__main__":
  main()
