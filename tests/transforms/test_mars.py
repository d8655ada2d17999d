"""gt.scale_by_mars and gt.gradients_at_previous_point against a NumPy
transcription of the official MARS code (``transcriptions.mars_official``,
AGI-Arena/MARS ``mars.py``), whole 20-step trajectories in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.oracles import problems, runners, transcriptions

STEPS, LR = 20, 1e-2
PARAMS0 = {"w": np.random.default_rng(1).normal(size=(4, 3)),
           "b": np.random.default_rng(2).normal(size=(3,))}
PROBLEM = problems.MlpProblem(seed=3, steps=STEPS)


@pytest.mark.parametrize("scale", [1.0, 0.05], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("gamma", [0.025, 0.5])
def test_approx_matches_the_official_code(gamma, scale):
  base = problems.quadratic_grads(PARAMS0, seed=4)
  grad_fn = lambda p, t: {k: scale * g for k, g in base(p, t).items()}
  tx = optax.chain(gt.scale_by_mars(gamma=gamma), gt.scale_by_learning_rate(LR))
  ours = runners.run_gradtx(tx, PARAMS0, grad_fn, STEPS)
  ref = transcriptions.mars_official(PARAMS0, grad_fn, STEPS, lr=LR, gamma=gamma,
                                     optimize_1d=True)
  runners.assert_trajectories_close(ours, ref, 1e-10)
  # The reference tells the correction apart: Adam on the same clipped g differs.
  plain = transcriptions.mars_official(PARAMS0, grad_fn, STEPS, lr=LR, gamma=0.0,
                                       optimize_1d=True)
  assert runners.trajectory_errors(ours, plain)["updates"] > 1e-3


def test_exact_matches_the_official_code():
  tx = gt.gradients_at_previous_point(
      optax.chain(gt.scale_by_mars(exact=True, gamma=0.5), gt.scale_by_learning_rate(LR)))
  ours = runners.run_with_grad_fn(tx, PROBLEM)
  ref = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=LR, gamma=0.5,
                                     optimize_1d=True, is_approx=False)
  runners.assert_trajectories_close(ours, ref, 1e-10)
  approx = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=LR,
                                        gamma=0.5, optimize_1d=True)
  assert runners.trajectory_errors(ours, approx)["updates"] > 1e-3


def test_first_step_scales_the_gradient_then_clips_per_leaf():
  """g̃₀ = 0: c₁ = (1 + γβ₁/(1−β₁)) g₁, divided by its norm per leaf where > 1."""
  tx = gt.scale_by_mars(gamma=0.1, b1=0.5)
  g = {"big": jnp.array([3.0, 4.0]), "small": jnp.array([0.1, 0.0])}
  state = tx.init(g)
  _, state = tx.update(g, state)
  mu = state[1].mu
  np.testing.assert_allclose(mu["big"], 0.5 * jnp.array([0.6, 0.8]), rtol=1e-6)
  np.testing.assert_allclose(mu["small"], 0.5 * 1.1 * g["small"], rtol=1e-6)
  np.testing.assert_array_equal(state[0].previous_grads["big"], g["big"])


def test_zero_gradients_give_zero_updates():
  tx = gt.scale_by_mars()
  zeros = {"w": jnp.zeros((3, 2))}
  u, _ = jax.jit(tx.update)(zeros, tx.init(zeros))
  np.testing.assert_array_equal(u["w"], 0.0)


def test_exact_needs_previous_grads_and_the_wrapper_needs_grad_fn():
  w = jnp.ones(2)
  with pytest.raises(ValueError, match="gradients_at_previous_point"):
    tx = gt.scale_by_mars(exact=True)
    tx.update(w, tx.init(w), w)
  tx = gt.gradients_at_previous_point(gt.scale_by_mars(exact=True))
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(w, tx.init(w), w)
  with pytest.raises(ValueError, match="inner must be"):
    gt.gradients_at_previous_point(optax.adam)


def test_validation():
  for name, value, message in (("b1", 1.0, r"\[0, 1\)"), ("b2", -0.1, r"\[0, 1\)"),
                               ("eps", -1.0, ">= 0|inf"), ("gamma", -0.5, "inf")):
    with pytest.raises(ValueError, match=f"{name} must be.*{message}"):
      gt.scale_by_mars(**{name: value})


def test_bfloat16_params_keep_their_dtype_in_the_state():
  tx = gt.scale_by_mars()
  p = {"w": jnp.ones((2, 3), jnp.bfloat16)}
  u, state = jax.jit(tx.update)(p, tx.init(p))
  assert u["w"].dtype == jnp.bfloat16
  assert state[0].previous_grads["w"].dtype == jnp.bfloat16


def test_a_stack_is_clipped_per_matrix_as_its_matrices_alone():
  """With ``gt.stacked_matrix_view()`` a (3, 4, 5) stack (scanned layers) is
  three matrices: the clip's norm is each one's, so the stack's trajectory
  is its slices' run one by one (the official code's per-parameter norm)."""
  rng = np.random.default_rng(5)
  params0 = {"stack": rng.normal(size=(3, 4, 5))}
  scales = np.array([3.0, 0.05, 1.0])[:, None, None]  # one clipped, one not
  base = problems.quadratic_grads(params0, seed=6)
  grad_fn = lambda p, t: {"stack": scales * base(p, t)["stack"]}
  stacked = optax.chain(gt.scale_by_mars(gamma=0.5, matrix_view=gt.stacked_matrix_view()),
                        gt.scale_by_learning_rate(LR))
  ours = runners.run_gradtx(stacked, params0, grad_fn, STEPS)
  per_layer = optax.chain(gt.scale_by_mars(gamma=0.5), gt.scale_by_learning_rate(LR))
  for i in range(3):
    alone = runners.run_gradtx(
        per_layer, {"m": params0["stack"][i]},
        lambda p, t, i=i: {"m": grad_fn({"stack": np.broadcast_to(p["m"], (3, 4, 5))}, t)
                           ["stack"][i]}, STEPS)
    assert runners.trajectory_errors(
        [{"m": step["stack"][i]} for step in ours], alone)["params"] < 1e-12
  whole = runners.run_gradtx(per_layer, params0, grad_fn, STEPS)
  assert runners.trajectory_errors(whole, ours)["params"] > 1e-3
