"""go.sgd against torch.optim.SGD: 60-step float64 trajectories."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners

STEPS = 60
TOLERANCE = 1e-8
PROBLEM = problems.LogisticProblem(seed=1, steps=STEPS)


CASES = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "weight_decay": dict(weight_decay=0.05),
    "momentum+weight_decay": dict(momentum=0.8, weight_decay=0.05),
    "nesterov+weight_decay": dict(momentum=0.7, nesterov=True, weight_decay=0.1),
    "momentum+dampening": dict(momentum=0.9, dampening=0.3),
    "dampening_without_momentum": dict(momentum=0.0, dampening=0.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sgd_matches_torch(name):
  kwargs = CASES[name]
  lr = 0.3
  ours = runners.run_gradtx(
      go.sgd(lr, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS
  )
  ref = torch_runners.run_torch(
      lambda p: torch.optim.SGD(p.values(), lr=lr, **kwargs),
      PROBLEM.params0, PROBLEM.grad, STEPS,
  )
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


def _lr_factor(t):
  # Jumps every step, so that an off-by-one in the step count shows at once.
  return (1 + t % 4) / (1 + 0.1 * t)


@pytest.mark.parametrize(
    "kwargs",
    [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01)],
    ids=["momentum", "nesterov+weight_decay"],
)
def test_sgd_schedule_matches_torch_lambda_lr(kwargs):
  base_lr = 0.2

  def schedule(count):
    return base_lr * _lr_factor(count.astype(jnp.float64))

  ours = runners.run_gradtx(
      go.sgd(schedule, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS
  )
  ref = torch_runners.run_torch(
      lambda p: torch.optim.SGD(p.values(), lr=base_lr, **kwargs),
      PROBLEM.params0, PROBLEM.grad, STEPS, lr_lambda=_lr_factor,
  )
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


def test_schedule_misaligned_by_one_step_is_detected():
  """The schedule test can fail: shifting the schedule by one step breaks it."""
  base_lr = 0.2

  def shifted(count):
    return base_lr * _lr_factor(count.astype(jnp.float64) + 1)

  ours = runners.run_gradtx(
      go.sgd(shifted, momentum=0.9), PROBLEM.params0, PROBLEM.grad, STEPS
  )
  ref = torch_runners.run_torch(
      lambda p: torch.optim.SGD(p.values(), lr=base_lr, momentum=0.9),
      PROBLEM.params0, PROBLEM.grad, STEPS, lr_lambda=_lr_factor,
  )
  assert runners.trajectory_errors(ours, ref)["params"] > 1e-3


def test_sgd_without_momentum_keeps_no_state():
  tx = go.sgd(0.1)
  params = {"w": jnp.ones(3)}
  leaves = jax.tree.leaves(tx.init(params))
  assert all(leaf.size == 1 for leaf in leaves)  # step counters only
  updates, _ = tx.update({"w": jnp.array([1.0, -2.0, 0.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.1, 0.2, 0.0], rtol=1e-6)
