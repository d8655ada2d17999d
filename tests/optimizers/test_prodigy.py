"""go.prodigy against the official Prodigy (prodigyopt 1.1.2) and optax.contrib.prodigy.

Both sides in float64 on the same NumPy gradients, 60 steps; the official
code keeps D and its sums as Python floats (doubles), so the trajectories
agree to round-off.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import prodigyopt
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners
from tests.support import helpers

STEPS = 60
TOLERANCE = 1e-9  # round-off: the decay and the step are one expression here, two there
PROBLEM = problems.LogisticProblem(seed=4, steps=STEPS)


def _warmup(t):
  return min(1.0, t / 5)  # 0 at the first step: the official code skips it


def _warmup_jax(t):
  return jnp.minimum(1.0, t / 5)


# name: (gradtx factory, official keyword arguments, lr multiplier per step or None)
CASES = {
    "defaults": (lambda: go.prodigy(), {}, None),
    "bias_correction_half_rate": (
        lambda: go.prodigy(0.5, use_bias_correction=True), dict(lr=0.5, use_bias_correction=True),
        None),
    "safeguard_warmup_from_zero": (
        lambda: go.prodigy(runners.at_int64_counts(_warmup_jax), safeguard_warmup=True),
        dict(safeguard_warmup=True), _warmup),
    "warmup_from_zero": (
        lambda: go.prodigy(runners.at_int64_counts(_warmup_jax), use_bias_correction=True),
        dict(use_bias_correction=True), _warmup),
    "growth_coef_b3": (
        lambda: go.prodigy(b3=0.9, estim_lr_coef=2.0, growth_rate=1.02, estim_lr0=1e-4),
        dict(beta3=0.9, d_coef=2.0, growth_rate=1.02, d0=1e-4), None),
    "decoupled_decay": (
        lambda: go.prodigy(weight_decay=0.1, b2=0.99), dict(weight_decay=0.1, betas=(0.9, 0.99)),
        None),
    "no_first_moment": (lambda: go.prodigy(b1=0.0), dict(betas=(0.0, 0.999)), None),
}


def _official(kwargs):
  return lambda p: prodigyopt.Prodigy(p.values(), **kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_official_prodigy(name):
  make, kwargs, lr_lambda = CASES[name]
  ours = runners.run_gradtx(make(), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = torch_runners.run_torch(_official(kwargs), PROBLEM.params0, PROBLEM.grad, STEPS,
                                   lr_lambda=lr_lambda)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  # The trajectory moved well beyond d₀-sized steps: D was learned.
  assert np.abs(ours[-1]["w"] - PROBLEM.params0["w"]).max() > 1e-2


def _zero_then_problem(params, t):
  grads = PROBLEM.grad(params, t)
  return jax.tree.map(np.zeros_like, grads) if t < 3 else grads


def test_zero_gradients_skip_the_step_as_the_official_code():
  """Σ|s| = 0 for three steps of zero gradients: no update, and neither D nor
  the bias correction's k advances (the official code returns early)."""
  ours = runners.run_gradtx(go.prodigy(use_bias_correction=True), PROBLEM.params0,
                            _zero_then_problem, 20)
  theirs = torch_runners.run_torch(_official(dict(use_bias_correction=True)),
                                   PROBLEM.params0, _zero_then_problem, 20)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  np.testing.assert_array_equal(ours[3]["w"], PROBLEM.params0["w"])
  tx = go.prodigy()
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
  assert int(state.k) == 0 and int(state.count) == 3
  assert state.d == jnp.asarray(1e-6, state.d.dtype)
  assert np.isfinite(np.asarray(updates["w"])).all()


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_optax_prodigy_is_the_bias_corrected_rule(weight_decay):
  """optax.contrib.prodigy always bias-corrects (off here by default)."""
  ours = runners.run_gradtx(go.prodigy(use_bias_correction=True, weight_decay=weight_decay),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.contrib.prodigy(weight_decay=weight_decay),
                              PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  default = runners.run_gradtx(go.prodigy(weight_decay=weight_decay), PROBLEM.params0,
                               PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(default, theirs)["params"] > 1e-3


def test_the_decay_mask_leaves_the_bias_undecayed():
  params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  zero = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
  grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  masked = go.prodigy(weight_decay=0.5, mask={"w": True, "b": False})
  plain = go.prodigy()
  got, _ = masked.update(grads, masked.init(params), params)
  base, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(got["b"], base["b"], rtol=1e-6)
  assert float(jnp.abs(got["w"] - base["w"]).max()) > 0
  del zero


def test_narrow_moments_follow_float32():
  """bf16 and int8 moments track the float32 run on the logistic problem."""
  params0 = {k: np.asarray(v, np.float32) for k, v in PROBLEM.params0.items()}
  runs = {}
  for name, kw in (("f32", {}), ("bf16", dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16))):
    tx = go.prodigy(**kw)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(30):
      updates, state = step(jax.tree.map(jnp.asarray, PROBLEM.grad(
          jax.tree.map(np.asarray, params), t)), state, params)
      params = optax.apply_updates(params, updates)
    runs[name] = params
  for k in params0:
    np.testing.assert_allclose(runs["bf16"][k], runs["f32"][k], rtol=0.05, atol=0.02)


@pytest.mark.parametrize("kwargs, message", [
    (dict(b1=1.0), r"b1 must be in \[0, 1\)"),
    (dict(b3=-0.1), r"b3 must be in \[0, 1\)"),
    (dict(eps=0.0), r"eps must be in \(0, inf\)"),
    (dict(estim_lr0=0.0), r"estim_lr0 must be in \(0, inf\)"),
    (dict(estim_lr_coef=-1.0), r"estim_lr_coef must be in \(0, inf\)"),
    (dict(growth_rate=1.0), r"growth_rate must be in \(1, inf\]"),
    (dict(use_bias_correction="yes"), "use_bias_correction must be True or False"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    go.prodigy(**kwargs)


def test_params_are_required_and_complex_leaves_refused():
  tx = go.prodigy()
  with pytest.raises(ValueError, match="prodigy needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="prodigy"):
    tx.init({"z": jnp.ones(2, jnp.complex64)})


def test_jit_equals_eager():
  params = helpers.PARAMS
  tx = go.prodigy(weight_decay=0.01)
  eager, state_e, _ = helpers.run_steps(tx, params, helpers.GRADS)
  jitted, state = params, tx.init(params)
  step = jax.jit(tx.update)
  for grads in helpers.GRADS:
    updates, state = step(grads, state, jitted)
    jitted = optax.apply_updates(jitted, updates)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert math.isfinite(float(state_e.d)) and state_e.d >= jnp.float32(1e-6)


def _zero_at_10_and_11(params, t):
  grads = PROBLEM.grad(params, t)
  return jax.tree.map(np.zeros_like, grads) if t in (10, 11) else grads


@pytest.mark.parametrize("kwargs, official", [
    (dict(b3=0.0), dict(beta3=0.0)),
    (dict(b3=0.0, use_bias_correction=True, weight_decay=0.1),
     dict(beta3=0.0, use_bias_correction=True, weight_decay=0.1)),
])
def test_a_zero_gradient_with_b3_zero_is_skipped_after_nonzero_steps(kwargs, official):
  """β₃ = 0: s holds only this step's gradient, so a zero gradient mid-run makes
  Σ|s| = 0 and the official code returns without moving (m ≠ 0 here: the skip
  must not step it; a review found it did, 163% apart after 30 steps)."""
  ours = runners.run_gradtx(go.prodigy(**kwargs), PROBLEM.params0, _zero_at_10_and_11, 30)
  theirs = torch_runners.run_torch(_official(official), PROBLEM.params0, _zero_at_10_and_11, 30)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  np.testing.assert_array_equal(ours[11]["w"], ours[10]["w"])


def test_injected_b1_zero_is_the_static_rule():
  """A traced β₁ of 0 steps d_{t+1}·g as the static one (and the official code),
  on |p|²/2 (the gradient is p) over 25 steps, float64 (in float32 the
  injected β₂ is rounded to float32 before 1 − β₂ is formed, the static one
  is not: their runs differ by that rounding)."""

  def run(tx):
    params = {"w": jnp.array([1.0, -2.0, 3.0], jnp.float64)}
    state = tx.init(params)
    for _ in range(25):
      updates, state = tx.update(params, state, params)
      params = optax.apply_updates(params, updates)
    return np.asarray(params["w"])

  with jax.enable_x64(True):
    static = run(go.prodigy(b1=0.0))
    np.testing.assert_allclose(run(optax.inject_hyperparams(go.prodigy)(b1=0.0)), static,
                               rtol=1e-12)
    assert np.isfinite(static).all()
    assert np.abs(run(go.prodigy(b1=0.5)) - static).max() > 1e-4


def test_a_negative_rate_from_a_schedule_moves_nothing():
  """The official code accumulates and steps only at a positive rate."""
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  tx = go.prodigy(lambda count: jnp.where(count < 3, 1.0, -0.1))
  params_, state, updates = helpers.run_steps(
      tx, params, [{"w": jnp.array([0.3, -0.1, 0.2])}] * 5)
  for u in updates[3:]:
    np.testing.assert_array_equal(u["w"], 0.0)
  assert int(state.k) == 3
