"""go.adadelta against torch.optim.Adadelta (float64 trajectories) and optax.adadelta."""

import optax
import pytest
import torch

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners

STEPS = 60
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)

# name: (gradtx factory, torch factory)
TORCH_CASES = {
    # torch's defaults (lr=1.0, rho=0.9, eps=1e-6): the paper's method.
    "defaults": (lambda: go.adadelta(), lambda p: torch.optim.Adadelta(p.values())),
    "lr_decay_eps_weight_decay": (
        lambda: go.adadelta(0.5, decay=0.95, eps=1e-4, weight_decay=0.1),
        lambda p: torch.optim.Adadelta(
            p.values(), lr=0.5, rho=0.95, eps=1e-4, weight_decay=0.1),
    ),
    "schedule": (
        lambda: go.adadelta(runners.at_int64_counts(optax.linear_schedule(2.0, 0.5, STEPS))),
        lambda p: torch.optim.Adadelta(p.values(), lr=2.0),
    ),
}
# torch runs step t at lr_lambda(t)·lr: the schedule at count t.
LR_LAMBDAS = {"schedule": lambda t: (2.0 - 1.5 * t / STEPS) / 2.0}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(name):
  """60 steps, float64: measured ≤ 2e-14 relative on the steps, 4e-16 on the
  parameters."""
  make_ours, make_torch = TORCH_CASES[name]
  runners.assert_trajectories_close(
      *torch_runners.run_gradtx_and_torch(
          make_ours(), make_torch, PROBLEM, STEPS, lr_lambda=LR_LAMBDAS.get(name)),
      TOLERANCE)


def test_matches_optax_adadelta():
  """optax.adadelta is the same rule (ε inside both roots, coupled decay);
  only its learning_rate has no default."""
  for kwargs in [dict(), dict(decay=0.8, eps=1e-5, weight_decay=0.05)]:
    optax_kwargs = {"rho" if k == "decay" else k: v for k, v in kwargs.items()}
    ours = runners.run_gradtx(go.adadelta(1.0, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
    theirs = runners.run_gradtx(
        optax.adadelta(1.0, **optax_kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
    runners.assert_trajectories_close(ours, theirs, TOLERANCE)


def test_complex_parameters_take_torchs_steps_through_split_real_and_imaginary():
  """torch keeps one pair of averages per real and imaginary part; gradtx one
  |g|² per complex coordinate: split_real_and_imaginary bridges them."""
  make_torch = lambda p: torch.optim.Adadelta(p.values(), lr=0.5)
  split = optax.contrib.split_real_and_imaginary(go.adadelta(0.5))
  ours, ref = torch_runners.run_complex_gradtx_and_torch(split, make_torch)
  runners.assert_trajectories_close(ours, ref, TOLERANCE)
  shared, _ = torch_runners.run_complex_gradtx_and_torch(go.adadelta(0.5), make_torch)
  assert runners.trajectory_errors(shared, ref)["params"] > 1e-3
