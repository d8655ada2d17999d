"""go.adagrad against torch.optim.Adagrad: 60-step float64 trajectories."""

import pytest
import torch

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners

STEPS = 60
TOLERANCE = 1e-8
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)


# name: (gradtx factory, torch factory)
TORCH_CASES = {
    "adagrad": (
        lambda: go.adagrad(0.1),
        lambda p: torch.optim.Adagrad(p.values(), lr=0.1),
    ),
    "adagrad_initial_accumulator": (
        lambda: go.adagrad(0.1, initial_accumulator_value=0.5),
        lambda p: torch.optim.Adagrad(
            p.values(), lr=0.1, initial_accumulator_value=0.5
        ),
    ),
    "adagrad_weight_decay": (
        lambda: go.adagrad(0.1, initial_accumulator_value=0.1, weight_decay=0.05),
        lambda p: torch.optim.Adagrad(
            p.values(), lr=0.1, initial_accumulator_value=0.1, weight_decay=0.05
        ),
    ),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(name):
  make_ours, make_torch = TORCH_CASES[name]
  runners.assert_trajectories_close(
      *torch_runners.run_gradtx_and_torch(make_ours(), make_torch, PROBLEM, STEPS), TOLERANCE)
