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

  python -m benchmarks.wrapper_step [--workload gpt] [--rounds 20] [--only lamb lars]
"""

import jax
import jax.numpy as jnp
import optax

from benchmarks import harness
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
  harness.pairs_main(argv, __doc__.split("\n")[0], list(PAIRS), contender)


if __name__ == "__main__":
  main()
