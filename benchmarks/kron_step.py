"""Shampoo and SOAP against AdamW on the main job's model: update step, whole train step, roots.

The model, batches and optimizers are those of ``examples/char_lm.py`` at its
default size (d_model 96, 2 layers, 4 heads, context 64, batch 16; 0.24M
float32 parameters): adamw, shampoo and soap are its registry entries (with
their schedules, weight decay and masks), the variants change one keyword
(``precondition_every``, ``block_size``, ``grafting``). Three measurements, each
with the implementations interleaved round-robin in one process:

* ``update``: one jitted ``tx.update + optax.apply_updates`` with donated
  params and state, on the model's real gradients of one batch.
* ``train step``: the example's own ``train_step`` (forward, backward and
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

    OPENBLAS_NUM_THREADS=1 python benchmarks/kron_step.py [--rounds 20]

On CPU, run it with OPENBLAS_NUM_THREADS=1: the OpenBLAS behind jaxlib's eigh
otherwise starts its own threads, which fight XLA's pool for the cores; on a
2-core machine that made one root computation take 0.2 to 11 s instead of a
steady 0.08 s.
"""

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from _main_job import load_char_lm
from flax import nnx

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


def make_tx(char_lm, name: str, steps: int) -> optax.GradientTransformation:
  entry, kwargs = VARIANTS[name]
  return char_lm.OPTIMIZERS[entry](steps, **kwargs)


def interleave(runners: dict, rounds: int, window: int) -> dict:
  """Mean seconds per step of each ``window``-step run, ``rounds`` times each.

  ``runners``: name -> a function of a step count that runs that many steps
  and blocks until they are done.
  """
  for run in runners.values():  # compile; step 1's refresh stays out of the rounds
    run(window)
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run(window)
      times[name].append((time.perf_counter() - start) / window)
  return times


def update_runner(tx, params, grads):
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  carry = [jax.tree.map(jnp.copy, params)]
  carry.append(tx.init(carry[0]))

  def run(n):
    p, s = carry
    for _ in range(n):
      p, s = step(p, s)
    jax.block_until_ready(p)
    carry[:] = [p, s]

  return run


def train_runner(char_lm, tx, initial, batches):
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
  window; the first step of each window is the refresh step of a
  ``precondition_every=10`` run (the windows start at steps 11, 21, ...).
  Returns name -> (refresh-step seconds, other-step seconds).
  """
  split = {name: ([], []) for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      seconds = run(window, each=True)
      split[name][0].append(seconds[0])
      split[name][1].extend(seconds[1:])
  return split


def time_roots(params, grads, block_sizes, rounds: int) -> dict:
  """Seconds for all eigh inverse roots of the Shampoo state, per block size."""
  results = {}
  for block_size in block_sizes:
    tx = gt.kronecker_precondition(precondition_b2=0.99, block_size=block_size)
    _, state = jax.jit(tx.update)(grads, tx.init(params))
    stacks = []
    for left, right in zip(jax.tree.leaves(state.left_stats),
                           jax.tree.leaves(state.right_stats)):
      p = 2 * ((left.size > 0) + (right.size > 0))
      stacks += [(s, p) for s in (left, right) if s.size]
    exponents = [p for _, p in stacks]
    fn = jax.jit(lambda mats, exponents=exponents: [
        gt.inverse_pth_root(s, p, damping=1e-6) for s, p in zip(mats, exponents)])
    mats = [s for s, _ in stacks]
    jax.block_until_ready(fn(mats))
    samples = []
    for _ in range(rounds):
      start = time.perf_counter()
      jax.block_until_ready(fn(mats))
      samples.append(time.perf_counter() - start)
    shapes = sorted({tuple(s.shape) for s in mats})
    results[block_size] = (samples, shapes)
  return results


def table(title: str, times: dict) -> None:
  med0 = statistics.median(times["adamw"])
  min0 = min(times["adamw"])
  print(f"\n{title}\n")
  print("| optimizer | median ms/step | min ms/step | ratio to adamw (median) |"
        " ratio to adamw (min) |")
  print("|---|--:|--:|--:|--:|")
  for name, ts in times.items():
    med, best = statistics.median(ts), min(ts)
    print(f"| {name} | {med * 1e3:.2f} | {best * 1e3:.2f} | {med / med0:.2f}x |"
          f" {best / min0:.2f}x |")


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

  char_lm = load_char_lm()
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
  print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax"
        f" {jax.__version__}, optax {optax.__version__}, devices {jax.devices()}")
  if jax.default_backend() == "cpu" and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
    print("warning: OPENBLAS_NUM_THREADS is not 1; eigh timings will be noisy")
  print(f"model: char_lm defaults (d_model {config.d_model}, {config.num_layers}"
        f" layers, context {config.context}, batch {config.batch_size}),"
        f" {size / 1e6:.3f}M params; {args.rounds} rounds x {args.window} steps")

  if "update" not in skip:
    runners = {n: update_runner(make_tx(char_lm, n, config.steps), params, grads)
               for n in names}
    table("update step (tx.update + apply_updates)",
          interleave(runners, args.rounds, args.window))
  if "train" not in skip:
    runners = {n: train_runner(char_lm, make_tx(char_lm, n, config.steps),
                               initial, batches) for n in names}
    train = interleave(runners, args.rounds, args.window)
    table("whole train step (forward + backward + update, one jit)", train)
    if args.window == 10:
      profile = refresh_profile(runners, args.rounds, args.window)
      print("\nwhole train step, each step blocked and timed on its own\n")
      print("| optimizer | refresh step: median ms | other steps: median ms |"
            " other steps: min ms |")
      print("|---|--:|--:|--:|")
      for name, (refresh, other) in profile.items():
        print(f"| {name} | {statistics.median(refresh) * 1e3:.2f} |"
              f" {statistics.median(other) * 1e3:.2f} | {min(other) * 1e3:.2f} |")
  if "roots" not in skip:
    roots = time_roots(params, grads, (256, 128, None), args.rounds)
    print("\nroots alone (eigh, all leaves)\n")
    print("| block_size | block shapes | median ms | min ms | median / 10 ms |")
    print("|---|---|--:|--:|--:|")
    for block_size, (ts, shapes) in roots.items():
      med = statistics.median(ts)
      print(f"| {block_size} | {' '.join(f'{s[1]}²×{s[0]}' for s in shapes)} |"
            f" {med * 1e3:.2f} | {min(ts) * 1e3:.2f} | {med * 1e2:.2f} |")


if __name__ == "__main__":
  main()
