"""go.cocob against a NumPy transcription of COCOB-Backprop (Orabona &
Tommasi 2017, Algorithm 2) and optax.contrib.cocob.

The authors' code is TensorFlow (bremen79/cocob), not installable here, and
pytorch_optimizer 4.1.0 has no COCOB; the transcription below is written from
the paper's equations. All runs in float64 on the same NumPy gradients (a
logistic regression and a least-squares problem: a matrix and a vector),
50 steps; the rule is element-wise, so the runs agree to round-off
(measured: at most 7e-15 on the parameters, 5e-14 on the steps, relative).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx.optimizers.cocob import CocobState, cocob
from tests.oracles import problems, runners

STEPS = 50
TOLERANCE = 1e-11  # round-off: the step is formed as c·(x − (p − p₀)) here
PROBLEM = problems.LogisticProblem(seed=3, steps=STEPS)
QUADRATIC = problems.LeastSquaresProblem({"w": (4, 3), "b": (3,)}, steps=STEPS, seed=2)


def _algorithm_2(params0, grad_fn, steps, *, alpha=100.0, initial_scale=0.0, rate=1.0,
                 weight_decay=0.0, decayed=("w", "b")):
  """COCOB-Backprop, Algorithm 2 of the paper, per coordinate, with its g the
  negative (sub)gradient:

    L_t = max(L_{t−1}, |g_t|),  G_t = G_{t−1} + |g_t|,
    Reward_t = max(Reward_{t−1} + (w_t − w_1) g_t, 0),  θ_t = θ_{t−1} + g_t,
    w_{t+1} = w_1 + θ_t / (L_t max(G_t + L_t, α L_t)) · (L_t + Reward_t),

  from L_0 = ``initial_scale`` (the paper's 0; 0/0 taken as 0: no bet) and
  G_0 = Reward_0 = θ_0 = 0. Beyond the paper: ``weight_decay`` λ adds λw to
  the gradient of the ``decayed`` leaves (λ_t: a schedule too), and a ``rate`` c_t moves w_t that
  fraction of the way, w_{t+1} ← w_t + c_t (w_{t+1} − w_t)."""
  w1 = problems.copy_params(params0)
  w = problems.copy_params(params0)
  scale = {k: np.full_like(v, initial_scale) for k, v in w.items()}
  abs_sum = {k: np.zeros_like(v) for k, v in w.items()}
  reward = {k: np.zeros_like(v) for k, v in w.items()}
  theta = {k: np.zeros_like(v) for k, v in w.items()}
  trajectory = [problems.copy_params(w)]
  for t in range(steps):
    gradient = grad_fn(trajectory[-1], t)
    for k in w:
      decay = problems.rate_at(weight_decay, t) if k in decayed else 0.0
      g = -(gradient[k] + decay * w[k])
      scale[k] = np.maximum(scale[k], np.abs(g))
      abs_sum[k] = abs_sum[k] + np.abs(g)
      reward[k] = np.maximum(reward[k] + (w[k] - w1[k]) * g, 0.0)
      theta[k] = theta[k] + g
      denominator = scale[k] * np.maximum(abs_sum[k] + scale[k], alpha * scale[k])
      with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(denominator > 0, theta[k] / denominator, 0.0)
      target = w1[k] + fraction * (scale[k] + reward[k])
      w[k] = w[k] + problems.rate_at(rate, t) * (target - w[k])
    trajectory.append(problems.copy_params(w))
  return trajectory


def _rate(t):
  return 1.0 / (1.0 + 0.1 * t)


def _decay(t):
  return 0.1 if t < 20 else 0.0


# name: (gradtx keyword arguments, transcription keyword arguments)
CASES = {
    # ε = 1e-8 is below every gradient here: L_0 = ε is the paper's L_0 = 0.
    "defaults": ({}, {}),
    "eps_0": (dict(eps=0.0), {}),
    "alpha_10": (dict(alpha=10.0), dict(alpha=10.0)),
    "alpha_1": (dict(alpha=1.0), dict(alpha=1.0)),  # max(G + L, αL) = G + L
    "eps_above_gradients": (dict(eps=1e-2), dict(initial_scale=1e-2)),
    "weight_decay": (dict(weight_decay=0.05), dict(weight_decay=0.05)),
    "masked_decay": (dict(weight_decay=0.05, mask={"w": True, "b": False}),
                     dict(weight_decay=0.05, decayed=("w",))),
    "weight_decay_schedule": (dict(weight_decay=lambda c: jnp.where(c < 20, 0.1, 0.0)),
                              dict(weight_decay=_decay)),
    "half_rate": (dict(learning_rate=0.5), dict(rate=0.5)),
    "rate_schedule": (dict(learning_rate=_rate), dict(rate=_rate)),
}


def _transcription(name, problem=PROBLEM):
  return _algorithm_2(problem.params0, problem.grad, STEPS, **CASES[name][1])


@pytest.mark.parametrize("name", list(CASES))
def test_matches_algorithm_2(name):
  ours = runners.run_gradtx(cocob(**CASES[name][0]), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, _transcription(name), TOLERANCE)
  assert np.abs(ours[-1]["w"] - PROBLEM.params0["w"]).max() > 0.1  # it moved


@pytest.mark.parametrize("name", ["defaults", "alpha_10", "weight_decay"])
def test_matches_algorithm_2_on_least_squares(name):
  ours = runners.run_gradtx(cocob(**CASES[name][0]), QUADRATIC.params0, QUADRATIC.grad, STEPS)
  runners.assert_trajectories_close(ours, _transcription(name, QUADRATIC), TOLERANCE)


def test_eps_is_the_initial_scale_and_departs_from_the_paper_only_below_it():
  """ε = 1e-2 is above some of the logistic gradients (1e-3 to 0.15): the
  paper's L_0 = 0 then bets more on those coordinates (measured 4.6e-3
  apart, relative)."""
  ours = runners.run_gradtx(cocob(eps=1e-2), PROBLEM.params0, PROBLEM.grad, STEPS)
  paper = _algorithm_2(PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(ours, paper)["params"] > 1e-3


def _scaled(factor):
  return lambda p, t: {k: factor * v for k, v in PROBLEM.grad(p, t).items()}


def test_the_paper_rule_is_scale_free_and_eps_damps_tiny_gradients():
  """At ε = 0 gradients 2⁻⁴⁰ (1e-12) times smaller give the same steps
  (the rule is invariant to the gradients' scale); ε = 1e-8 keeps such a
  coordinate within 1e-3 of where it started (the authors' L_0 = 1e-8)."""
  tiny = 2.0 ** -40
  paper = runners.run_gradtx(cocob(eps=0.0), PROBLEM.params0, PROBLEM.grad, STEPS)
  scaled = runners.run_gradtx(cocob(eps=0.0), PROBLEM.params0, _scaled(tiny), STEPS)
  runners.assert_trajectories_close(scaled, paper, TOLERANCE)
  damped = runners.run_gradtx(cocob(), PROBLEM.params0, _scaled(tiny), STEPS)
  reference = _algorithm_2(PROBLEM.params0, _scaled(tiny), STEPS, initial_scale=1e-8)
  runners.assert_trajectories_close(damped, reference, TOLERANCE)
  assert np.abs(damped[-1]["w"] - PROBLEM.params0["w"]).max() < 1e-3


def _zero_then_problem(params, t):
  grads = PROBLEM.grad(params, t)
  return jax.tree.map(np.zeros_like, grads) if t < 3 else grads


@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_zero_gradients_at_the_start_bet_nothing(eps):
  """L = ε, or 0 with the paper's 0/0 taken as 0: no bet until the first
  non-zero gradient, which then starts the paper's rule."""
  ours = runners.run_gradtx(cocob(eps=eps), PROBLEM.params0, _zero_then_problem, STEPS)
  runners.assert_trajectories_close(
      ours, _algorithm_2(PROBLEM.params0, _zero_then_problem, STEPS), TOLERANCE)
  np.testing.assert_array_equal(ours[3]["w"], PROBLEM.params0["w"])
  assert np.abs(ours[-1]["w"] - PROBLEM.params0["w"]).max() > 0.1


# name: gradtx keyword arguments, given to optax.contrib.cocob too
OPTAX_CASES = {
    "defaults": {},
    "alpha_10": dict(alpha=10.0),
    "eps_above_gradients": dict(eps=1e-2),
    "weight_decay": dict(weight_decay=0.05),
    "masked_decay": dict(weight_decay=0.05, mask={"w": True, "b": False}),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_at_a_rate_of_1(name):
  kwargs = OPTAX_CASES[name]
  ours = runners.run_gradtx(cocob(**kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.contrib.cocob(1.0, **kwargs), PROBLEM.params0,
                              PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)


def test_optax_zero_gradients_with_eps_0_give_nan():
  """optax divides 0 by L = 0 where the paper's 0/0 must be read as no bet."""
  theirs = runners.run_gradtx(optax.contrib.cocob(eps=0.0), PROBLEM.params0,
                              _zero_then_problem, 2)
  assert np.isnan(theirs[-1]["w"]).all()
  ours = runners.run_gradtx(cocob(eps=0.0), PROBLEM.params0, _zero_then_problem, 2)
  np.testing.assert_array_equal(ours[-1]["w"], PROBLEM.params0["w"])


def test_optax_learning_rate_scales_the_gradient_which_the_rule_ignores():
  """optax multiplies the gradient by its learning rate before the rule,
  which is invariant to the gradients' scale (but for ε): optax at 0.25 is
  optax at 1 (to round-off); here 0.25 scales each step."""
  run = lambda tx: runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(run(optax.contrib.cocob(0.25)), run(optax.contrib.cocob()),
                                    TOLERANCE)
  full, quarter = run(cocob()), run(cocob(0.25))
  np.testing.assert_allclose(quarter[1]["w"] - quarter[0]["w"],
                             0.25 * (full[1]["w"] - full[0]["w"]), rtol=1e-12)
  assert runners.trajectory_errors(quarter, full)["params"] > 0.1


def test_optax_learning_rate_schedule_reweights_the_gradients():
  """optax's schedule c_t multiplies g_t: the paper's rule on c_t·g_t (a
  schedule exact in float32, as optax reads it at its int32 count), far
  from c_t multiplying the steps (measured 0.3 apart, relative)."""
  schedule = lambda t: jnp.where(t < 25, 1.0, 0.25)
  theirs = runners.run_gradtx(optax.contrib.cocob(schedule), PROBLEM.params0, PROBLEM.grad,
                              STEPS)
  reweighted = lambda p, t: {k: (1.0 if t < 25 else 0.25) * v
                             for k, v in PROBLEM.grad(p, t).items()}
  runners.assert_trajectories_close(
      theirs, _algorithm_2(PROBLEM.params0, reweighted, STEPS), TOLERANCE)
  ours = runners.run_gradtx(cocob(schedule), PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(ours, theirs)["params"] > 1e-2


def test_the_decay_mask_leaves_the_bias_as_without_decay():
  """Element-wise: the undecayed leaf takes exactly the steps it takes
  without any decay."""
  masked = runners.run_gradtx(cocob(weight_decay=0.1, mask={"w": True, "b": False}),
                              PROBLEM.params0, PROBLEM.grad, 10)
  plain = runners.run_gradtx(cocob(), PROBLEM.params0, PROBLEM.grad, 10)
  decayed = runners.run_gradtx(cocob(weight_decay=0.1), PROBLEM.params0, PROBLEM.grad, 10)
  # (b's gradient depends on w: compare the first step, before w differs)
  np.testing.assert_array_equal(masked[1]["b"], plain[1]["b"])
  assert np.abs(decayed[1]["b"] - plain[1]["b"]).max() > 0
  assert np.abs(masked[1]["w"] - plain[1]["w"]).max() > 0


def test_jit_equals_eager_without_retracing():
  tx = cocob(lambda c: 1.0 / (1 + c), weight_decay=lambda c: 0.01 / (1 + c),
             mask={"w": True, "b": False})
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.ones(2)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
           for _ in range(5)]
  eager, jitted = params, params
  state_e, state_j = tx.init(params), tx.init(params)
  step = jax.jit(tx.update)
  for g in grads:
    u, state_e = tx.update(g, state_e, eager)
    eager = optax.apply_updates(eager, u)
    u, state_j = step(g, state_j, jitted)
    jitted = optax.apply_updates(jitted, u)
  assert step._cache_size() == 1
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _least_squares_run(dtype, steps=100):
  problem = problems.LeastSquaresProblem({"w": (16, 8), "b": (8,)}, steps=steps, seed=1)
  tx = cocob()
  params = {k: jnp.asarray(v, dtype) for k, v in problem.params0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(steps):
    grads = problem.grad({k: np.asarray(v, np.float64) for k, v in params.items()}, t)
    params, state = step(params, state, {k: jnp.asarray(v, dtype) for k, v in grads.items()})
  assert step._cache_size() == 1  # one program for every step
  return {k: np.asarray(v, np.float64) for k, v in params.items()}, state, params


def test_bf16_params_stay_bf16_with_float32_state():
  """bf16 parameters: bf16 updates, float32 sums, reward and p₀; the bet is
  absolute (p₀ + x), so bf16 rounding does not accumulate: within 3% of the
  float32 run after 100 steps (measured 1.4%; optax.contrib.cocob, whose
  sums and p₀ are bf16 then, 6%)."""
  reference, _, _ = _least_squares_run(jnp.float32)
  got, state, params = _least_squares_run(jnp.bfloat16)
  assert isinstance(state, CocobState)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  assert {x.dtype for x in jax.tree.leaves(state[1:])} == {jnp.dtype(jnp.float32)}
  for k in reference:
    gap = np.abs(got[k] - reference[k]).max() / np.abs(reference[k]).max()
    assert gap < 0.03, (k, gap)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_non_finite_gradient_spoils_only_its_coordinate_for_good(bad):
  tx = cocob()
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates, state = step({"w": jnp.array([0.1, bad, 0.2])}, state, params)
  for _ in range(3):
    updates, state = step({"w": jnp.array([0.1, 0.2, -0.3])}, state, params)
  u = np.asarray(updates["w"])
  assert np.isnan(u[1]) and np.isfinite(u[[0, 2]]).all() and (u[[0, 2]] != 0).all()


def test_inject_hyperparams_gives_the_same_steps():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}

  def run(tx):
    p, state = params, tx.init(params)
    for _ in range(30):
      updates, state = tx.update(p, state, p)
      p = optax.apply_updates(p, updates)
    return np.asarray(p["w"])

  kwargs = dict(learning_rate=0.5, alpha=50.0, eps=0.0, weight_decay=0.01)
  np.testing.assert_allclose(run(optax.inject_hyperparams(cocob)(**kwargs)),
                             run(cocob(**kwargs)), rtol=1e-6)
  # In float64 an injected α (not exact in float32) is used at float64, not
  # rounded to float32 first (which put the steps 2e-8 apart from the first).
  with jax.enable_x64(True):
    params = {"w": jnp.array([1.0, -2.0, 3.0], jnp.float64)}
    kwargs = dict(alpha=37.7, eps=0.0)
    np.testing.assert_allclose(run(optax.inject_hyperparams(cocob)(**kwargs)),
                               run(cocob(**kwargs)), rtol=1e-13)


def test_float32_bets_on_tiny_gradients_as_on_any_other_at_eps_0():
  """At eps=0 the rule is scale-free: gradients of 1e-20 and 1e-30 step as
  those of 1 in float32 (the denominator L·max(G + L, αL) flushed to 0 below
  L ≈ 1e-19 and made the coordinates inf, then NaN)."""
  grads = [np.array([0.3, -0.2, 0.5], np.float32) * (1 + t) for t in range(5)]

  def run(scale):
    tx = cocob(eps=0.0)
    p = {"w": jnp.array([1.0, -2.0, 3.0])}
    state = tx.init(p)
    for g in grads:
      updates, state = jax.jit(tx.update)({"w": jnp.asarray(g * scale)}, state, p)
      p = optax.apply_updates(p, updates)
    return np.asarray(p["w"])

  reference = run(np.float32(1.0))
  for scale in (1e-20, 1e-30):
    np.testing.assert_allclose(run(np.float32(scale)), reference, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=-1.0), r"learning_rate must be in \[0, inf\)"),
    (dict(learning_rate="1"), "learning_rate must be a non-negative number"),
    (dict(alpha=0.0), r"alpha must be in \(0, inf\)"),
    (dict(alpha=float("inf")), r"alpha must be in \(0, inf\)"),
    (dict(alpha=lambda c: 100.0), "alpha must be a number"),
    (dict(eps=-1e-8), r"eps must be in \[0, inf\)"),
    (dict(eps=float("nan")), r"eps must be in \[0, inf\)"),
    (dict(weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
    (dict(mask="w"), "mask must be None"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    cocob(**kwargs)


def test_params_are_required_and_complex_leaves_refused():
  tx = cocob()
  with pytest.raises(ValueError, match="cocob needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="cocob does not support complex"):
    tx.init({"z": jnp.ones(2, jnp.complex64)})
