"""dadapt_adamw against the official DAdaptAdam (dadaptation 3.2) and optax.contrib.dadapt_adamw.

Both sides in float64 on the same NumPy gradients, 60 steps; the official
code keeps D and its numerator as Python floats (doubles), so the
trajectories and D agree to round-off.
"""

import dadaptation
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from gradtx.optimizers.dadapt import DAdaptAdamState, dadapt_adamw
from tests.oracles import problems, runners, torch_runners
from tests.support import helpers

STEPS = 60
TOLERANCE = 1e-10  # the parameters and D, relative
# Each step relative to itself: the official code decays p in place before
# its step, one more rounding of p (1e-16·|p|), which is 1e-9 of a first
# step of d₀·η·c ≈ 1e-7 (a warm-up, the bias correction).
STEP_TOLERANCE = 1e-8
PROBLEM = problems.LogisticProblem(seed=4, steps=STEPS)


def _schedule(t):
  """A warm-up from 0, a decay to 1/2 and a pause of two steps at a rate of 0."""
  return 0.0 if t in (20, 21) else min(1.0, t / 5) * (1 - t / (2 * STEPS))


def _schedule_jax(t):
  rate = jnp.minimum(1.0, t / 5) * (1 - t / (2 * STEPS))
  return jnp.where((t == 20) | (t == 21), 0.0, rate)


def _zero_at(steps):
  def grad(params, t):
    grads = PROBLEM.grad(params, t)
    return jax.tree.map(np.zeros_like, grads) if t in steps else grads
  return grad


# name: (gradtx factory, official keyword arguments, lr per step or None, gradients)
CASES = {
    "defaults": (lambda: dadapt_adamw(), {}, None, PROBLEM.grad),
    "bias_correction": (
        lambda: dadapt_adamw(use_bias_correction=True), dict(use_bias_correction=True), None,
        PROBLEM.grad),
    # The official default decouple=False: L2 decay in the gradient.
    "coupled_decay": (
        lambda: optax.chain(gt.coupled_weight_decay(0.1), dadapt_adamw()),
        dict(weight_decay=0.1), None, PROBLEM.grad),
    "decoupled_decay": (
        lambda: dadapt_adamw(weight_decay=0.1, b2=0.99),
        dict(weight_decay=0.1, decouple=True, betas=(0.9, 0.99)), None, PROBLEM.grad),
    "growth_rate_d0": (
        lambda: dadapt_adamw(growth_rate=1.02, estim_lr0=1e-4),
        dict(growth_rate=1.02, d0=1e-4), None, PROBLEM.grad),
    "no_first_moment_large_eps": (
        lambda: dadapt_adamw(b1=0.0, eps=1e-3), dict(betas=(0.0, 0.999), eps=1e-3), None,
        PROBLEM.grad),
    "schedule_from_zero_with_pause": (
        lambda: dadapt_adamw(runners.at_int64_counts(_schedule_jax), use_bias_correction=True,
                             weight_decay=0.1),
        dict(use_bias_correction=True, weight_decay=0.1, decouple=True), _schedule,
        PROBLEM.grad),
    # Σ|s| = 0 for three steps: skipped, k does not advance (bias-corrected).
    "zero_gradients_first": (
        lambda: dadapt_adamw(use_bias_correction=True), dict(use_bias_correction=True), None,
        _zero_at({0, 1, 2})),
    # β₂ = 0 makes β₃ = 0: s is this step's gradient, so a zero gradient
    # mid-run is skipped after m ≠ 0 has taken its decay.
    "b2_zero_zero_gradients_mid_run": (
        lambda: dadapt_adamw(b2=0.0, use_bias_correction=True, weight_decay=0.1),
        dict(betas=(0.9, 0.0), use_bias_correction=True, weight_decay=0.1, decouple=True), None,
        _zero_at({10, 11})),
}


def _d_of(state):
  """D of a ``DAdaptAdamState`` anywhere in a (chain's) state."""
  is_state = lambda x: isinstance(x, DAdaptAdamState)
  return next(s for s in jax.tree.leaves(state, is_leaf=is_state) if is_state(s)).d


def _run_ours(tx, grad_fn, steps=STEPS):
  """``runners.run_gradtx``, also recording D: (trajectory, D before each step and after)."""
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v, jnp.float64) for k, v in PROBLEM.params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    trajectory, ds = [problems.copy_params(PROBLEM.params0)], [float(_d_of(state))]
    for t in range(steps):
      params, state = step(params, state, grad_fn(trajectory[-1], t))
      trajectory.append(problems.copy_params(params))
      ds.append(float(_d_of(state)))
  return trajectory, np.array(ds)


def _run_official(kwargs, grad_fn, lr=None, steps=STEPS, groups=None):
  """The official DAdaptAdam in float64: (trajectory, D before each step and after)."""
  made, ds = [], []

  def make(tensors):
    params = tensors.values() if groups is None else groups(tensors)
    made.append(dadaptation.DAdaptAdam(params, **kwargs))
    return made[0]

  def before_step(optimizer, t):
    ds.append(optimizer.param_groups[0]["d"])
    if lr is not None:
      for group in optimizer.param_groups:
        group["lr"] = lr(t)

  trajectory = torch_runners.run_torch(make, PROBLEM.params0, grad_fn, steps,
                                       before_step=before_step)
  return trajectory, np.array(ds + [made[0].param_groups[0]["d"]])


def _assert_close(ours, theirs):
  (trajectory, ds), (reference, ds_reference) = ours, theirs
  errors = runners.trajectory_errors(trajectory, reference)
  d_error = np.abs(ds - ds_reference).max() / np.abs(ds_reference).max()
  print(f"max relative error: params {errors['params']:.2e}, steps {errors['updates']:.2e},"
        f" D {d_error:.2e}")
  assert errors["params"] <= TOLERANCE and d_error <= TOLERANCE, (errors, d_error)
  assert errors["updates"] <= STEP_TOLERANCE, errors


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_official_dadapt_adam(name):
  make, kwargs, lr, grad_fn = CASES[name]
  ours = _run_ours(make(), grad_fn)
  _assert_close(ours, _run_official(kwargs, grad_fn, lr))
  trajectory, ds = ours
  assert np.abs(trajectory[-1]["w"] - PROBLEM.params0["w"]).max() > 1e-4
  assert ds[-1] > 2 * ds[0] or name == "b2_zero_zero_gradients_mid_run"  # (there d̂ < d₀)


def test_skipped_steps_move_nothing():
  """Zero gradients first, a rate of 0 mid-run, a zero gradient with β₂ = 0:
  no update and no decay, D and k held (as the official code returns early)."""
  trajectory, ds = _run_ours(CASES["zero_gradients_first"][0](), _zero_at({0, 1, 2}), 4)
  np.testing.assert_array_equal(trajectory[3]["w"], PROBLEM.params0["w"])
  assert (ds[:4] == 1e-6).all() and np.abs(trajectory[4]["w"] - trajectory[3]["w"]).max() > 0
  trajectory, _ = _run_ours(CASES["schedule_from_zero_with_pause"][0](), PROBLEM.grad, 23)
  np.testing.assert_array_equal(trajectory[22]["w"], trajectory[20]["w"])
  np.testing.assert_array_equal(trajectory[1]["w"], PROBLEM.params0["w"])
  trajectory, _ = _run_ours(CASES["b2_zero_zero_gradients_mid_run"][0](), _zero_at({10, 11}), 13)
  np.testing.assert_array_equal(trajectory[12]["w"], trajectory[10]["w"])
  tx = dadapt_adamw(use_bias_correction=True)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
  assert int(state.k) == 0 and int(state.count) == 3
  assert np.isfinite(np.asarray(updates["w"])).all()


def test_the_decay_mask_matches_official_parameter_groups():
  """mask={"w": True, "b": False} is the official code with two groups, the
  bias's without decay (one D for both, as here)."""
  groups = lambda t: [{"params": [t["w"]], "weight_decay": 0.1},
                      {"params": [t["b"]], "weight_decay": 0.0}]
  ours = _run_ours(dadapt_adamw(weight_decay=0.1, mask={"w": True, "b": False}), PROBLEM.grad)
  _assert_close(ours, _run_official(dict(decouple=True), PROBLEM.grad, groups=groups))


def test_first_step_by_hand_with_cautious_decay():
  """From zero state: m = (1−β₁)d₀g, v = (1−β₂)g², D still d₀ in the step,
  and a cautious decay d₀·λ·p only where m·p ≥ 0 (float32, NumPy)."""
  rng = np.random.default_rng(1)
  p, g = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
  d0, wd = 1e-3, 0.5
  tx = dadapt_adamw(estim_lr0=d0, weight_decay=wd, cautious_weight_decay=True)
  updates, state = tx.update(jnp.asarray(g), tx.init(jnp.asarray(p)), jnp.asarray(p))
  p64, g64 = p.astype(np.float64), g.astype(np.float64)
  m = 0.1 * d0 * g64
  direction = m / (np.sqrt(0.001 * g64 ** 2) + 1e-8)
  expected = -(direction + np.where(direction * p64 >= 0, wd * d0 * p64, 0))
  np.testing.assert_allclose(updates, expected, rtol=1e-5)
  # d̂ = r/((1−β₃)Σ|s|) with r = 0 (s was 0): D stays d₀.
  assert float(state.d) == pytest.approx(d0) and int(state.k) == 1


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_optax_dadapt_adamw_is_the_bias_corrected_decoupled_rule(weight_decay):
  """optax.contrib.dadapt_adamw always bias-corrects (off here and in the
  official code by default) and decays decoupled: the same steps then."""
  kwargs = dict(weight_decay=weight_decay, b2=0.99)
  ours = runners.run_gradtx(dadapt_adamw(use_bias_correction=True, **kwargs),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.contrib.dadapt_adamw(betas=(0.9, 0.99),
                                                         weight_decay=weight_decay),
                              PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  default = runners.run_gradtx(dadapt_adamw(**kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(default, theirs)["params"] > 1e-1


def test_optax_dadapt_adamw_does_not_skip():
  """Where the official code skips, optax's does not: a first zero gradient
  or a warm-up from 0 is 0/0 (D NaN), and at a rate of 0 it keeps stepping."""
  nan = runners.run_gradtx(optax.contrib.dadapt_adamw(), PROBLEM.params0, _zero_at({0}), 3)
  assert np.isnan(nan[-1]["w"]).all()
  warmup = runners.at_int64_counts(lambda t: jnp.minimum(1.0, t / 5))
  nan = runners.run_gradtx(optax.contrib.dadapt_adamw(warmup), PROBLEM.params0, PROBLEM.grad, 3)
  assert np.isnan(nan[-1]["w"]).all()
  ours, _ = _run_ours(dadapt_adamw(warmup, use_bias_correction=True), PROBLEM.grad, 3)
  assert np.isfinite(ours[-1]["w"]).all()
  pause = runners.at_int64_counts(lambda t: jnp.where(t >= 20, 0.0, 1.0))
  theirs = runners.run_gradtx(optax.contrib.dadapt_adamw(pause), PROBLEM.params0, PROBLEM.grad, 30)
  ours, _ = _run_ours(dadapt_adamw(pause, use_bias_correction=True), PROBLEM.grad, 30)
  runners.assert_trajectories_close(ours[:21], theirs[:21], TOLERANCE)
  np.testing.assert_array_equal(ours[30]["w"], ours[20]["w"])
  assert np.abs(theirs[30]["w"] - theirs[20]["w"]).max() > 1e-4


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=-1.0), r"learning_rate must be in \[0, inf\)"),
    (dict(b1=1.0), r"b1 must be in \[0, 1\)"),
    (dict(b2=-0.1), r"b2 must be in \[0, 1\)"),
    (dict(eps=0.0), r"eps must be in \(0, inf\)"),
    (dict(estim_lr0=0.0), r"estim_lr0 must be in \(0, inf\)"),
    (dict(growth_rate=1.0), r"growth_rate must be in \(1, inf\]"),
    (dict(use_bias_correction="yes"), "use_bias_correction must be True or False"),
    (dict(weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
    (dict(mask="w"), "mask must be None"),
    (dict(mu_dtype=jnp.int32), "mu_dtype must be None"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dadapt_adamw(**kwargs)


def test_params_are_required_and_complex_leaves_refused():
  tx = dadapt_adamw()
  with pytest.raises(ValueError, match="dadapt_adamw needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="dadapt_adamw"):
    tx.init({"z": jnp.ones(2, jnp.complex64)})


def test_jit_traces_once_and_equals_eager():
  params = helpers.PARAMS
  tx = dadapt_adamw(optax.linear_schedule(1.0, 0.5, 10), weight_decay=lambda t: 0.01 * t)
  eager, state_e, _ = helpers.run_steps(tx, params, helpers.GRADS)
  traces = []

  @jax.jit
  def step(grads, state, params):
    traces.append(1)
    return tx.update(grads, state, params)

  jitted, state = params, tx.init(params)
  for grads in helpers.GRADS:
    updates, state = step(grads, state, jitted)
    jitted = optax.apply_updates(jitted, updates)
  assert len(traces) == 1 and step._cache_size() == 1
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(state_e.d) > 1e-6


def test_injected_decays_are_the_static_rule():
  """Float64 (in float32 the injected β is rounded before 1 − β and √β are
  formed, the static one is not, as in the official code)."""

  def run(tx):
    params = {"w": jnp.array([1.0, -2.0, 3.0], jnp.float64)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(25):
      updates, state = step(params, state, params)
      params = optax.apply_updates(params, updates)
    return np.asarray(params["w"])

  with jax.enable_x64(True):
    static = run(dadapt_adamw(b1=0.5, b2=0.99))
    np.testing.assert_allclose(run(optax.inject_hyperparams(dadapt_adamw)(b1=0.5, b2=0.99)),
                               static, rtol=1e-12)
  assert np.abs(static - [1.0, -2.0, 3.0]).max() > 0.1


def test_bfloat16_params_get_bfloat16_updates_and_follow_float32():
  params0 = {k: np.asarray(v, np.float32) for k, v in PROBLEM.params0.items()}
  runs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    tx = dadapt_adamw()
    cast = lambda tree, dtype=dtype: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)
    params = cast(params0)
    state = tx.init(params)
    assert state.d.dtype == jnp.float32 and state.mu["w"].dtype == dtype
    step = jax.jit(tx.update)
    for t in range(30):
      grads = PROBLEM.grad(jax.tree.map(lambda v: np.asarray(v, np.float64), params), t)
      updates, state = step(cast(grads), state, params)
      assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
      params = optax.apply_updates(params, updates)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    runs[dtype] = jax.tree.map(lambda v: np.asarray(v, np.float32), params)
  for k in params0:
    np.testing.assert_allclose(runs[jnp.bfloat16][k], runs[jnp.float32][k], rtol=0.05, atol=0.05)


def test_float32_keeps_the_decays_of_python_floats_in_double():
  """In float32, 1 − β₁, 1 − β₂ and 1 − √β₂ are formed from the Python
  floats in double, as the official code forms them: rounding β₂ = 0.999 to
  float32 first made 1 − √β₂ 3.5e-5 too large and D 3e-5 off the float64
  official D (the official float32 run: 3e-7)."""
  params = {k: jnp.asarray(v, jnp.float32) for k, v in PROBLEM.params0.items()}
  tx = dadapt_adamw()
  state, step = tx.init(params), jax.jit(tx.update)
  ds = [float(state.d)]
  for t in range(STEPS):
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), PROBLEM.grad(
        {k: np.asarray(v, np.float64) for k, v in params.items()}, t))
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    ds.append(float(state.d))
  _, reference = _run_official({}, PROBLEM.grad)
  error = np.abs(np.array(ds) / reference - 1).max()
  assert error < 2e-6, error
