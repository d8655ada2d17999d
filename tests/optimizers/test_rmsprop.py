"""go.rmsprop against torch.optim.RMSprop: 60-step float64 trajectories."""

import optax
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


def test_optax_rmsprop_by_arguments():
  """What the docstring says gives optax.rmsprop's rule (decay 0.9, ε inside
  the root) with gradtx's factory."""
  ours = runners.run_gradtx(go.rmsprop(0.01, decay=0.9, eps=0.0, eps_root=1e-8),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.rmsprop(0.01), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, 1e-12)


@pytest.mark.parametrize("options", [
    dict(initial_scale=1.0),
    dict(momentum=0.9, nesterov=True),
    dict(debias=True),
    dict(debias=True, centered=True, momentum=0.5, nesterov=True),
    dict(initial_scale=0.5, centered=True),
], ids=lambda o: "-".join(o))
def test_optax_rmsprop_options(options):
  """optax.rmsprop's initial_scale, nesterov and bias_correction (``debias``
  here; its ε inside
  the root: eps_root here), 60 float64 steps (1e-8: the centered variance
  v − ḡ² cancels; the plain ones agree to 1e-12)."""
  ours = runners.run_gradtx(go.rmsprop(0.01, decay=0.9, eps=0.0, eps_root=1e-8, **options),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  named = {("bias_correction" if k == "debias" else k): v for k, v in options.items()}
  theirs = runners.run_gradtx(optax.rmsprop(0.01, **named), PROBLEM.params0, PROBLEM.grad,
                              STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE if "centered" in options else 1e-12)
  plain = runners.run_gradtx(go.rmsprop(0.01, decay=0.9, eps=0.0, eps_root=1e-8,
                                        momentum=options.get("momentum", 0.0),
                                        centered=options.get("centered", False)),
                             PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(ours, plain)["updates"] > 1e-3  # each option acts


def test_optax_rmsprop_without_eps_in_the_root_is_eps_outside():
  """optax's eps_in_sqrt=False puts ε outside the root: eps here, eps_root 0."""
  ours = runners.run_gradtx(go.rmsprop(0.01, decay=0.9, eps=1e-3, momentum=0.9),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.rmsprop(0.01, eps=1e-3, eps_in_sqrt=False, momentum=0.9),
                              PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, 1e-12)
