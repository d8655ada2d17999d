"""mechanize against the official Mechanic (mechanic-pytorch 0.0.1) and optax.contrib.mechanize.

The official ``mechanize(torch.optim.SGD / Adam / AdamW)`` runs in float64
(torch's default dtype set to float64 for the run: the official code keeps
its scalars in the default dtype) on the NumPy gradients of the gradtx run,
50 steps of a logistic problem with a matrix and a vector; the trajectories
agree to round-off (1e-13 measured).
"""

import jax
import jax.numpy as jnp
import mechanic_pytorch
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from gradtx import optimizers as go
from gradtx.optimizers.mechanic import mechanize
from tests.oracles import problems, runners, torch_runners
from tests.support import helpers

STEPS = 50
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=3, steps=STEPS)
OFFICIAL_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)


def _official(base, base_kwargs, grad_fn=PROBLEM.grad, steps=STEPS, **mechanic_kwargs):
  """The official mechanized ``base`` (a torch.optim class) in float64."""
  make = lambda ts: mechanic_pytorch.mechanize(base, **mechanic_kwargs)(
      list(ts.values()), **base_kwargs)
  default = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  try:
    return torch_runners.run_torch(make, PROBLEM.params0, grad_fn, steps)
  finally:
    torch.set_default_dtype(default)


# name: (gradtx wrapper, official base class, its kwargs, official mechanic kwargs)
CASES = {
    "sgd": (lambda: mechanize(go.sgd(0.5)), torch.optim.SGD, dict(lr=0.5), {}),
    "adam": (lambda: mechanize(go.adam(0.01)), torch.optim.Adam, dict(lr=0.01), {}),
    "sgd_momentum_decay_init_3_betas": (
        lambda: mechanize(go.sgd(0.3, momentum=0.9), s_decay=0.1, s_init=1e-6, num_betas=3),
        torch.optim.SGD, dict(lr=0.3, momentum=0.9),
        dict(s_decay=0.1, s_init=1e-6, betas=OFFICIAL_BETAS[:3])),
    "adamw_no_decay_eps_8_betas": (
        lambda: mechanize(go.adamw(0.02, weight_decay=0.1), s_decay=0.0, eps=1e-6, num_betas=8),
        torch.optim.AdamW, dict(lr=0.02, weight_decay=0.1),
        dict(s_decay=0.0, eps=1e-6, betas=OFFICIAL_BETAS + (0.9999999, 0.99999999))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_official_mechanic(name):
  make, base, base_kwargs, kwargs = CASES[name]
  ours = runners.run_gradtx(make(), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = _official(base, base_kwargs, **kwargs)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  # The scale was learned (the first steps are ~1e-6 of the base's) and the
  # settings matter: the official defaults give another trajectory.
  assert np.abs(ours[-1]["w"] - PROBLEM.params0["w"]).max() > 1e-2
  if kwargs:
    defaults = _official(base, base_kwargs)
    assert runners.trajectory_errors(ours, defaults)["params"] > 1e-3


def _zero_then_problem(params, t):
  grads = PROBLEM.grad(params, t)
  return jax.tree.map(np.zeros_like, grads) if t < 3 else grads


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_zero_gradients_at_the_start_as_the_official_code(name):
  """h = 0 and ‖g‖ = 0 for three steps: no NaN, nothing moves, m decays
  (so S starts lower and takes longer to grow)."""
  make, base, base_kwargs, kwargs = CASES[name]
  ours = runners.run_gradtx(make(), PROBLEM.params0, _zero_then_problem, STEPS)
  theirs = _official(base, base_kwargs, _zero_then_problem, STEPS, **kwargs)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  np.testing.assert_array_equal(ours[3]["w"], PROBLEM.params0["w"])
  assert np.abs(ours[-1]["w"] - PROBLEM.params0["w"]).max() > 1e-2


def _loss(params):
  x = PROBLEM.xs.reshape(-1, PROBLEM.xs.shape[-1])
  y = PROBLEM.ys.reshape(-1, PROBLEM.ys.shape[-1])
  z = x @ params["w"] + params["b"]
  return float(np.mean(np.logaddexp(0, z) - y * z))


@pytest.mark.parametrize("base", [lambda: go.sgd(0.5), lambda: go.adam(0.01)],
                         ids=["sgd", "adam"])
def test_optax_contrib_mechanize_is_another_tuner(base):
  """optax's m₀ = 0 and its clipping of h to [−m, m] in r (its ε in m and
  decay at x_t are 1e-8 and 1e-6 effects): its S grows more slowly from the
  same start, 18-90% away from the official trajectory after 50 steps (its
  defaults or s_init = 1e-8), at a higher loss."""
  ours = runners.run_gradtx(mechanize(base()), PROBLEM.params0, PROBLEM.grad, STEPS)
  for s_init in (1e-6, 1e-8):
    theirs = runners.run_gradtx(optax.contrib.mechanize(base(), s_init=s_init),
                                PROBLEM.params0, PROBLEM.grad, STEPS)
    assert runners.trajectory_errors(theirs, ours)["params"] > 0.1
    assert _loss(ours[-1]) < _loss(theirs[-1]) < _loss(PROBLEM.params0)


def test_the_reference_is_the_first_updates_parameters():
  """Parameters loaded after init (pre-trained weights) are the reference."""
  tx = mechanize(go.adam(0.01))
  start = {k: jnp.asarray(v, jnp.float32) for k, v in PROBLEM.params0.items()}
  state = tx.init(jax.tree.map(jnp.zeros_like, start))
  fresh = tx.init(start)
  grads = jax.tree.map(jnp.asarray, PROBLEM.grad(PROBLEM.params0, 0))
  params_a, params_b = start, start
  for t in range(4):
    grads = {k: jnp.asarray(v, jnp.float32)
             for k, v in PROBLEM.grad(jax.tree.map(np.asarray, params_a), t).items()}
    u, state = tx.update(grads, state, params_a)
    v, fresh = tx.update(grads, fresh, params_b)
    params_a, params_b = optax.apply_updates(params_a, u), optax.apply_updates(params_b, v)
  for k in start:
    np.testing.assert_array_equal(params_a[k], params_b[k])
    np.testing.assert_array_equal(state.x_ref[k], start[k])


def test_one_trace_and_jit_equals_eager():
  tx = mechanize(go.adamw(0.05, weight_decay=0.01))
  params0 = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.tree.map(lambda p: p - 0.5, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jitted, state = params0, tx.init(params0)
  eager, state_e = params0, tx.init(params0)
  for _ in range(6):
    jitted, state = step(jitted, state)
    grads = jax.tree.map(lambda p: p - 0.5, eager)
    updates, state_e = tx.update(grads, state_e, eager)
    eager = optax.apply_updates(eager, updates)
  assert len(traces) == 1 and step._cache_size() == 1
  assert int(state.count) == 6 and state.delta is not None  # Δ kept
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _run(tx, dtype, steps=40):
  params = {k: jnp.asarray(v, dtype) for k, v in PROBLEM.params0.items()}
  state, step = tx.init(params), jax.jit(tx.update)
  for t in range(steps):
    grads = PROBLEM.grad({k: np.asarray(v, np.float64) for k, v in params.items()}, t)
    updates, state = step({k: jnp.asarray(v, dtype) for k, v in grads.items()}, state, params)
    params = optax.apply_updates(params, updates)
  return {k: np.asarray(v, np.float64) for k, v in params.items()}, state, updates


def test_bf16_params_keep_bf16_updates_and_a_float32_delta():
  """The first scaled steps (S ~ 1e-6) are far below half a bf16 ulp: Δ
  recovered from bf16 parameters would be 0 for good, as optax's is (its
  bf16 parameters never move, its bf16 S stays at 1e-6). Kept in float32,
  the bf16 run tracks the float32 one to about a bf16 ulp (0.004 measured,
  of a 0.054 displacement)."""
  f32, _, _ = _run(mechanize(go.sgd(0.5)), jnp.float32)
  bf16, state, updates = _run(mechanize(go.sgd(0.5)), jnp.bfloat16)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  assert state.s.dtype == jnp.float32 and state.x_ref["w"].dtype == jnp.float32
  assert all(d.dtype == jnp.float32 for d in jax.tree.leaves(state.delta))
  for k in f32:
    moved = np.abs(f32[k] - PROBLEM.params0[k]).max()
    assert moved > 1e-2
    np.testing.assert_allclose(bf16[k], f32[k], atol=0.15 * moved)
  theirs, _, _ = _run(optax.contrib.mechanize(go.sgd(0.5)), jnp.bfloat16)
  start = np.asarray(jnp.asarray(PROBLEM.params0["w"], jnp.bfloat16), np.float64)
  np.testing.assert_array_equal(theirs["w"], start)


@pytest.mark.parametrize("kwargs, message", [
    (dict(s_decay=-0.1), r"s_decay must be in \[0, inf\), got -0.1"),
    (dict(s_decay=float("nan")), r"s_decay must be in \[0, inf\)"),
    (dict(eps=0.0), r"eps must be in \(0, inf\), got 0.0"),
    (dict(s_init=0.0), r"s_init must be in \(0, inf\), got 0.0"),
    (dict(s_init=True), "s_init must be a number, got True"),
    (dict(num_betas=0), "num_betas must be an integer >= 1, got 0"),
    (dict(num_betas=3.0), "num_betas must be an integer >= 1, got 3.0"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    mechanize(go.sgd(0.1), **kwargs)


@pytest.mark.parametrize("base", [None, optax.adam])
def test_base_must_be_a_transformation(base):
  with pytest.raises(ValueError, match="base must be an optax.GradientTransformation"):
    mechanize(base)


def test_params_are_required_and_complex_leaves_refused():
  tx = mechanize(go.sgd(0.1))
  with pytest.raises(ValueError, match="mechanize needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="mechanize does not support complex parameters"):
    tx.init({"z": jnp.ones(2, jnp.complex64)})
  with pytest.raises(ValueError, match="mechanize: the update of"):
    tx.update(jnp.ones((2, 3)), tx.init(jnp.ones((3, 2))), jnp.ones((3, 2)))


def test_keyword_arguments_reach_the_base():
  """mechanize(sam(...)) forwards grad_fn to sam: SAM's steps, not SGD's."""
  loss = lambda w: jnp.sum(w ** 4)
  grad = jax.grad(loss)
  w0 = jnp.array([1.0, -0.5])
  runs = {}
  for name, base in {"sam": go.sam(go.sgd(1.0), rho=0.1), "sgd": go.sgd(1.0)}.items():
    tx = mechanize(base)
    w, state = w0, tx.init(w0)
    for _ in range(60):
      updates, state = tx.update(grad(w), state, w, grad_fn=grad)
      w = optax.apply_updates(w, updates)
    runs[name] = w
    assert float(loss(w)) < 0.1 * float(loss(w0))
  assert float(jnp.abs(runs["sam"] - runs["sgd"]).max()) > 1e-3
  tx = mechanize(go.sam(go.sgd(1.0), rho=0.1))
  with pytest.raises(ValueError, match="sam's update needs params and grad_fn"):
    tx.update(grad(w0), tx.init(w0), w0)


def test_flax_nnx_optimizer_trains_with_one_trace():
  model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
  x = jnp.linspace(-1, 1, 32).reshape(8, 4)
  y = x @ jnp.array([[1.0], [-2.0], [0.5], [3.0]])
  losses, traces, optimizer = helpers.nnx_train(
      model, mechanize(go.adam(0.05)), lambda m: jnp.mean((m(x) - y) ** 2), 60)
  assert traces == 1
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
  assert float(optimizer.opt_state.s.get_value().sum()) > 1e-3


def test_float32_parameters_keep_delta_and_move_as_in_float64():
  """|p|²/2 from [3, −2] with AdamW(1e-3) as the base: the first scaled
  steps (S ≈ 1e-6 of steps ≈ 1e-3) are below half a float32 ulp of the
  weights, so Δ recovered from the parameters (the official default) stays
  0 and the run never moved, official code included; with Δ kept it follows
  the float64 run (which agrees with the official code to round-off)."""

  def run(dtype):
    tx = mechanize(go.adamw(1e-3))
    params = jnp.array([3.0, -2.0], dtype)
    state, step = tx.init(params), jax.jit(tx.update)
    for _ in range(300):
      updates, state = step(params, state, params)
      params = optax.apply_updates(params, updates)
    return np.asarray(params, np.float64), state

  f32, state = run(jnp.float32)
  assert state.delta is not None and state.delta.dtype == jnp.float32
  with jax.enable_x64(True):
    f64, state64 = run(jnp.float64)
  assert np.abs(f32 - [3.0, -2.0]).max() > 2.9  # it moved to the minimum, as float64
  np.testing.assert_allclose(f32, f64, atol=2e-2)  # (Adam's oscillation about 0)
