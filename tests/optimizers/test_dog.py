"""go.dog against the official DoG / LDoG (dog-optimizer 1.0.3) and
optax.contrib.dog; go.dowg against a NumPy transcription of the DoWG paper's
Algorithm 1 and optax.contrib.dowg.

All trajectories in float64 on the same NumPy gradients (a logistic
regression: a matrix and a vector), 50 steps; the official code keeps its
scalars as float64 tensors, so the runs agree to round-off.
"""

import dog as official  # the official DoG package (dog-optimizer)
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx.optimizers.dog import dog, dowg
from tests.oracles import problems, runners, torch_runners

STEPS = 50
TOLERANCE = 1e-10  # round-off: the tree norms are summed in another order there
PROBLEM = problems.LogisticProblem(seed=7, steps=STEPS)


def _rate(t):
  return 1.0 / (1.0 + 0.1 * t)


def _decay(t):
  return 0.1 if t < 20 else 0.0


# name: (gradtx keyword arguments, official keyword arguments, per-step official
# group settings {key: schedule} or {})
CASES = {
    "defaults": ({}, {}, {}),
    "reps_rel_eps": (dict(reps_rel=1e-4, eps=1e-6), dict(reps_rel=1e-4, eps=1e-6), {}),
    "rate_schedule": (dict(learning_rate=_rate, reps_rel=1e-4), dict(reps_rel=1e-4),
                      {"lr": _rate}),
    "weight_decay": (dict(weight_decay=0.05, reps_rel=1e-4),
                     dict(weight_decay=0.05, reps_rel=1e-4), {}),
    "weight_decay_schedule": (
        dict(weight_decay=lambda c: jnp.where(c < 20, 0.1, 0.0), reps_rel=1e-4),
        dict(weight_decay=0.1, reps_rel=1e-4), {"weight_decay": _decay}),
    # init_eta is the first step's η itself, not multiplied by lr.
    "init_eta_half_rate": (dict(learning_rate=0.5, init_eta=1e-2),
                           dict(lr=0.5, init_eta=1e-2), {}),
}


def _before_step(settings):
  def set_group(optimizer, t):
    for key, schedule in settings.items():
      optimizer.param_groups[0][key] = schedule(t)
  return set_group


def _official_run(cls, kwargs, settings, grad_fn=PROBLEM.grad, steps=STEPS):
  return torch_runners.run_torch(lambda p: cls(p.values(), **kwargs), PROBLEM.params0,
                                 grad_fn, steps, before_step=_before_step(settings))


@pytest.mark.parametrize("layer_wise", [False, True], ids=["DoG", "LDoG"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_official_code(name, layer_wise):
  ours_kwargs, kwargs, settings = CASES[name]
  ours = runners.run_gradtx(dog(**ours_kwargs, layer_wise=layer_wise), PROBLEM.params0,
                            PROBLEM.grad, STEPS)
  theirs = _official_run(official.LDoG if layer_wise else official.DoG, kwargs, settings)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  # r̄ grew 100-fold beyond r_ε ≈ 6e-6 (reps_rel 1e-6): the step size was learned.
  moved = np.sqrt(sum(np.sum((ours[-1][k] - PROBLEM.params0[k]) ** 2) for k in ours[-1]))
  print(f"moved {moved:.2e}")
  assert moved > 6e-4


def test_layer_wise_differs_from_the_global_rule():
  global_ = runners.run_gradtx(dog(), PROBLEM.params0, PROBLEM.grad, STEPS)
  layer_wise = runners.run_gradtx(dog(layer_wise=True), PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(layer_wise, global_)["params"] > 1e-4


def _zero_then_problem(params, t):
  grads = PROBLEM.grad(params, t)
  return jax.tree.map(np.zeros_like, grads) if t < 3 else grads


@pytest.mark.parametrize("layer_wise", [False, True], ids=["DoG", "LDoG"])
def test_zero_gradients_at_the_start_as_the_official_code(layer_wise):
  """G = ε > 0: the zero steps move nothing and r̄ stays r_ε; the first
  non-zero gradient then steps r_ε/√(ε + ‖g‖²), as there."""
  ours = runners.run_gradtx(dog(layer_wise=layer_wise), PROBLEM.params0,
                            _zero_then_problem, STEPS)
  theirs = _official_run(official.LDoG if layer_wise else official.DoG, {}, {},
                         _zero_then_problem)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  np.testing.assert_array_equal(ours[3]["w"], PROBLEM.params0["w"])


def test_init_eta_after_a_zero_first_gradient_never_moves():
  """With init_eta, r_ε = 0: after a zero first step r̄ stays 0 and so does
  every η (the official code too); with eps=0 and zero gradients G = 0, where
  the official code raises, the steps are 0."""
  ours = runners.run_gradtx(dog(init_eta=1e-2), PROBLEM.params0, _zero_then_problem, 10)
  theirs = _official_run(official.DoG, dict(init_eta=1e-2), {}, _zero_then_problem, 10)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a["w"], PROBLEM.params0["w"])
    np.testing.assert_array_equal(b["w"], PROBLEM.params0["w"])
  for layer_wise in (False, True):
    ours = runners.run_gradtx(dog(eps=0.0, layer_wise=layer_wise), PROBLEM.params0,
                              _zero_then_problem, 10)
    assert np.isfinite(ours[-1]["w"]).all() and np.abs(ours[-1]["w"] - ours[3]["w"]).max() > 0
  with pytest.raises(AssertionError):
    _official_run(official.DoG, dict(eps=0.0), {}, _zero_then_problem, 2)


@pytest.mark.parametrize("weight_decay", [None, 0.05])
def test_optax_dog_heuristic_init_is_the_rule(weight_decay):
  ours = runners.run_gradtx(dog(0.7, reps_rel=1e-4, weight_decay=weight_decay or 0.0),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(
      optax.contrib.dog(0.7, init_step=("heuristic", 1e-4), weight_decay=weight_decay),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)


def test_optax_dog_learning_rate_init_scales_init_eta_by_the_rate():
  """optax's ("learning_rate", η₀) is init_eta at a rate of 1; at another
  rate its first step is rate·η₀, the official (and this) η₀."""
  run = lambda tx: runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(
      run(dog(init_eta=1e-2)), run(optax.contrib.dog(init_step=("learning_rate", 1e-2))),
      TOLERANCE)
  ours = run(dog(0.5, init_eta=1e-2))
  theirs = run(optax.contrib.dog(0.5, init_step=("learning_rate", 1e-2)))
  first = lambda trajectory: trajectory[1]["w"] - trajectory[0]["w"]
  np.testing.assert_allclose(first(theirs), 0.5 * first(ours), rtol=1e-9)
  # r̄ is the first step's length from then on: the runs stay apart.
  assert runners.trajectory_errors(theirs, ours)["params"] > 1e-3


def _dowg_algorithm_1(params0, grad_fn, steps, r_eps, rate=1.0, weight_decay=0.0):
  """The DoWG paper's Algorithm 1 (unconstrained), from its equations:
  r̄_t = max(‖x_t − x_0‖, r̄_{t−1}), v_t = v_{t−1} + r̄_t²‖∇f(x_t)‖²,
  η_t = r̄_t²/√v_t, x_{t+1} = x_t − η_t ∇f(x_t); the norms over all leaves.
  ``rate`` multiplies η and ``weight_decay`` adds λx to the gradient (optax's)."""
  x = problems.copy_params(params0)
  r_bar, v = r_eps, 0.0
  trajectory = [problems.copy_params(x)]
  for t in range(steps):
    g = {k: gk + weight_decay * x[k] for k, gk in grad_fn(x, t).items()}
    distance = np.sqrt(sum(np.sum((x[k] - params0[k]) ** 2) for k in x))
    r_bar = max(distance, r_bar)
    v = v + r_bar ** 2 * sum(np.sum(gk ** 2) for gk in g.values())
    eta = r_bar ** 2 / np.sqrt(v)
    x = {k: x[k] - problems.rate_at(rate, t) * eta * g[k] for k in x}
    trajectory.append(problems.copy_params(x))
  return trajectory


@pytest.mark.parametrize("r_eps, rate, weight_decay", [
    (1e-2, 1.0, 0.0), (1e-3, _rate, 0.05)])
def test_dowg_is_algorithm_1_at_eps_zero(r_eps, rate, weight_decay):
  ours = runners.run_gradtx(
      dowg(runners.at_int64_counts(_rate) if callable(rate) else rate,
           init_estim_sq_dist=r_eps ** 2, eps=0.0, weight_decay=weight_decay),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = _dowg_algorithm_1(PROBLEM.params0, PROBLEM.grad, STEPS, r_eps, rate, weight_decay)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  assert np.abs(ours[-1]["w"] - PROBLEM.params0["w"]).max() > 1e-1


def test_dowg_default_eps_departs_from_algorithm_1_early_only():
  """ε = 1e-4 added to √v (and r̄² = ε): the paper's rule with r_ε = 1e-2
  plus a guard that matters while √v is small."""
  ours = runners.run_gradtx(dowg(), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = _dowg_algorithm_1(PROBLEM.params0, PROBLEM.grad, STEPS, 1e-2)
  errors = runners.trajectory_errors(ours, theirs)
  assert 1e-4 < errors["updates"] < 0.5, errors


@pytest.mark.parametrize("kwargs", [
    {}, dict(learning_rate=0.5, init_estim_sq_dist=1e-3, eps=1e-6, weight_decay=0.05)])
def test_dowg_matches_optax(kwargs):
  kwargs = dict(kwargs)
  rate = kwargs.pop("learning_rate", 1.0)
  weight_decay = kwargs.pop("weight_decay", None)
  ours = runners.run_gradtx(dowg(rate, weight_decay=weight_decay or 0.0, **kwargs),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.contrib.dowg(rate, weight_decay=weight_decay, **kwargs),
                              PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)


@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_dowg_zero_gradients_at_the_start_move_nothing(eps):
  ours = runners.run_gradtx(dowg(init_estim_sq_dist=1e-4, eps=eps), PROBLEM.params0,
                            _zero_then_problem, 10)
  np.testing.assert_array_equal(ours[3]["w"], PROBLEM.params0["w"])
  assert np.isfinite(ours[-1]["w"]).all() and np.abs(ours[-1]["w"] - ours[3]["w"]).max() > 0


@pytest.mark.parametrize("make", [dog, lambda **kw: dog(layer_wise=True, **kw), dowg],
                         ids=["dog", "ldog", "dowg"])
def test_the_decay_mask_leaves_the_bias_undecayed(make):
  params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  masked = make(weight_decay=0.5, mask={"w": True, "b": False})
  plain = make()
  got, state = masked.update(grads, masked.init(params), params)
  base, _ = plain.update(grads, plain.init(params), params)
  # The decayed w enters G, so only the direction of b is unchanged.
  np.testing.assert_allclose(got["b"] / got["b"][0], base["b"] / base["b"][0])
  np.testing.assert_allclose(got["w"] / got["w"][0, 0], 1.0)
  assert jax.tree.structure(state) == jax.tree.structure(masked.init(params))


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=-1.0), r"learning_rate must be in \[0, inf\)"),
    (dict(reps_rel=0.0), r"reps_rel must be in \(0, inf\)"),
    (dict(eps=-1e-8), r"eps must be in \[0, inf\)"),
    (dict(init_eta=0.0), r"init_eta must be in \(0, inf\)"),
    (dict(weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
    (dict(mask="w"), "mask must be None"),
    (dict(layer_wise=1), "layer_wise must be True or False"),
])
def test_dog_refuses_bad_arguments_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dog(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate="1"), "learning_rate must be a non-negative number"),
    (dict(init_estim_sq_dist=0.0), r"init_estim_sq_dist must be in \(0, inf\)"),
    (dict(eps=0.0), r"eps must be in \(0, inf\), got 0.0 \(.*needs init_estim_sq_dist"),
    (dict(eps=float("nan"), init_estim_sq_dist=1.0), r"eps must be in \[0, inf\)"),
    (dict(weight_decay=-1.0), r"weight_decay must be in \[0, inf\)"),
])
def test_dowg_refuses_bad_arguments_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dowg(**kwargs)


@pytest.mark.parametrize("name, make", [("dog", dog), ("dowg", dowg)])
def test_params_are_required_and_complex_leaves_refused(name, make):
  tx = make()
  with pytest.raises(ValueError, match=f"{name} needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match=f"{name} does not support complex"):
    tx.init({"z": jnp.ones(2, jnp.complex64)})


_MAKERS = {
    "dog": lambda: dog(init_eta=1e-3, weight_decay=lambda c: 0.01 / (1 + c)),
    "ldog": lambda: dog(lambda c: 1.0 / (1 + c), layer_wise=True, eps=0.0),
    "dowg": lambda: dowg(weight_decay=0.01, mask={"w": True, "b": False}),
}


@pytest.mark.parametrize("name", list(_MAKERS))
def test_jit_equals_eager_without_retracing(name):
  tx = _MAKERS[name]()
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


@pytest.mark.parametrize("name", ["dog", "ldog", "dowg"])
def test_bfloat16_params_stay_bfloat16_with_float32_scalars(name):
  # Steps below half a bfloat16 ulp round away: r_ε large enough to move at once.
  make = {"dog": lambda: dog(reps_rel=0.05), "ldog": lambda: dog(reps_rel=0.05, layer_wise=True),
          "dowg": lambda: dowg(init_estim_sq_dist=0.01)}[name]
  params0 = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.full((3,), 0.5)}
  runs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    tx = make()
    params = jax.tree.map(lambda p, d=dtype: p.astype(d), params0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(40):  # the gradient of |p|²/2 + Σp
      updates, state = step(jax.tree.map(lambda p: p + 1, params), state, params)
      params = optax.apply_updates(params, updates)
    assert all(x.dtype == dtype for x in jax.tree.leaves(params))
    scalars = [x for f in state[1:3] for x in jax.tree.leaves(f)]
    assert all(x.dtype == jnp.float32 for x in scalars), name
    runs[dtype] = params
  for k in params0:  # at the minimum p = -1
    np.testing.assert_allclose(np.asarray(runs[jnp.bfloat16][k], np.float32),
                               runs[jnp.float32][k], atol=0.05)
    np.testing.assert_allclose(runs[jnp.float32][k], -1.0, atol=0.05)


def test_inject_hyperparams_gives_the_same_steps():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}

  def run(tx):
    p, state = params, tx.init(params)
    for _ in range(30):
      updates, state = tx.update(p, state, p)
      p = optax.apply_updates(p, updates)
    return np.asarray(p["w"])

  for make in (dog, dowg):
    np.testing.assert_allclose(
        run(optax.inject_hyperparams(make)(learning_rate=0.5, eps=1e-6)),
        run(make(0.5, eps=1e-6)), rtol=1e-6)


@pytest.mark.parametrize("make", [dog, lambda: dog(layer_wise=True), dowg],
                         ids=["dog", "ldog", "dowg"])
def test_tree_map_params_maps_the_initial_params_only(make):
  """The per-leaf scalars of LDoG are not parameter-shaped: map_params skips them."""
  tx = make()
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  state = tx.init(params)
  mapped = optax.tree_map_params(tx, lambda p: p.astype(jnp.bfloat16), state,
                                 transform_non_params=lambda x: x)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(mapped.params0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(mapped[1:3]))


@pytest.mark.parametrize("make, spreads", [
    (dog, True), (lambda: dog(eps=0.0), True), (lambda: dog(layer_wise=True, eps=0.0), False),
    (dowg, True), (lambda: dowg(init_estim_sq_dist=1.0, eps=0.0), True)],
    ids=["dog", "dog_eps0", "ldog_eps0", "dowg", "dowg_eps0"])
def test_a_nan_gradient_makes_the_steps_nan_not_zero(make, spreads):
  """G (v) is a sum over the tree: a NaN gradient makes η, and every leaf's
  step, NaN (LDoG: its leaf's); the eps = 0 guard does not turn it into 0."""
  tx = make()
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  grads = {"w": jnp.ones((2, 2)).at[0, 0].set(jnp.nan), "b": jnp.ones(2)}
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert bool(jnp.isnan(updates["w"]).all())
  assert bool(jnp.isnan(updates["b"]).all()) == spreads
