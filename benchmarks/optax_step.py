"""Step time of the optimizers that share a name with optax's: gradtx vs optax, as ratios.

Each pair runs on a GPT-2-style tree (``workloads.gpt_shapes``): one
``harness.donated_step`` (``update`` + ``apply_updates``), all timed by
``harness.time_round_robin`` in one process; each gradtx row's ratio is to
its optax counterpart. Where the defaults differ the pair fixes them alike
(weight decay 1e-4, optax.adamw's; SM3's ε inside the root; AdaGrad's ε and
starting sum), so that most pairs take the same steps (float32 round-off
apart over 5 steps). Three keep a documented difference of rule, which costs
the same arithmetic (README, "Where a row follows torch or a reference"):
AdaGrad's ε (outside the root here, inside in optax), Adan's difference
weight and decay form, Yogi's starting first moment.
The wrappers (LAMB, LARS, Lookahead, SAM) are in ``benchmarks/wrapper_step.py``.

  python -m benchmarks.optax_step [--workload gpt] [--rounds 20] [--only adamw adan]
"""

import jax
import jax.numpy as jnp
import optax

from benchmarks import harness
from gradtx import optimizers as go

LR = 1e-3
WD = 1e-4

# name -> (gradtx factory, optax factory), the same rule and settings.
PAIRS = {
    "sgd(momentum)": (lambda: go.sgd(LR, momentum=0.9), lambda: optax.sgd(LR, momentum=0.9)),
    "adagrad": (lambda: go.adagrad(LR, eps=1e-7),
                lambda: optax.adagrad(LR, initial_accumulator_value=0.0, eps=1e-7)),
    "adam": (lambda: go.adam(LR), lambda: optax.adam(LR)),
    "adamw": (lambda: go.adamw(LR, weight_decay=WD), lambda: optax.adamw(LR, weight_decay=WD)),
    "adabelief": (lambda: go.adabelief(LR), lambda: optax.adabelief(LR)),
    "lion": (lambda: go.lion(LR, weight_decay=WD), lambda: optax.lion(LR, weight_decay=WD)),
    "adamax": (lambda: go.adamax(LR), lambda: optax.adamax(LR)),
    "adamaxw": (lambda: go.adamaxw(LR, weight_decay=WD),
                lambda: optax.adamaxw(LR, weight_decay=WD)),
    "radam": (lambda: go.radam(LR), lambda: optax.radam(LR)),
    "yogi": (lambda: go.yogi(LR, weight_decay=0.0), lambda: optax.yogi(LR)),
    "adopt": (lambda: go.adopt(LR), lambda: optax.contrib.adopt(LR)),
    "adan": (lambda: go.adan(LR, weight_decay=WD), lambda: optax.adan(LR, weight_decay=WD)),
    "adadelta": (lambda: go.adadelta(LR), lambda: optax.adadelta(LR)),
    "novograd": (lambda: go.novograd(LR, weight_decay=WD),
                 lambda: optax.novograd(LR, weight_decay=WD)),
    "sm3": (lambda: go.sm3(LR, eps_root=1e-8), lambda: optax.sm3(LR)),
    "fromage": (lambda: go.fromage(LR), lambda: optax.fromage(LR)),
    "schedule_free_adamw": (lambda: go.schedule_free_adamw(LR, weight_decay=WD),
                            lambda: optax.contrib.schedule_free_adamw(LR, weight_decay=WD)),
    # optax's Prodigy always bias-corrects: gradtx's with use_bias_correction=True.
    # Its state holds the parameters themselves as p₀ (not a copy), which a
    # donated step refuses: its init is given a copy here.
    "prodigy": (lambda: go.prodigy(1.0, use_bias_correction=True),
                lambda: _copying_init(optax.contrib.prodigy(1.0))),
    "prodigy(weight_decay)": (
        lambda: go.prodigy(1.0, use_bias_correction=True, weight_decay=WD),
        lambda: _copying_init(optax.contrib.prodigy(1.0, weight_decay=WD))),
    # optax's D-Adaptation always bias-corrects, and its decay is decoupled.
    "dadapt_adamw": (lambda: go.dadapt_adamw(1.0, use_bias_correction=True, weight_decay=WD),
                     lambda: optax.contrib.dadapt_adamw(1.0, weight_decay=WD)),
    # optax's MADGRAD keeps the parameters themselves as x₀ (as Prodigy's p₀).
    "madgrad": (lambda: go.madgrad(LR), lambda: _copying_init(optax.contrib.madgrad(LR))),
    # DoG and DoWG at their multiplier of 1 (optax's dog keeps p₀ uncopied too).
    "dog": (lambda: go.dog(1.0), lambda: _copying_init(optax.contrib.dog(1.0))),
    "dowg": (lambda: go.dowg(1.0), lambda: _copying_init(optax.contrib.dowg(1.0))),
    # COCOB at its multiplier of 1 (optax's rate scales the gradient; at 1 the same rule).
    "cocob": (lambda: go.cocob(1.0), lambda: _copying_init(optax.contrib.cocob(1.0))),
}


def _copying_init(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` whose ``init`` sees a copy of the parameters and returns a copy of its
  state, so that no state leaf aliases the parameters or another state leaf
  (optax.contrib.cocob's sums are one zeros array: a donated step refuses it)."""
  return tx._replace(init=lambda params: jax.tree.map(
      jnp.copy, tx.init(jax.tree.map(jnp.copy, params))))


def contender(name: str, library: str, params, grads) -> harness.Stepper:
  """The donated step of the pair ``name``'s ``library`` side."""
  return harness.stepper(PAIRS[name][library == "optax"](), params, grads)


def main(argv=None):
  harness.pairs_main(argv, __doc__.split("\n")[0], list(PAIRS), contender)


if __name__ == "__main__":
  main()
