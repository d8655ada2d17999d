"""go.fromage against the official code (transcribed), pytorch_optimizer and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import pytorch_optimizer

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners, transcriptions

STEPS = 60
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)
# The bias starts at zero: the official code's ratio-1 rule for ‖p‖ = 0.
ZERO_BIAS = {**PROBLEM.params0, "b": np.zeros_like(PROBLEM.params0["b"])}
SCHEDULE = optax.linear_schedule(0.3, 0.05, STEPS)
SETTINGS = {
    "default_rate": (0.01, PROBLEM.params0),
    "zero_initialised_leaf": (0.3, ZERO_BIAS),
    "schedule": (SCHEDULE, ZERO_BIAS),
}


def _ours(rate):
  return go.fromage(runners.at_int64_counts(rate) if callable(rate) else rate)


def _rate_at(rate):
  """The rate as the transcription reads it: SCHEDULE in float64."""
  return (lambda t: 0.3 - 0.25 * min(t, STEPS) / STEPS) if rate is SCHEDULE else rate


@pytest.mark.parametrize("name", list(SETTINGS))
def test_matches_the_official_code(name):
  """Measured: ≤ 1e-14 relative on the parameters, 4e-14 on the steps."""
  rate, params0 = SETTINGS[name]
  ours = runners.run_gradtx(_ours(rate), params0, PROBLEM.grad, STEPS)
  ref = transcriptions.fromage_official(params0, PROBLEM.grad, STEPS, _rate_at(rate))
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


@pytest.mark.parametrize("name", ["default_rate", "zero_initialised_leaf"])
def test_matches_pytorch_optimizer(name):
  rate, params0 = SETTINGS[name]
  make_torch = lambda p: pytorch_optimizer.Fromage(p.values(), lr=rate, foreach=False)
  ours = runners.run_gradtx(_ours(rate), params0, PROBLEM.grad, STEPS)
  ref = torch_runners.run_torch(make_torch, params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


def test_complex_parameters_use_complex_norms():
  rng = np.random.default_rng(0)
  params0 = {"z": rng.normal(size=5) + 1j * rng.normal(size=5),
             "w": rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))}
  grad = problems.complex_quadratic_grads(params0, 0)
  ours = runners.run_gradtx(go.fromage(0.1), params0, grad, 30)
  ref = transcriptions.fromage_official(params0, grad, 30, 0.1)
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


def test_optax_fromage_agrees_until_a_norm_is_below_min_norm():
  """optax clips both norms at min_norm = 1e-6 instead of the ratio-1 rule:
  equal steps while every norm exceeds it; a zero-initialised bias then
  moves by 1e-6·η·g/‖g‖ in optax, by η·g in the official code."""
  ours = runners.run_gradtx(go.fromage(0.3), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.fromage(0.3), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  ours = runners.run_gradtx(go.fromage(0.3), ZERO_BIAS, PROBLEM.grad, 1)
  theirs = runners.run_gradtx(optax.fromage(0.3), ZERO_BIAS, PROBLEM.grad, 1)
  g = PROBLEM.grad(ZERO_BIAS, 0)["b"]
  np.testing.assert_allclose(ours[1]["b"], -0.3 * g / np.sqrt(1.09), rtol=1e-12)
  np.testing.assert_allclose(
      theirs[1]["b"], -0.3 * 1e-6 * g / np.linalg.norm(g) / np.sqrt(1.09), rtol=1e-6)


@pytest.mark.parametrize("rate, params", [(0.3, ZERO_BIAS), (SCHEDULE, ZERO_BIAS)],
                         ids=["zero_initialised_leaf", "schedule"])
def test_min_norm_is_optax_fromage(rate, params):
  """``min_norm=1e-6`` is optax.fromage's rule, the zero-initialised bias
  included (60 float64 steps)."""
  in_float64 = runners.at_int64_counts(rate) if callable(rate) else rate
  ours = runners.run_gradtx(go.fromage(in_float64, min_norm=1e-6), params, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.fromage(in_float64, min_norm=1e-6), params, PROBLEM.grad,
                              STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  official = runners.run_gradtx(_ours(rate), params, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(ours, official)["params"] > 1e-2


def test_zero_gradient_shrinks_the_weights_by_the_norm_factor():
  params = {"w": jnp.array([3.0, -4.0]), "b": jnp.zeros(2)}
  tx = go.fromage(0.5)
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(params["w"] + u["w"], params["w"] / np.sqrt(1.25), rtol=1e-6)
  assert bool(jnp.all(u["b"] == 0))


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_non_finite_gradient_makes_its_whole_leaf_nan(bad):
  params = {"w": jnp.ones(4), "b": jnp.ones(2)}
  grads = {"w": jnp.ones(4).at[2].set(bad), "b": jnp.ones(2)}
  tx = go.fromage(0.1)
  u, _ = tx.update(grads, tx.init(params), params)
  assert bool(jnp.all(jnp.isnan(u["w"]))) and bool(jnp.all(jnp.isfinite(u["b"])))


def test_injected_learning_rate_gives_the_static_steps():
  """η enters nonlinearly (η/√(1+η²) and the shrink factor): a traced η
  must give the same step as a constant one."""
  params = {"w": jnp.array([[1.0, 2.0], [0.5, -1.0]])}
  grads = {"w": jnp.array([[0.1, -0.3], [0.2, 0.0]])}
  tx = optax.inject_hyperparams(go.fromage)(learning_rate=0.1)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.7)
  injected, _ = jax.jit(tx.update)(grads, state, params)
  static, _ = go.fromage(0.7).update(grads, go.fromage(0.7).init(params), params)
  np.testing.assert_allclose(injected["w"], static["w"], rtol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.1"])
def test_bad_learning_rate_is_refused_by_name(bad):
  with pytest.raises(ValueError, match="learning_rate must be"):
    go.fromage(bad)
