"""Adan against the official code (a NumPy transcription) and pytorch_optimizer, float64."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import pytorch_optimizer

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners, torch_runners, transcriptions

STEPS = 50
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)
SETTINGS = [
    dict(),  # the official defaults (0.98, 0.92, 0.99), no decay
    dict(b1=0.9, b2=0.8, b3=0.95, eps=1e-6, weight_decay=0.3),
]


def _official(lr, **kw):
  return transcriptions.adan_official(
      PROBLEM.params0, PROBLEM.grad, STEPS, lr,
      betas=(kw.get("b1", 0.98), kw.get("b2", 0.92), kw.get("b3", 0.99)),
      eps=kw.get("eps", 1e-8), weight_decay=kw.get("weight_decay", 0.0),
      no_prox=kw.get("no_prox", False))


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_adan_matches_the_official_code(kwargs):
  ours = runners.run_gradtx(go.adan(0.05, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, _official(0.05, **kwargs), 1e-12)


def test_adan_with_a_schedule_matches_the_official_code():
  schedule = lambda t: 0.05 * (1 - 0.9 * t / STEPS)  # float64 on both sides
  ours = runners.run_gradtx(go.adan(schedule, weight_decay=0.2),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, _official(schedule, weight_decay=0.2), 1e-12)


def test_no_prox_is_the_decoupled_chain():
  tx = optax.chain(gt.scale_by_adan(), gt.decoupled_weight_decay(0.3),
                   gt.scale_by_learning_rate(0.05))
  ours = runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(
      ours, _official(0.05, weight_decay=0.3, no_prox=True), 1e-12)
  # ... which the proximal default is not (1 − ηλ vs 1/(1 + ηλ)).
  gap = runners.trajectory_errors(ours, _official(0.05, weight_decay=0.3))
  assert gap["params"] > 1e-5


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_adan_matches_pytorch_optimizer(kwargs):
  """pytorch_optimizer's Adan is the official step (its ``weight_decouple=False``
  is the proximal decay)."""
  ours = runners.run_gradtx(go.adan(0.05, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = torch_runners.run_torch(
      lambda p: pytorch_optimizer.Adan(
          p.values(), lr=0.05,
          betas=(kwargs.get("b1", 0.98), kwargs.get("b2", 0.92), kwargs.get("b3", 0.99)),
          eps=kwargs.get("eps", 1e-8), weight_decay=kwargs.get("weight_decay", 0.0)),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, 1e-12)


def test_zero_gradients_shrink_by_the_proximal_factor():
  tx = go.adan(0.1, weight_decay=0.5)
  params = {"w": jnp.array([2.0, -4.0])}
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update({"w": jnp.zeros(2)}, state, params)
    new = optax.apply_updates(params, u)
    np.testing.assert_allclose(new["w"], params["w"] / 1.05, rtol=1e-6)
    params = new
