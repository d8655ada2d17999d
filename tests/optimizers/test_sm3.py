"""SM3 against the official TensorFlow code (a NumPy transcription) and pytorch_optimizer."""

import numpy as np
import pytest
import pytorch_optimizer

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners, transcriptions

STEPS = 50
# A 3-axis tensor, a matrix, a vector and a scalar: SM3's three kinds of state.
PARAMS0 = {k: np.random.default_rng(1).normal(size=s)
           for k, s in {"t": (3, 4, 5), "w": (6, 3), "v": (4,), "s": ()}.items()}
GRAD = problems.quadratic_grads(PARAMS0, seed=4)
LOGISTIC = problems.LogisticProblem(seed=2, steps=STEPS)


@pytest.mark.parametrize("b1", [0.9, 0.0, 0.5])
def test_sm3_matches_the_official_code(b1):
  ours = runners.run_gradtx(go.sm3(0.1, b1=b1), PARAMS0, GRAD, STEPS)
  ref = transcriptions.sm3_official(PARAMS0, GRAD, STEPS, 0.1, b1)
  runners.assert_trajectories_close(ours, ref, 1e-12)


def test_sm3_with_a_schedule_matches_the_official_code():
  schedule = lambda t: 0.2 / (1 + 0.1 * t)
  ours = runners.run_gradtx(go.sm3(schedule), LOGISTIC.params0, LOGISTIC.grad, STEPS)
  ref = transcriptions.sm3_official(LOGISTIC.params0, LOGISTIC.grad, STEPS, schedule, 0.9)
  runners.assert_trajectories_close(ours, ref, 1e-12)


@pytest.mark.parametrize("b1", [0.9, 0.0])
def test_sm3_matches_pytorch_optimizer(b1):
  ours = runners.run_gradtx(go.sm3(0.1, b1=b1), PARAMS0, GRAD, STEPS)
  theirs = torch_runners.run_torch(
      lambda p: pytorch_optimizer.SM3(p.values(), lr=0.1, momentum=b1), PARAMS0, GRAD, STEPS)
  runners.assert_trajectories_close(ours, theirs, 1e-12)


def test_sm3_steps_shrink_like_adagrad():
  """With no momentum a constant gradient of constant magnitude c gives
  ν_t = t c² everywhere, so u_t = η sign(g)/√t, AdaGrad's step."""
  g = {"w": 1.5 * np.array([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])}
  trajectory = runners.run_gradtx(go.sm3(0.1, b1=0.0), {"w": np.zeros((2, 3))},
                                  lambda p, t: g, 5)
  for t in range(1, 6):
    step = trajectory[t]["w"] - trajectory[t - 1]["w"]
    np.testing.assert_allclose(step, -0.1 * np.sign(g["w"]) / np.sqrt(t), rtol=1e-12)
