"""Step time of LAMB, LARS, Lookahead and SAM: gradtx vs optax, as ratios.

Each pair runs the same rule on a GPT-2-style tree (``workloads.gpt_shapes``):
one ``harness.donated_step`` (``update`` + ``apply_updates``), all timed by
``harness.time_round_robin`` in one process; each gradtx row's ratio is to
its optax counterpart. LARS is compared at weight decay 0, where gradtx's
rule and optax's coincide. ``optax.lookahead`` carries
``LookaheadParams(fast, slow)`` as its params, gradtx's keeps the slow weights
in its state; both steps move the same arrays. SAM's ``grad_fn`` is a cheap
stand-in (0.1·params), so the ratio is the optimizer's own overhead, without
the second backward pass it adds in training.

  python -m benchmarks.wrapper_step [--workload gpt] [--rounds 20]
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from benchmarks import harness
from benchmarks.workloads import params_and_grads, parse_workload
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


def contender(name: str, library: str, params, grads) -> harness.Stepper:
  """The donated step of the pair ``name``'s ``library`` side."""
  tx = PAIRS[name][library == "optax"]()
  if name.startswith("lookahead") and library == "optax":
    params = optax.LookaheadParams(params, jax.tree.map(jnp.copy, params))
  extra = {"grad_fn": grad_fn} if name.startswith("sam") else {}
  return harness.stepper(tx, params, grads, **extra)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", default="gpt")
  parser.add_argument("--rounds", type=int, default=20)
  args = parser.parse_args(argv)
  workload = parse_workload(args.workload)
  params, grads = params_and_grads(workload)
  print(harness.machine_banner())
  print(f"\n{workload.name}: {workload.num_params / 1e6:.2f}M params,"
        f" {args.rounds} rounds\n")
  contenders = {f"{name} {library}": contender(name, library, params, grads)
                for name in PAIRS for library in ("gradtx", "optax")}
  times = harness.time_round_robin(contenders, rounds=args.rounds)
  anchors = {f"{name} gradtx": f"{name} optax" for name in PAIRS}
  print(harness.ratio_table(times, anchor=anchors, label="optimizer"))
  print()
  print(harness.closing_line())


if __name__ == "__main__":
  main()
