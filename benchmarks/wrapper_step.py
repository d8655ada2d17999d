"""Step time of LAMB, LARS, Lookahead and SAM: gradtx vs optax, as ratios.

Each pair runs the same rule on a GPT-2-style tree (``step_time.gpt_shapes``):
one donated, jitted step (``update`` + ``apply_updates``), timed round-robin
with the other pairs in one process (``memory.time_round_robin``). LARS is
compared at weight decay 0, where gradtx's rule and optax's coincide.
``optax.lookahead`` carries ``LookaheadParams(fast, slow)`` as its params,
gradtx's keeps the slow weights in its state; both steps move the same
arrays. SAM's ``grad_fn`` is a cheap stand-in (0.1·params), so the ratio is
the optimizer's own overhead, without the second backward pass it adds in
training.

  python benchmarks/wrapper_step.py [--workload gpt] [--rounds 20]
"""

import argparse
import statistics
from typing import Callable

import jax
import jax.numpy as jnp
import memory
import optax
import step_time

from gradtx import optimizers as go

LR = 1e-3


def grad_fn(params, index=None):  # optax's grad_fn also takes an index
  del index
  return jax.tree.map(lambda p: 0.1 * p, params)


def optax_sam(base):
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(0.05))
  return optax.contrib.sam(base, adversary, sync_period=2, opaque_mode=True)


# name -> (gradtx factory, optax factory)
PAIRS = {
    "lamb": (lambda: go.lamb(LR, weight_decay=0.01),
             lambda: optax.lamb(LR, weight_decay=0.01)),
    "lars": (lambda: go.lars(1.0), lambda: optax.lars(1.0)),
    "lookahead(adamw)": (lambda: go.lookahead(go.adamw(LR)),
                         lambda: optax.lookahead(optax.adamw(LR), 6, 0.5)),
    "sam(adamw)": (lambda: go.sam(go.adamw(LR), rho=0.05),
                   lambda: optax_sam(optax.adamw(LR))),
}


def timed_step(name: str, library: str, workload) -> Callable[[], None]:
  """One donated, jitted step of the pair ``name``'s ``library`` side."""
  tx = PAIRS[name][library == "optax"]()
  params = step_time.random_tree(workload.shapes, 0, 0.02)
  grads = step_time.random_tree(workload.shapes, 1, 1.0)
  if name.startswith("lookahead") and library == "optax":
    params = optax.LookaheadParams(params, jax.tree.map(jnp.copy, params))
  extra = {"grad_fn": grad_fn} if name.startswith("sam") else {}

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1))
  carry = [params, tx.init(params)]

  def run():
    carry[0], carry[1] = compiled(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", default="gpt")
  parser.add_argument("--rounds", type=int, default=20)
  args = parser.parse_args(argv)
  workload = step_time.parse_workload(args.workload)
  print(step_time.machine_summary())
  print(f"{workload.name}: {workload.num_params / 1e6:.2f}M params")
  steps = {f"{name} {library}": timed_step(name, library, workload)
           for name in PAIRS for library in ("gradtx", "optax")}
  times = memory.time_round_robin(steps, args.rounds)
  print("\n| optimizer | gradtx ms (median) | optax ms (median) | x optax (median)"
        " | x optax (min) |")
  print("|---|---:|---:|---:|---:|")
  for name in PAIRS:
    ours, theirs = times[f"{name} gradtx"], times[f"{name} optax"]
    print(f"| {name} | {statistics.median(ours) * 1e3:.2f} | {statistics.median(theirs) * 1e3:.2f}"
          f" | {statistics.median(ours) / statistics.median(theirs):.2f}x"
          f" | {min(ours) / min(theirs):.2f}x |")


if __name__ == "__main__":
  main()
