"""SAM / ASAM against a hand-written PyTorch SAM loop, a closed form and optax.contrib.

The PyTorch reference (``torch_runners.run_torch_sam``) follows Algorithm 1
of Foret et al. 2021 as written in github.com/davda54/sam, on a 2-layer tanh
MLP with a fresh mini-batch every step (``problems.MlpProblem``), float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners
from tests.support import helpers

PROBLEM = problems.MlpProblem(seed=7, steps=25)
NAMES = list(PROBLEM.params0)


def _run_jax(tx, wrap_grad_fn=lambda f: f):
  return runners.run_with_grad_fn(tx, PROBLEM, wrap_grad_fn)


BASES = {
    "sgd_momentum": (lambda: go.sgd(0.05, momentum=0.9),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    "adam": (lambda: go.adam(0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
}


RHO = 0.1


@functools.lru_cache(maxsize=None)
def _gradtx_run(base, adaptive=None):
  """SAM(ρ = RHO) around ``base`` on the MLP; ``adaptive=None``: the base alone."""
  tx = BASES[base][0]()
  return _run_jax(tx if adaptive is None else go.sam(tx, rho=RHO, adaptive=adaptive))


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("base", list(BASES))
def test_matches_torch_sam_loop(base, adaptive):
  ref = torch_runners.run_torch_sam(BASES[base][1], PROBLEM, RHO, adaptive)
  runners.assert_trajectories_close(_gradtx_run(base, adaptive), ref, 1e-10)
  # The reference tells the base alone and the other rule apart.
  for other in (None, not adaptive):
    errors = runners.trajectory_errors(_gradtx_run(base, other), ref)
    print(f"{other=}: {errors}")
    assert errors["params"] > 1e-3


@pytest.mark.parametrize("base", list(BASES))
def test_matches_optax_contrib_sam_opaque_mode(base):
  make_ours, _ = BASES[base]
  ours = _run_jax(go.sam(make_ours(), rho=0.05, eps=0.0))
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(0.05))
  theirs = _run_jax(
      optax.contrib.sam(make_ours(), adversary, sync_period=2, opaque_mode=True),
      wrap_grad_fn=lambda grad_fn: lambda params, _: grad_fn(params))
  runners.assert_trajectories_close(ours, theirs, 1e-12)


def _quadratic(seed=0, n=3):
  rng = np.random.default_rng(seed)
  m = rng.normal(size=(n, n))
  return m @ m.T + n * np.eye(n), rng.normal(size=n), rng.normal(size=n)


@pytest.mark.parametrize(
    "adaptive, eta", [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_one_step_closed_form_on_quadratic(adaptive, eta):
  a, b, w = _quadratic()
  w[0] = 0.0  # ASAM perturbs a zero coordinate only with η > 0
  lr, rho, eps = 0.1, 0.3, 1e-12
  g = a @ w - b
  t = np.abs(w) + eta if adaptive else np.ones_like(w)
  e = rho * t**2 * g / (np.linalg.norm(t * g) + eps)
  assert (e[0] != 0) == (not adaptive or eta > 0)
  expected = w - lr * (a @ (w + e) - b)
  with jax.enable_x64(True):
    tx = go.sam(go.sgd(lr), rho=rho, adaptive=adaptive, eta=eta, eps=eps)
    grad_fn = lambda p: jnp.asarray(a) @ p - jnp.asarray(b)
    wj = jnp.asarray(w)
    updates, state = tx.update(grad_fn(wj), tx.init(wj), wj, grad_fn=grad_fn)
    assert isinstance(state, go.SamState)
    np.testing.assert_allclose(optax.apply_updates(wj, updates), expected,
                               rtol=1e-13)


def test_rho_zero_is_exactly_the_base():
  base_run = _run_jax(go.adam(0.01))
  for ours, ref in zip(_run_jax(go.sam(go.adam(0.01), rho=0.0)), base_run):
    for k in NAMES:
      np.testing.assert_array_equal(ours[k], ref[k])


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-12])
def test_zero_gradient_gives_zero_perturbation(adaptive, eps):
  w = jnp.array([1.0, -2.0, 3.0])
  tx = go.sam(go.sgd(1.0), rho=0.5, adaptive=adaptive, eps=eps)
  # grad_fn returns its argument, so the update is −(w + ε).
  updates, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, grad_fn=lambda q: q))(
      jnp.zeros(3), tx.init(w), w)
  np.testing.assert_array_equal(updates, -w)


def test_bf16_params_keep_their_dtype_and_perturb_in_float32():
  w = {"a": jnp.array([0.3, -1.7, 2.1], jnp.bfloat16), "b": jnp.array(0.9, jnp.bfloat16)}
  g = {"a": jnp.array([0.01, 0.2, -0.3], jnp.bfloat16), "b": jnp.array(0.05, jnp.bfloat16)}
  seen = []
  def grad_fn(p):
    seen.append(jax.tree.map(lambda x: x.dtype, p))
    return p  # the update is then −(w + ε)
  tx = go.sam(go.sgd(1.0, momentum=0.9), rho=0.7)
  updates, state = tx.update(g, tx.init(w), w, grad_fn=grad_fn)
  assert seen == [{"a": jnp.bfloat16, "b": jnp.bfloat16}]
  assert jax.tree.map(lambda x: x.dtype, updates) == seen[0]
  assert jax.tree.map(lambda x: x.dtype, optax.apply_updates(w, updates)) == seen[0]
  g32 = {k: np.asarray(v, np.float32) for k, v in g.items()}
  norm = np.sqrt(sum(np.sum(v**2) for v in g32.values()))
  for k in w:
    expected = (np.asarray(w[k], np.float32) + 0.7 * g32[k] / norm).astype(jnp.bfloat16)
    np.testing.assert_array_equal(updates[k], -expected)


def test_jit_traces_once_and_grad_fn_called_once_per_step():
  traces, calls = [], []
  a, b, _ = _quadratic()
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  tx = go.sam(go.adam(0.1), rho=0.1)

  @jax.jit
  def step(w, state):
    traces.append(1)
    def grad_fn(p):
      calls.append(1)
      return a @ p - b
    updates, state = tx.update(a @ w - b, state, w, grad_fn=grad_fn)
    return optax.apply_updates(w, updates), state

  w = jnp.ones(3)
  state = tx.init(w)
  for _ in range(5):
    w, state = step(w, state)
  assert len(traces) == 1 and len(calls) == 1
  assert np.all(np.isfinite(w)) and not np.allclose(w, 1.0)


def test_vmap_over_a_batch_of_problems():
  problems = [_quadratic(seed) for seed in range(3)]
  tx = go.sam(go.sgd(0.05, momentum=0.9), rho=0.2, adaptive=True)

  def run(a, b, w):
    grad_fn = lambda p: a @ p - b
    state = tx.init(w)
    for _ in range(4):
      updates, state = tx.update(grad_fn(w), state, w, grad_fn=grad_fn)
      w = optax.apply_updates(w, updates)
    return w

  with jax.enable_x64(True):
    stacked = [jnp.asarray(np.stack(x)) for x in zip(*problems)]
    batched = jax.jit(jax.vmap(run))(*stacked)
    for i, problem in enumerate(problems):
      np.testing.assert_allclose(batched[i], run(*map(jnp.asarray, problem)),
                                 rtol=1e-13)


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(rho=-1), r"rho must be in \[0, inf\), got -1"),
     (dict(rho=float("nan")), r"rho must be in \[0, inf\), got nan"),
     (dict(eps=-1e-3), r"eps must be in \[0, inf\), got -0.001"),
     (dict(eta=-0.1), r"eta must be in \[0, inf\), got -0.1"),
     (dict(rho="big"), r"rho must be a number, got 'big'")],
)
def test_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    go.sam(go.sgd(0.1), **kwargs)


def test_missing_grad_fn_or_params_is_an_error():
  tx = go.sam(go.sgd(0.1))
  w = jnp.ones(2)
  with pytest.raises(ValueError, match=r"needs params and grad_fn.*grad_fn=None"):
    tx.update(w, tx.init(w), w)
  with pytest.raises(ValueError, match=r"needs params and grad_fn.*params=None"):
    tx.update(w, tx.init(w), None, grad_fn=lambda p: p)


def test_extra_args_reach_the_base_without_grad_fn():
  seen = []
  def update(updates, state, params=None, **extra_args):
    seen.append(sorted(extra_args))
    return jax.tree.map(lambda u: extra_args["scale"] * u, updates), state
  base = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  w = jnp.array([3.0, 4.0])
  tx = go.sam(base, rho=5.0)
  updates, _ = tx.update(w, tx.init(w), w, grad_fn=lambda p: p, scale=2.0)
  assert seen == [["scale"]]
  np.testing.assert_allclose(updates, 2.0 * (w + 5.0 * w / 5.0))
  # A plain GradientTransformation base ignores them.
  plain = go.sam(optax.scale(-1.0), rho=5.0)
  updates, _ = plain.update(w, plain.init(w), w, grad_fn=lambda p: p, scale=2.0)
  np.testing.assert_allclose(updates, -2.0 * w)


def test_non_finite_gradient_poisons_the_step_unless_apply_if_finite():
  a, b, w = map(jnp.asarray, _quadratic())
  grad_fn = lambda p: a @ p - b
  bad = (a @ w - b).at[0].set(jnp.inf)
  tx = go.sam(go.sgd(0.1, momentum=0.9), rho=0.1)
  updates, state = tx.update(bad, tx.init(w), w, grad_fn=grad_fn)
  assert np.all(np.isnan(updates))
  momentum_buffer = [x for x in jax.tree.leaves(state.inner_state) if x.ndim == 1]
  assert len(momentum_buffer) == 1 and np.all(np.isnan(momentum_buffer[0]))

  guarded = optax.apply_if_finite(go.sam(go.sgd(0.1, momentum=0.9), rho=0.1), 3)
  state0 = guarded.init(w)
  updates, state = guarded.update(bad, state0, w, grad_fn=grad_fn)
  np.testing.assert_array_equal(updates, jnp.zeros_like(w))
  jax.tree.map(np.testing.assert_array_equal, state.inner_state, state0.inner_state)
  # The next finite step is the first step of an unguarded run.
  updates, _ = guarded.update(a @ w - b, state, w, grad_fn=grad_fn)
  expected, _ = tx.update(a @ w - b, tx.init(w), w, grad_fn=grad_fn)
  np.testing.assert_array_equal(updates, expected)



@pytest.mark.parametrize("adaptive", [False, True])
def test_a_nan_gradient_puts_every_coordinate_of_the_perturbation_at_nan(adaptive):
  """As the docstring says: a NaN in g makes ‖g‖ NaN and ε NaN everywhere, so
  grad_fn is never evaluated at a finite point moved by an unnormalised ρ·g."""
  w = jnp.ones(3)
  seen = []
  grad_fn = lambda p: seen.append(p) or p
  tx = go.sam(optax.sgd(1.0), rho=0.05, adaptive=adaptive)
  updates, _ = tx.update(jnp.array([jnp.nan, 100.0, 100.0]), tx.init(w), w, grad_fn=grad_fn)
  assert np.all(np.isnan(seen[0])) and np.all(np.isnan(updates))


def _linear_loss(p, x, y):
  return jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2)


@pytest.mark.parametrize("jit", [False, True])
def test_flax_nnx_optimizer_forwards_grad_fn(jit):
  rng = np.random.default_rng(1)
  x, y = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), jnp.asarray(
      rng.normal(size=(8, 2)), jnp.float32)
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
  optimizer = nnx.Optimizer(model, go.sam(go.sgd(0.1, momentum=0.9), rho=0.3), wrt=nnx.Param)

  def train_step(model, optimizer):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grad_fn = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest)))
    optimizer.update(model, nnx.grad(loss_fn)(model), grad_fn=grad_fn)

  train_step = nnx.jit(train_step) if jit else train_step
  for _ in range(3):
    train_step(model, optimizer)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def functional(tx):
    params, state = params0, tx.init(params0)
    grad_fn = jax.grad(lambda p: _linear_loss(p, x, y))
    for _ in range(3):
      updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
      params = optax.apply_updates(params, updates)
    return params

  want = functional(go.sam(go.sgd(0.1, momentum=0.9), rho=0.3))
  base_only = functional(go.sgd(0.1, momentum=0.9))
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert np.abs(base_only[k] - want[k]).max() > 1e-3


def test_apply_if_finite_inside_guards_the_perturbed_gradient():
  """g is finite, ∇L(w + ε) is not: only the inner guard catches it."""
  w = jnp.array([1.0, 2.0])
  bad_at_perturbed = lambda p: jnp.where(p[0] > 1.0, jnp.nan, 1.0) * p
  inner = go.sam(optax.apply_if_finite(go.adam(0.1), 3), rho=0.5)
  state = inner.init(w)
  updates, state = inner.update(w, state, w, grad_fn=bad_at_perturbed)
  np.testing.assert_array_equal(updates, jnp.zeros(2))
  assert int(state.inner_state.notfinite_count) == 1
  outer = optax.apply_if_finite(go.sam(go.adam(0.1), rho=0.5), 3)
  updates, _ = outer.update(w, outer.init(w), w, grad_fn=bad_at_perturbed)
  assert bool(jnp.isnan(updates).any())  # the outer guard tests g only


@pytest.mark.parametrize("base", [None, optax.adam])
def test_base_must_be_a_transformation(base):
  with pytest.raises(ValueError, match="base must be an optax.GradientTransformation"):
    go.sam(base)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sharded_params_keep_their_sharding(adaptive):
  """On an 8-device Explicit mesh the step keeps the layouts and the values."""
  mesh = helpers.make_mesh()
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  loss = lambda p: jnp.sum(jnp.tanh(p["w"] + p["b"]) ** 2)
  tx = go.sam(go.adamw(0.1), rho=0.1, adaptive=adaptive)

  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params,
                               grad_fn=jax.grad(loss))
    return optax.apply_updates(params, updates), state

  expected, _ = jax.jit(step)(params, tx.init(params))
  specs = {"w": jax.P("x", "y"), "b": jax.P("y")}
  with jax.set_mesh(mesh):
    sharded = jax.tree.map(
        lambda p, s: jax.device_put(p, jax.NamedSharding(mesh, s)), params, specs)
    new, _ = jax.jit(step)(sharded, jax.jit(tx.init)(sharded))
  for k, spec in specs.items():
    assert new[k].sharding.spec == spec, (k, new[k].sharding)
    np.testing.assert_allclose(new[k], expected[k], rtol=1e-5, atol=1e-6)
