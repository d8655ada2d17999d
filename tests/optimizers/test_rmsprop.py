"""go.rmsprop against torch.optim.RMSprop: 60-step float64 trajectories."""

import pytest
import torch

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners

STEPS = 60
TOLERANCE = 1e-8
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)


# name: (gradtx factory, torch factory)
TORCH_CASES = {
    "rmsprop": (
        lambda: go.rmsprop(0.01),
        lambda p: torch.optim.RMSprop(p.values(), lr=0.01),
    ),
    "rmsprop_momentum": (
        lambda: go.rmsprop(0.01, decay=0.9, momentum=0.8),
        lambda p: torch.optim.RMSprop(p.values(), lr=0.01, alpha=0.9, momentum=0.8),
    ),
    "rmsprop_centered_momentum": (
        lambda: go.rmsprop(0.01, decay=0.95, momentum=0.9, centered=True),
        lambda p: torch.optim.RMSprop(
            p.values(), lr=0.01, alpha=0.95, momentum=0.9, centered=True
        ),
    ),
    "rmsprop_centered_weight_decay": (
        lambda: go.rmsprop(0.01, eps=1e-6, centered=True, weight_decay=0.1),
        lambda p: torch.optim.RMSprop(
            p.values(), lr=0.01, eps=1e-6, centered=True, weight_decay=0.1
        ),
    ),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(name):
  make_ours, make_torch = TORCH_CASES[name]
  runners.assert_trajectories_close(
      *torch_runners.run_gradtx_and_torch(make_ours(), make_torch, PROBLEM, STEPS), TOLERANCE)
