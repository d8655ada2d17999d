"""go.schedule_free and its recipes against the official ``schedulefree`` package (1.4.1).

The torch side runs the official classes in float64 on the same gradients
(taken at the training point y) and, after every step, reads the evaluation
point x through the class's own ``eval()`` (``train()`` switches back): both
the ``*Reference`` classes, which store x, y and z, and the fast ones,
which store z and recover x from y. 50 steps; both y and x must agree to
1e-10 relative (measured: ~1e-14 in the updates). optax.contrib's
schedule-free functions are a further check (same steps without warm-up;
its warm-up is off by one step, shown and reproduced). The generic battery
(tests/support/cases.py) covers jit, inject_hyperparams, bf16 parameters,
empty leaves and the rest.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import schedulefree
import torch

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners
from tests.support import helpers

STEPS = 50
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=3, steps=STEPS)


def _run_official(make, grad=PROBLEM.grad, steps=STEPS, rate=None):
  """(y trajectory, x trajectory) of an official optimizer, float64.

  ``rate``: a schedule set as the group's ``lr`` before each step.
  """
  tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in PROBLEM.params0.items()}
  optimizer = make(list(tensors.values()))
  if isinstance(optimizer, schedulefree.ScheduleFreeWrapperReference):
    # The wrapper keeps z, x, y in the base's per-parameter state, which
    # torch.optim.Adam then takes for its own, already made: make Adam's
    # (what its first step would) beforehand.
    for p in tensors.values():
      optimizer.base.state[p].update(step=torch.tensor(0.0, dtype=torch.float64),
                                     exp_avg=torch.zeros_like(p),
                                     exp_avg_sq=torch.zeros_like(p))
  optimizer.train()
  read = lambda: {k: p.detach().numpy().copy() for k, p in tensors.items()}
  ys, xs = [problems.copy_params(PROBLEM.params0)], [problems.copy_params(PROBLEM.params0)]
  for t in range(steps):
    grads = grad(ys[-1], t)
    for k, p in tensors.items():
      p.grad = torch.tensor(grads[k])
    if rate is not None:
      for group in optimizer.param_groups:
        group["lr"] = rate(t)
    optimizer.step()
    ys.append(read())
    optimizer.eval()
    xs.append(read())
    optimizer.train()
  return ys, xs


def _run_ours(tx, eval_params=go.schedule_free_eval_params, steps=STEPS):
  """(y trajectory, x trajectory) of a gradtx (or optax) run, float64, jitted."""
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v) for k, v in PROBLEM.params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return params, state, eval_params(state, params)

    ys, xs = [problems.copy_params(PROBLEM.params0)], [problems.copy_params(PROBLEM.params0)]
    for t in range(steps):
      params, state, x = step(params, state, PROBLEM.grad(ys[-1], t))
      ys.append(problems.copy_params(params))
      xs.append(problems.copy_params(x))
  return ys, xs


def _assert_close(ours, theirs, tolerance=TOLERANCE):
  """The training points y step by step, the averages x relative to their size
  (where the rate is 0, x does not move, up to the rounding of x = (y − (1−β)z)/β)."""
  runners.assert_trajectories_close(ours[0], theirs[0], tolerance)
  errors = runners.trajectory_errors(ours[1], theirs[1])
  print(f"x: max relative error {errors['params']:.2e}")
  assert errors["params"] <= tolerance, errors


# name: (gradtx keywords, official keywords); both at their learning rate below.
SGD_SETTINGS = {
    "defaults": ({}, {}),
    "warmup_decay_r_power": (
        dict(b1=0.8, warmup_steps=10, weight_decay=0.1, r=1.0, weight_lr_power=1.0),
        dict(momentum=0.8, warmup_steps=10, weight_decay=0.1, r=1.0, weight_lr_power=1.0)),
}
ADAMW_SETTINGS = {
    "defaults": ({}, {}),
    "warmup_decay_r_power": (
        dict(b1=0.95, b2=0.99, eps=1e-6, warmup_steps=10, weight_decay=0.1, r=1.0,
             weight_lr_power=1.0),
        dict(betas=(0.95, 0.99), eps=1e-6, warmup_steps=10, weight_decay=0.1, r=1.0,
             weight_lr_power=1.0)),
}


@pytest.mark.parametrize("official", [schedulefree.SGDScheduleFreeReference,
                                      schedulefree.SGDScheduleFree], ids=lambda c: c.__name__)
@pytest.mark.parametrize("setting", list(SGD_SETTINGS))
def test_sgd_matches_the_official_classes(setting, official):
  ours, theirs = SGD_SETTINGS[setting]
  mine = _run_ours(go.schedule_free_sgd(0.5, **ours))
  ref = _run_official(lambda ps: official(ps, lr=0.5, **theirs))
  _assert_close(mine, ref)


@pytest.mark.parametrize("official", [schedulefree.AdamWScheduleFreeReference,
                                      schedulefree.AdamWScheduleFree], ids=lambda c: c.__name__)
@pytest.mark.parametrize("setting", list(ADAMW_SETTINGS))
def test_adamw_matches_the_official_classes(setting, official):
  ours, theirs = ADAMW_SETTINGS[setting]
  mine = _run_ours(go.schedule_free_adamw(0.05, **ours))
  ref = _run_official(lambda ps: official(ps, lr=0.05, **theirs))
  _assert_close(mine, ref)


def test_the_references_tell_the_settings_and_the_points_apart():
  """The comparisons above could fail: the settings, y and x all differ, and
  so does ``AdamWScheduleFreePaper`` (γ and so the weights scaled by
  √(1−β₂ᵗ), ε added to the uncorrected √v), which gradtx does not follow."""
  for settings, official, lr in (
      (SGD_SETTINGS, schedulefree.SGDScheduleFreeReference, 0.5),
      (ADAMW_SETTINGS, schedulefree.AdamWScheduleFreeReference, 0.05)):
    (y0, x0), (y1, _) = (_run_official(lambda ps, c=official, lr=lr, kw=kw: c(ps, lr=lr, **kw))
                         for _, kw in settings.values())
    assert runners.trajectory_errors(y0, y1)["updates"] > 1e-2
    assert runners.trajectory_errors(x0, y0)["params"] > 1e-3
  paper, _ = _run_official(lambda ps: schedulefree.AdamWScheduleFreePaper(ps, lr=0.05))
  mine, _ = _run_ours(go.schedule_free_adamw(0.05))
  assert runners.trajectory_errors(mine, paper)["params"] > 1e-3


def test_a_learning_rate_schedule_is_read_at_the_step_count():
  """A schedule that starts at 0 (set as the group's lr before each step in
  the official class): the first step has weight 0 and leaves x at y₁ (the
  official ZeroDivisionError branch), and the weights follow the largest rate."""
  rate = lambda t: 0.5 * min(1.0, t / 20)
  mine = _run_ours(go.schedule_free_sgd(lambda t: 0.5 * jnp.minimum(1.0, t / 20)))
  ref = _run_official(lambda ps: schedulefree.SGDScheduleFreeReference(ps, lr=0.0), rate=rate)
  _assert_close(mine, ref)
  np.testing.assert_array_equal(mine[0][1]["w"], PROBLEM.params0["w"])


def test_the_weights_follow_the_largest_rate_of_a_decaying_schedule():
  """Warm-up then decay (set as the group's lr before each step in the
  official class): the averaging weights use max η so far, not η_t."""
  rate = lambda t: 0.5 * min(1.0, (t + 1) / 5) * 0.9 ** max(0, t - 5)
  mine = _run_ours(go.schedule_free_sgd(
      lambda t: 0.5 * jnp.minimum(1.0, (t + 1) / 5) * 0.9 ** jnp.maximum(0, t - 5)))
  ref = _run_official(lambda ps: schedulefree.SGDScheduleFreeReference(ps, lr=0.0), rate=rate)
  _assert_close(mine, ref)


def test_the_wrapper_matches_the_official_wrapper():
  """``go.schedule_free`` around AdamW without momentum, as
  ``ScheduleFreeWrapperReference`` around ``torch.optim.Adam(betas=(0, β₂))``
  with its decay at y; non-default β, r and weight_lr_power."""
  mine = _run_ours(go.schedule_free(
      go.adamw(0.05, b1=0.0, b2=0.99, weight_decay=0.1), learning_rate=0.05, b1=0.8, r=0.5,
      weight_lr_power=3.0))
  make = lambda ps, b1: schedulefree.ScheduleFreeWrapperReference(
      torch.optim.Adam(ps, lr=0.05, betas=(0.0, 0.99)), momentum=b1, weight_decay_at_y=0.1,
      r=0.5, weight_lr_power=3.0)
  _assert_close(mine, _run_official(lambda ps: make(ps, 0.8)))
  other, _ = _run_official(lambda ps: make(ps, 0.9))
  assert runners.trajectory_errors(mine[0], other)["updates"] > 1e-2


@pytest.mark.parametrize("ours,theirs", [
    (lambda: go.schedule_free_sgd(0.5, weight_decay=0.1),
     lambda: optax.contrib.schedule_free_sgd(0.5, weight_decay=0.1)),
    (lambda: go.schedule_free_adamw(0.05, b1=0.95, weight_decay=0.1),
     lambda: optax.contrib.schedule_free_adamw(0.05, b1=0.95, weight_decay=0.1)),
], ids=["sgd", "adamw"])
def test_optax_takes_the_same_steps_at_a_constant_rate(ours, theirs):
  _assert_close(_run_ours(ours()),
                _run_ours(theirs(), optax.contrib.schedule_free_eval_params))


def test_optax_warmup_lags_one_step_and_is_reachable():
  """optax reads its rate at count + 1 for the weights and at count inside
  the base: its first z step is 0. That is ``learning_rate=t ↦ s(t + 1)``
  around ``go.sgd(s)`` here (1e-10 with the schedule in float64 on both
  sides; optax's own schedule_free_sgd reads its warm-up at an int32 count,
  in float32: 1e-7)."""
  warmup = optax.warmup_constant_schedule(0.0, 0.5, 10)
  shifted = go.schedule_free(go.sgd(warmup), learning_rate=lambda t: warmup(t + 1))
  theirs = optax.contrib.schedule_free_sgd(0.5, warmup_steps=10)
  optax_eval = optax.contrib.schedule_free_eval_params
  _assert_close(_run_ours(shifted), _run_ours(theirs, optax_eval), 1e-6)
  in_float64 = runners.at_int64_counts(warmup)
  _assert_close(_run_ours(shifted), _run_ours(
      optax.contrib.schedule_free(optax.sgd(in_float64), learning_rate=in_float64), optax_eval))
  official, _ = _run_ours(go.schedule_free_sgd(0.5, warmup_steps=10))
  assert runners.trajectory_errors(official, _run_ours(theirs, optax_eval)[0])["params"] > 1e-2


def test_b1_one_takes_gradients_at_the_average():
  """β = 1: y = x at every step (primal averaging); the first step is the base's."""
  tx = go.schedule_free_sgd(0.5, b1=1.0)
  ys, xs = _run_ours(tx, steps=5)
  for y, x in zip(ys, xs):
    np.testing.assert_allclose(x["w"], y["w"], rtol=1e-14)
  first = PROBLEM.params0["w"] - 0.5 * PROBLEM.grad(PROBLEM.params0, 0)["w"]
  np.testing.assert_allclose(ys[1]["w"], first, rtol=1e-14)


def test_eval_params_inside_multisteps_and_under_jit():
  """optax.MultiSteps averages k micro-gradients: the state it holds gives the
  same x as the plain optimizer on the averaged gradients, eagerly and jitted."""
  params = helpers.PARAMS
  make = lambda: go.schedule_free_adamw(0.05, warmup_steps=2, weight_decay=0.1)
  multi = optax.MultiSteps(make(), every_k_schedule=2)
  grads = helpers.GRADS
  p, state = params, multi.init(params)
  for g in grads:
    updates, state = jax.jit(multi.update)(g, state, p)
    p = optax.apply_updates(p, updates)
  averaged = [jax.tree.map(lambda a, b: (a + b) / 2, *grads[i:i + 2]) for i in (0, 2, 4)]
  q, plain_state, _ = helpers.run_steps(make(), params, averaged)
  expected = go.schedule_free_eval_params(plain_state, q)
  chex.assert_trees_all_close(p, q, rtol=1e-6, atol=1e-7)
  for x in (go.schedule_free_eval_params(state, p),
            jax.jit(go.schedule_free_eval_params)(state, p)):
    chex.assert_trees_all_close(x, expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(expected["w"], q["w"], atol=1e-4)


def test_eval_params_of_a_masked_wrapper_keep_the_left_out_leaves():
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(2)}
  tx = optax.multi_transform({"sf": go.schedule_free_sgd(0.1), "sgd": go.sgd(0.1)},
                             {"w": "sf", "b": "sgd"})
  params, state, _ = helpers.run_steps(tx, params, [jax.tree.map(jnp.cos, params)] * 3)
  x = go.schedule_free_eval_params(state, params)
  np.testing.assert_array_equal(x["b"], params["b"])
  assert not np.allclose(x["w"], params["w"])
  with pytest.raises(ValueError, match="found 0"):
    go.schedule_free_eval_params(go.sgd(0.1).init(params), params)


def test_eval_params_of_an_nnx_optimizer():
  """nnx.Optimizer keeps z in OptVariables and the model its Params: the eval
  params read through both, equal the plain-pytree run's, and nnx.update
  puts them into an evaluation copy (the docstring of schedule_free_adamw
  shows the loop)."""
  from flax import nnx

  model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
  tx = go.schedule_free_adamw(0.05, warmup_steps=2)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
  loss = lambda m: jnp.mean((m(x) - 1.0) ** 2)
  plain = jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  state = tx.init(plain)
  for _ in range(4):
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)
    updates, state = tx.update(nnx.to_pure_dict(grads), state, plain)
    plain = optax.apply_updates(plain, updates)
  averaged = go.schedule_free_eval_params(optimizer.opt_state, nnx.state(model, nnx.Param))
  expected = go.schedule_free_eval_params(state, plain)
  evaluation = nnx.clone(model)
  nnx.update(evaluation, averaged)
  np.testing.assert_allclose(evaluation.kernel[...], expected["kernel"], rtol=1e-6)
  assert not np.allclose(evaluation.kernel[...], model.kernel[...], atol=1e-4)


def test_bf16_params_keep_bf16_and_z_keeps_sub_ulp_steps():
  """Each z step is bf16(1e-3), under half a bf16 ulp at 1.0 (2⁻⁸): a bf16 z
  would stay at 1.0 for ever; the float32 z moves by the exact sum."""
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  grads = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = go.schedule_free_sgd(1e-3)
  params, state, updates = helpers.run_steps(tx, params, [grads] * 20)
  assert params["w"].dtype == updates[-1]["w"].dtype == jnp.bfloat16
  assert state.z["w"].dtype == state.weight_sum.dtype == jnp.float32
  step = float(jnp.asarray(1e-3, jnp.bfloat16))  # the base's step, in the gradient's dtype
  np.testing.assert_allclose(state.z["w"], 1 - 20 * step, rtol=1e-6)
  x = go.schedule_free_eval_params(state, params)
  assert x["w"].dtype == jnp.bfloat16


def test_state_dtype_float64_z_of_float32_params_is_optaxs():
  """``state_dtype`` is optax's: z in that dtype (here float64 under x64 for
  float32 parameters), the same steps as optax.contrib.schedule_free_adamw's
  (its arithmetic in the promoted dtype too) over 50 steps."""
  with jax.enable_x64(True):
    params = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32)}
    grads = [{"w": jnp.sin(jnp.arange(6.0, dtype=jnp.float32) + t)} for t in range(50)]
    ours, state, _ = helpers.run_steps(
        go.schedule_free_adamw(0.05, state_dtype=jnp.float64), params, grads)
    theirs, _, _ = helpers.run_steps(
        optax.contrib.schedule_free_adamw(0.05, state_dtype=jnp.float64), params, grads)
    assert state.z["w"].dtype == jnp.float64 and ours["w"].dtype == jnp.float32
    np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-6, atol=1e-7)


def test_state_dtype_bf16_rounds_sub_ulp_steps_away_and_stochastic_rounding_keeps_them():
  """z steps of 1e-5 from 1.0, under half a bf16 ulp (2⁻⁹ below 1): a
  nearest-rounded bf16 z never moves; a stochastically rounded one moves by the
  exact sum on average over 200,000 elements (100 steps: 1e-3, within 3%, 7 standard
  deviations of the mean); the float32 default moves each element by it."""
  params = {"w": jnp.ones(200_000, jnp.float32)}
  grads = [{"w": jnp.full(200_000, 1e-3, jnp.float32)}] * 100
  z = {}
  for name, dtype in (("f32", None), ("bf16", jnp.bfloat16),
                      ("sr", gt.StochasticBfloat16())):
    _, state, _ = helpers.run_steps(go.schedule_free_sgd(1e-2, state_dtype=dtype), params,
                                    grads)
    z[name] = np.asarray(state.z["w"], np.float64)
    assert state.z["w"].dtype == (jnp.float32 if dtype is None else jnp.bfloat16)
  np.testing.assert_allclose(z["f32"], 1 - 1e-3, rtol=1e-5)  # 100 float32 roundings
  np.testing.assert_array_equal(z["bf16"], 1.0)
  np.testing.assert_allclose(1 - z["sr"].mean(), 1e-3, rtol=0.03)


@pytest.mark.parametrize("state_dtype", [jnp.bfloat16, jnp.float16, gt.StochasticBfloat16()],
                         ids=["bf16", "f16", "sr"])
def test_a_narrow_z_keeps_x_the_average_of_the_stored_iterates(state_dtype):
  """With z rounded as stored, x = (y − (1−β)z)/β (the eval point) stays the
  weighted average x_{t+1} = (1−c)x_t + c z_{t+1} of the *stored* z, kept here
  in float64 from the stored states (a step written with the unrounded u
  drifted 2.8e-3 from it in 200 bf16 steps: a review's measurement)."""
  params = {"w": jnp.linspace(1.0, 3.0, 64, dtype=jnp.float32)}
  tx = go.schedule_free_sgd(1e-3, b1=0.9, state_dtype=state_dtype)
  state, y = tx.init(params), params
  step = jax.jit(tx.update)
  x_avg, weight_sum = None, 0.0
  for t in range(200):
    grads = {"w": jnp.sin(7 * y["w"] + t)}
    updates, state = step(grads, state, y)
    y = optax.apply_updates(y, updates)
    weight_sum += 1e-6  # w_t = lr² at a constant rate
    c = 1e-6 / weight_sum
    z = np.asarray(state.z["w"], np.float64)
    x_avg = z if x_avg is None else (1 - c) * x_avg + c * z
  x = np.asarray(go.schedule_free_eval_params(state, y)["w"], np.float64)
  np.testing.assert_allclose(x, x_avg, atol=2e-5)


def test_a_bf16_z_that_cannot_move_leaves_y_and_x_in_place():
  """Steps of 1e-3 at 1.0, under half a bf16 ulp: z stays 1.0, and so do y
  and x (the step reads what z moved as stored: nothing)."""
  params = {"w": jnp.ones(4, jnp.float32)}
  y, state, _ = helpers.run_steps(go.schedule_free_sgd(1e-3, state_dtype=jnp.bfloat16),
                                  params, [{"w": jnp.ones(4)}] * 100)
  np.testing.assert_array_equal(state.z["w"], 1.0)
  np.testing.assert_array_equal(y["w"], 1.0)
  np.testing.assert_array_equal(go.schedule_free_eval_params(state, y)["w"], 1.0)


@pytest.mark.parametrize("state_dtype, message", [
    ("int8", "state_dtype must be None, a floating or complex dtype or"),
    (jnp.int32, "state_dtype must be None, a floating or complex dtype"),
])
def test_state_dtype_refuses_integer_storage(state_dtype, message):
  with pytest.raises(ValueError, match=message):
    go.schedule_free_sgd(0.1, state_dtype=state_dtype)


def test_the_weights_are_summed_in_float32_for_bf16_params():
  """600 steps at a constant rate: the float32 sum is 600 w; optax's, in the
  parameters' bf16, stops growing (at 4) and c = w/Σw stays too large."""
  params, zeros = jnp.ones(3, jnp.bfloat16), jnp.zeros(3, jnp.bfloat16)
  sums = {}
  for name, tx in {"ours": go.schedule_free_sgd(0.1),
                   "optax": optax.contrib.schedule_free_sgd(0.1)}.items():
    state, step = tx.init(params), jax.jit(tx.update)
    for _ in range(600):
      _, state = step(zeros, state, params)
    sums[name] = float(state.weight_sum)
  np.testing.assert_allclose(sums["ours"], 600 * 0.1**2, rtol=1e-5)
  assert sums["optax"] < 0.7 * 600 * 0.1**2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("make", [
    lambda: go.schedule_free_adamw(0.05, warmup_steps=3, weight_decay=0.1, r=1.0),
    lambda: go.schedule_free(go.sgd(optax.linear_schedule(0.0, 0.1, 4)),
                             learning_rate=optax.linear_schedule(0.0, 0.1, 4)),
], ids=["adamw", "wrapper"])
def test_state_is_a_lax_scan_carry(make, dtype):
  """The state keeps its structure and dtypes: ``lax.scan`` carries it, and
  gives the Python loop's result."""
  tx = make()
  params = jax.tree.map(lambda p: p.astype(dtype), helpers.PARAMS)
  grads = [jax.tree.map(lambda g: g.astype(dtype), g) for g in helpers.GRADS]

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
  (p, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, stacked))((params, tx.init(params)))
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(params))
  q, _, _ = helpers.run_steps(tx, params, grads)
  chex.assert_trees_all_close(p, q, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6, atol=1e-6)


def test_a_traced_warmup_is_the_static_one():
  params, grads = helpers.PARAMS, helpers.GRADS[:4]
  injected = optax.inject_hyperparams(go.schedule_free_sgd)(learning_rate=0.5, warmup_steps=3)
  _, _, traced = helpers.run_steps(injected, params, grads)
  _, _, static = helpers.run_steps(go.schedule_free_sgd(0.5, warmup_steps=3), params, grads)
  _, _, none = helpers.run_steps(go.schedule_free_sgd(0.5), params, grads)
  chex.assert_trees_all_close(traced, static, rtol=1e-6, atol=1e-7)
  assert not np.allclose(static[0]["w"], none[0]["w"])


@pytest.mark.parametrize("factory", [go.schedule_free_sgd, go.schedule_free_adamw])
def test_cautious_decay_leaves_the_z_steps_where_they_disagree(factory):
  """z_{t+1} − z_t is the base's step: with cautious decay, the decay part of
  it is kept where the normalised step d has the sign of y (u·y ≥ 0 on d;
  AdamW's first d, g/(|g| + ε), has g's sign)."""
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)}
  grads = {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)}
  steps = {}
  for name, kw in {"none": dict(weight_decay=0.0), "all": dict(weight_decay=0.5),
                   "cautious": dict(weight_decay=0.5, cautious_weight_decay=True)}.items():
    tx = factory(0.1, **kw)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    steps[name] = state.z["w"] - params["w"]
  agrees = np.asarray(grads["w"] * params["w"]) >= 0
  expected = np.where(agrees, steps["all"], steps["none"])
  np.testing.assert_allclose(steps["cautious"], expected, rtol=1e-6, atol=1e-8)
  assert agrees.any() and not agrees.all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(b1=0.0), r"^b1 must be in \(0, 1\], got 0.0"),
    (dict(b1=1.5), r"^b1 must be in \(0, 1\]"),
    (dict(weight_lr_power=-1.0), r"^weight_lr_power must be in \[0, inf\)"),
    (dict(r=float("nan")), r"^r must be in \[0, inf\)"),
    (dict(learning_rate=-0.1), "^learning_rate must be in"),
])
def test_wrapper_arguments_are_checked_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    go.schedule_free(go.sgd(0.1), **{"learning_rate": 0.1, **kwargs})


def test_base_and_params_are_required():
  with pytest.raises(ValueError, match="^base must be an optax.GradientTransformation"):
    go.schedule_free(optax.sgd, learning_rate=0.1)
  with pytest.raises(ValueError, match="^warmup_steps must be an integer >= 0, got 2.5"):
    go.schedule_free_sgd(0.1, warmup_steps=2.5)
  tx = go.schedule_free_sgd(0.1)
  with pytest.raises(ValueError, match="schedule_free needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_a_non_finite_gradient_poisons_z_for_good_unless_skipped():
  """As optax's: z takes the NaN, and y and x with it; optax.apply_if_finite
  around the optimizer skips the step and leaves z as it was."""
  tx = go.schedule_free_adamw(0.1)
  nan = jnp.array([jnp.nan, 1.0])
  params, state, _ = helpers.run_steps(tx, jnp.ones(2), [jnp.ones(2), nan, jnp.ones(2)])
  assert np.isnan(params[0]) and np.isnan(state.z[0]) and np.isfinite(params[1])
  assert np.isnan(go.schedule_free_eval_params(state, params)[0])
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=5)
  params, state, _ = helpers.run_steps(guarded, jnp.ones(2), [nan])
  np.testing.assert_array_equal(params, jnp.ones(2))
  np.testing.assert_array_equal(state.inner_state.z, jnp.ones(2))
