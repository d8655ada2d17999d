"""go.madgrad against the official MADGRAD (madgrad 1.3) and optax.contrib.madgrad.

Both sides in float64 on the same NumPy gradients, 60 steps; the official
code forms λ_k = (η + ε)·√(k+1) as a Python float (a double), so the
trajectories agree to round-off (measured: 2e-15 on the parameters, 1e-12
on the steps, relative).
"""

import types

import jax
import jax.numpy as jnp
import madgrad as official
import numpy as np
import optax
import pytest

from gradtx.optimizers.madgrad import MadgradState, madgrad
from tests.oracles import problems, runners, torch_runners

STEPS = 60
TOLERANCE = 1e-11  # round-off: the step is c·(z − x) here, (1 − c)·x + c·z there
PROBLEM = problems.LogisticProblem(seed=4, steps=STEPS)


def _warmup(t):
  return min(1.0, t / 5)  # 0 at the first step: the official rate stays 0 (no +ε)


def _cosine(t):
  return 0.05 * 0.5 * (1 + np.cos(np.pi * t / STEPS))


def _set_cosine_rate(optimizer, t):
  for group in optimizer.param_groups:
    group["lr"] = _cosine(t)


def _official(kwargs):
  return lambda p: official.MADGRAD(p.values(), **kwargs)


def _decay_w_only(kwargs):
  """The official form of ``mask={"w": True, "b": False}``: a group without decay."""
  return lambda p: official.MADGRAD(
      [{"params": [p["w"]]}, {"params": [p["b"]], "weight_decay": 0.0}], **kwargs)


cosine_jax = lambda t: 0.05 * 0.5 * (1 + jnp.cos(jnp.pi * t / STEPS))

# name: (gradtx factory, official optimizer builder, lr_lambda, before_step)
CASES = {
    "defaults": (lambda: madgrad(), _official({}), None, None),
    "momentum_0": (lambda: madgrad(momentum=0.0), _official(dict(momentum=0.0)), None, None),
    "eps_0": (lambda: madgrad(eps=0.0), _official(dict(eps=0.0)), None, None),
    "coupled_decay": (
        lambda: madgrad(0.02, weight_decay=0.1),
        _official(dict(lr=0.02, weight_decay=0.1)), None, None),
    "coupled_decay_momentum_0": (
        lambda: madgrad(weight_decay=0.1, momentum=0.0),
        _official(dict(weight_decay=0.1, momentum=0.0)), None, None),
    "decoupled_decay": (
        lambda: madgrad(weight_decay=0.5, decouple_decay=True),
        _official(dict(weight_decay=0.5, decouple_decay=True)), None, None),
    # The official code recovers x₀ from x at momentum 0, so the decay shrinks x₀ too.
    "decoupled_decay_momentum_0": (
        lambda: madgrad(weight_decay=0.5, decouple_decay=True, momentum=0.0),
        _official(dict(weight_decay=0.5, decouple_decay=True, momentum=0.0)), None, None),
    "masked_decoupled_decay": (
        lambda: madgrad(weight_decay=0.5, decouple_decay=True, mask={"w": True, "b": False}),
        _decay_w_only(dict(weight_decay=0.5, decouple_decay=True)), None, None),
    "masked_coupled_decay": (
        lambda: madgrad(weight_decay=0.1, mask={"w": True, "b": False}),
        _decay_w_only(dict(weight_decay=0.1)), None, None),
    "warmup_from_zero": (
        lambda: madgrad(runners.at_int64_counts(lambda t: 0.05 * jnp.minimum(1.0, t / 5))),
        _official(dict(lr=0.05)), _warmup, None),
    "cosine_schedule_decoupled": (
        lambda: madgrad(runners.at_int64_counts(cosine_jax), weight_decay=0.5,
                        decouple_decay=True, momentum=0.5),
        _official(dict(weight_decay=0.5, decouple_decay=True, momentum=0.5)), None,
        _set_cosine_rate),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_official_madgrad(name):
  make, make_official, lr_lambda, before_step = CASES[name]
  ours = runners.run_gradtx(make(), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = torch_runners.run_torch(make_official, PROBLEM.params0, PROBLEM.grad, STEPS,
                                   lr_lambda=lr_lambda, before_step=before_step)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  assert np.abs(ours[-1]["w"] - PROBLEM.params0["w"]).max() > 0.1  # it moved


def _zero_then_problem(params, t):
  grads = PROBLEM.grad(params, t)
  return jax.tree.map(np.zeros_like, grads) if t < 3 else grads


@pytest.mark.parametrize("kwargs", [
    {}, dict(momentum=0.0), dict(eps=0.0), dict(weight_decay=0.5, decouple_decay=True),
], ids=str)
def test_zero_gradients_at_the_start_as_the_official_code(kwargs):
  """s = ν = 0 for three steps: z = x₀, so nothing moves (but the decay)."""
  ours = runners.run_gradtx(madgrad(**kwargs), PROBLEM.params0, _zero_then_problem, 30)
  theirs = torch_runners.run_torch(_official(kwargs), PROBLEM.params0, _zero_then_problem, 30)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  if "weight_decay" not in kwargs:
    np.testing.assert_array_equal(ours[3]["w"], PROBLEM.params0["w"])


def test_momentum_0_at_eps_0_is_finite_where_the_official_code_is_nan():
  """The official momentum-0 path recovers x₀ = x + s/(ν^{1/3} + ε) without its
  guard for ν^{1/3} + ε = 0, so at ε = 0 its first step is 0/0 everywhere.
  Its momentum path with momentum = 1e-300 (c = 1 − 1e-300 = 1 exactly, so
  x = z) keeps x₀ and the guard: the reference here."""
  nan_run = torch_runners.run_torch(_official(dict(momentum=0.0, eps=0.0)), PROBLEM.params0,
                                    PROBLEM.grad, 1)
  assert np.isnan(nan_run[1]["w"]).all()
  ours = runners.run_gradtx(madgrad(momentum=0.0, eps=0.0), PROBLEM.params0,
                            _zero_then_problem, 30)
  theirs = torch_runners.run_torch(_official(dict(momentum=1e-300, eps=0.0)), PROBLEM.params0,
                                   _zero_then_problem, 30)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)


def _float32_lambda(monkeypatch):
  """The official code with λ_k = float32(η + ε)·float32(√(k+1)) (NumPy 2
  keeps a Python float times a float32 in float32), optax's λ."""
  module = __import__("madgrad.madgrad", fromlist=["math"])
  monkeypatch.setattr(module, "math", types.SimpleNamespace(
      pow=lambda x, _: np.sqrt(np.float32(x))))


@pytest.mark.parametrize("kwargs", [{}, dict(momentum=0.0), dict(weight_decay=0.1)], ids=str)
def test_optax_madgrad_is_the_official_rule_with_a_float32_weight(kwargs, monkeypatch):
  """optax.contrib.madgrad forms √(k+1) of its int32 count in float32, also
  in float64 runs: 1e-8 from the official steps (measured 1.5e-8 on the
  parameters, 6e-8 on the steps), and round-off from the official code
  given that float32 λ_k (7e-16, 7e-14)."""
  ours = runners.run_gradtx(madgrad(**kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.contrib.madgrad(1e-2, **kwargs), PROBLEM.params0,
                              PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, 2e-7)
  _float32_lambda(monkeypatch)
  rounded = torch_runners.run_torch(_official(kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(theirs, rounded, TOLERANCE)


def test_optax_madgrad_shifts_a_rate_of_zero_by_eps():
  """The official code adds ε to η only where η ≠ 0; optax always does, so
  a warm-up from 0 moves at its first step (measured 6e-6 apart, relative,
  after 60 steps)."""
  warmup = runners.at_int64_counts(lambda t: 0.05 * jnp.minimum(1.0, t / 5))
  ours = runners.run_gradtx(madgrad(warmup), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.contrib.madgrad(warmup), PROBLEM.params0, PROBLEM.grad,
                              STEPS)
  np.testing.assert_array_equal(ours[1]["w"], PROBLEM.params0["w"])
  assert np.abs(theirs[1]["w"] - PROBLEM.params0["w"]).max() > 0
  assert 1e-6 < runners.trajectory_errors(ours, theirs)["params"] < 1e-4


def test_optax_madgrad_is_nan_at_eps_0_where_a_gradient_is_zero():
  """At ε = 0 the official code divides s = 0 by inf where ν = 0; optax
  divides 0 by 0."""
  ours = runners.run_gradtx(madgrad(eps=0.0), PROBLEM.params0, _zero_then_problem, 5)
  theirs = runners.run_gradtx(optax.contrib.madgrad(1e-2, eps=0.0), PROBLEM.params0,
                              _zero_then_problem, 5)
  assert np.isfinite(ours[-1]["w"]).all() and np.isnan(theirs[-1]["w"]).all()


def _least_squares_run(tx, dtype, steps=300):
  problem = problems.LeastSquaresProblem({"w": (16, 8), "b": (8,)}, steps=steps, seed=1)
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
  return {k: np.asarray(v, np.float64) for k, v in params.items()}, state


def test_bf16_params_stay_bf16_with_float32_sums_under_one_jit():
  """bf16 parameters: bf16 updates, float32 s, ν and x₀ (the official code's
  float32 state), 0.6% from the float32 run after 300 steps (measured;
  optax keeps bf16 sums, and is 3% from it)."""
  reference, _ = _least_squares_run(madgrad(), jnp.float32)
  got, state = _least_squares_run(madgrad(), jnp.bfloat16)
  assert isinstance(state, MadgradState)
  assert {x.dtype for x in jax.tree.leaves((state.s, state.nu, state.params0))} == {
      jnp.dtype(jnp.float32)}
  for k in reference:
    gap = np.abs(got[k] - reference[k]).max() / np.abs(reference[k]).max()
    assert gap < 0.02, (k, gap)
  tx = madgrad()
  params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
  updates, _ = jax.jit(tx.update)({"w": jnp.full((2, 3), 0.5, jnp.bfloat16)}, tx.init(params),
                                  params)
  assert updates["w"].dtype == jnp.bfloat16


def test_momentum_0_keeps_no_x0_and_a_traced_momentum_of_0_is_the_static_rule():
  """At a literal momentum 0 x₀ is recovered from the sums (no copy kept);
  ``optax.inject_hyperparams`` traces it and keeps x₀, selecting the same
  recovery (it matters with decoupled decay, which moves the recovered x₀)."""
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  assert madgrad(momentum=0.0).init(params).params0 is None

  def run(tx):
    p, state = params, tx.init(params)
    step = jax.jit(tx.update)
    for t in range(25):
      updates, state = step({"w": p["w"] - 0.5 + 0.1 * t}, state, p)
      p = optax.apply_updates(p, updates)
    return np.asarray(p["w"])

  kwargs = dict(weight_decay=0.3, decouple_decay=True)
  static = run(madgrad(0.1, momentum=0.0, **kwargs))
  traced = run(optax.inject_hyperparams(madgrad)(0.1, momentum=0.0, **kwargs))
  np.testing.assert_allclose(traced, static, rtol=1e-6)
  assert np.abs(run(madgrad(0.1, momentum=0.5, **kwargs)) - static).max() > 1e-3


def test_cautious_decay_skips_coordinates_the_step_moves_away_from_zero():
  """One step from x₀ (the decay does not change the first MADGRAD step):
  the decay γλ_wd·x applies where the step moves x towards 0 or not at all."""
  params = {"w": jnp.array([1.0, -2.0, 3.0, -1.0]), "b": jnp.array([0.5, -0.5])}
  grads = {"w": jnp.array([0.3, 0.2, -0.4, 0.0]), "b": jnp.array([-0.1, -0.2])}
  plain_tx = madgrad(0.1)
  cautious_tx = madgrad(0.1, weight_decay=0.5, decouple_decay=True, cautious_weight_decay=True,
                        mask={"w": True, "b": False})
  plain, _ = plain_tx.update(grads, plain_tx.init(params), params)
  got, _ = cautious_tx.update(grads, cautious_tx.init(params), params)
  decay = (0.1 + 1e-6) * 0.5 * params["w"] * (plain["w"] * params["w"] <= 0)
  np.testing.assert_allclose(got["w"], plain["w"] - decay, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(decay) != 0, [True, False, False, True])
  np.testing.assert_allclose(got["b"], plain["b"], rtol=1e-6)


def test_a_nan_gradient_spoils_only_its_coordinate_for_good():
  tx = madgrad(0.1)
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates, state = step({"w": jnp.array([0.1, jnp.nan, 0.2])}, state, params)
  for _ in range(3):
    updates, state = step({"w": jnp.array([0.1, 0.2, 0.0])}, state, params)
  u = np.asarray(updates["w"])
  assert np.isnan(u[1]) and np.isfinite(u[[0, 2]]).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=-0.1), r"learning_rate must be in \[0, inf\)"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
    (dict(eps=-1e-6), r"eps must be in \[0, inf\)"),
    (dict(weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
    (dict(decouple_decay="yes"), "decouple_decay must be True or False"),
    (dict(cautious_weight_decay=True), "cautious_weight_decay needs decouple_decay=True"),
    (dict(mask="w"), "mask must be None"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    madgrad(**kwargs)


def test_params_are_required_and_complex_leaves_refused():
  tx = madgrad()
  with pytest.raises(ValueError, match="madgrad needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="madgrad does not support complex"):
    tx.init({"z": jnp.ones(2, jnp.complex64)})


def test_float32_forms_one_minus_momentum_in_double():
  """In float32, c = 1 − momentum is formed from the Python float in double
  (as the official code): rounded to float32 first, a momentum of 0.999 put
  c 4e-5 off and the run 10x further from the float64 official one than the
  official float32 run."""
  params = {k: jnp.asarray(v, jnp.float32) for k, v in PROBLEM.params0.items()}
  tx = madgrad(0.1, momentum=0.999)
  state, step = tx.init(params), jax.jit(tx.update)
  for t in range(STEPS):
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), PROBLEM.grad(
        {k: np.asarray(v, np.float64) for k, v in params.items()}, t))
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  reference = torch_runners.run_torch(
      _official(dict(lr=0.1, momentum=0.999)), PROBLEM.params0, PROBLEM.grad, STEPS)[-1]
  moved = max(np.abs(reference[k] - PROBLEM.params0[k]).max() for k in reference)
  error = max(np.abs(np.asarray(params[k], np.float64) - reference[k]).max() for k in reference)
  assert error < 1e-5 * moved, (error, moved)
