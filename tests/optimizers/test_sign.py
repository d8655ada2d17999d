"""Sign-based optimizers against NumPy transcriptions of their papers.

The runs are float64 and checked for near-ties (a sign argument within 1e-9
of 0, where round-off could legitimately flip a sign); without weight decay
the trajectories must agree bit for bit, with it to 1e-12.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions

STEPS = 60
PROBLEM = problems.LogisticProblem(seed=3, steps=STEPS)
LR = 0.01


def _schedule_pair():
  """The same decaying, jumping schedule for NumPy (int t) and JAX (count)."""
  factor = lambda t: (1 + t % 3) / (1 + 0.1 * t)
  return (lambda t: LR * factor(t),
          lambda c: LR * factor(c.astype(jnp.float64)))


def _check(ours, ref, min_arg, exact):
  assert min_arg > 1e-9, f"near-tie in the reference run: {min_arg}"
  if exact:
    for a, r in zip(ours, ref):
      for k in r:
        np.testing.assert_array_equal(a[k], r[k])
  runners.assert_trajectories_close(ours, ref, 1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(b1=0.8, b2=0.95, weight_decay=0.5),
        dict(schedule=True, weight_decay=0.1),
    ],
    ids=["defaults", "betas+weight_decay", "schedule+weight_decay"],
)
def test_lion_matches_program_1(kwargs):
  kwargs = dict(kwargs)
  np_lr, jax_lr = _schedule_pair() if kwargs.pop("schedule", False) else (LR, LR)
  b1, b2 = kwargs.get("b1", 0.9), kwargs.get("b2", 0.99)
  wd = kwargs.get("weight_decay", 0.0)
  ours = runners.run_gradtx(
      go.lion(jax_lr, b1=b1, b2=b2, weight_decay=wd),
      PROBLEM.params0, PROBLEM.grad, STEPS,
  )
  ref, min_arg = transcriptions.lion_numpy(
      PROBLEM.params0, PROBLEM.grad, STEPS, np_lr, b1, b2, wd
  )
  _check(ours, ref, min_arg, exact=(wd == 0.0))


@pytest.mark.parametrize(
    "beta,wd,schedule", [(0.965, 0.0, False), (0.9, 0.3, False), (0.965, 0.1, True)]
)
def test_tiger_matches_reference(beta, wd, schedule):
  np_lr, jax_lr = _schedule_pair() if schedule else (LR, LR)
  ours = runners.run_gradtx(
      go.tiger(jax_lr, beta=beta, weight_decay=wd),
      PROBLEM.params0, PROBLEM.grad, STEPS,
  )
  ref, min_arg = transcriptions.tiger_numpy(
      PROBLEM.params0, PROBLEM.grad, STEPS, np_lr, beta, wd
  )
  _check(ours, ref, min_arg, exact=(wd == 0.0))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_signsgd_and_signum_match_bernstein_2018(momentum):
  ours = runners.run_gradtx(
      go.signsgd(LR, momentum=momentum), PROBLEM.params0, PROBLEM.grad, STEPS
  )
  ref, min_arg = transcriptions.signum_numpy(
      PROBLEM.params0, PROBLEM.grad, STEPS, LR, momentum
  )
  _check(ours, ref, min_arg, exact=True)


def test_lion_is_not_tiger():
  """The oracles can tell the rules apart: Lion(b1 ≠ b2) leaves Tiger's path."""
  ours = runners.run_gradtx(
      go.lion(LR, b1=0.9, b2=0.99), PROBLEM.params0, PROBLEM.grad, STEPS
  )
  ref, _ = transcriptions.tiger_numpy(PROBLEM.params0, PROBLEM.grad, STEPS, LR, 0.99)
  assert runners.trajectory_errors(ours, ref)["updates"] > 0.5
