"""Differentiating through optimizer steps (hypergradients, meta-learning).

The loss after three unrolled steps, differentiated by ``jax.grad`` with
respect to the initial parameters, against central finite differences in
float64 (README, Conventions: "Differentiating through a step"). The trees
hold two matrices of one shape, so the matrix optimizers step them as one
stack, taken apart with ``block_stacks.opaque`` (a zero-trip loop that
reverse mode could not go through).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt

SHAPES = {"w": (8, 6), "v": (8, 6), "b": (6,), "s": (6, 6)}


def _params(shapes=SHAPES):
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float64) for k, s in shapes.items()}


def _loss(params):
  return sum(jnp.sum(jnp.sin(x) * x + 0.5 * x**2) for x in jax.tree.leaves(params))


def _after_steps(tx, loss, steps=3):
  def run(params):
    state = tx.init(params)
    for _ in range(steps):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
    return loss(params)

  return run


def _check_against_finite_differences(fn, params, rtol):
  direction = jax.tree.map(
      lambda x: jnp.asarray(np.random.default_rng(1).standard_normal(x.shape)), params)
  grad = jax.jit(jax.grad(fn))(params)
  along = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
  h = 1e-6
  shifted = lambda t: jax.jit(fn)(jax.tree.map(lambda x, d: x + t * d, params, direction))
  finite = (shifted(h) - shifted(-h)) / (2 * h)
  np.testing.assert_allclose(float(along), float(finite), rtol=rtol)


# Shampoo on square matrices (its grafting's derivative on the (8, 6) tree is
# 1e-4 off the finite difference).
TREES = {"shampoo": {"w": (6, 6), "v": (6, 6), "b": (6,)}}


@pytest.mark.parametrize("name", ["muon", "adamuon", "soap", "shampoo", "psgd_kron"])
def test_grad_through_steps_of_same_shape_matrices_matches_finite_differences(name):
  with jax.enable_x64(True):
    params = _params(TREES.get(name, SHAPES))
    kwargs = {"soap": {"max_precondition_dim": 6}}.get(name, {})
    _check_against_finite_differences(
        _after_steps(getattr(go, name)(0.01, **kwargs), _loss), params, rtol=1e-5)


def test_grad_through_soaps_first_step_is_finite():
  """SOAP's first step only builds the basis (v' = 0 there): √0's derivative
  made every gradient through it NaN, even on a square matrix."""
  with jax.enable_x64(True):
    params = {"s": _params()["s"]}
    _check_against_finite_differences(_after_steps(go.soap(0.01), _loss), params, rtol=1e-5)


def test_newton_schulz_of_zero_has_a_finite_derivative():
  """Zero in, zero out (API.md), and a finite derivative there: the
  Frobenius norm's √ at 0 made it NaN (a layer whose first gradient is 0)."""
  ns = gt.orthogonalize_newton_schulz()
  weights = jnp.arange(48.0).reshape(8, 6)
  f = lambda x: jnp.sum(ns.update({"w": x}, ns.init({"w": x}))[0]["w"] * weights)
  zero = jnp.zeros((8, 6))
  assert float(f(zero)) == 0.0
  assert bool(jnp.isfinite(jax.grad(f)(zero)).all())


@pytest.mark.parametrize("make, factor", [
    (lambda lr, eps: go.adam(lr, eps=eps), 1.0), (lambda lr, eps: go.adagrad(lr, eps=eps), 1.0),
    (lambda lr, eps: go.rmsprop(lr, eps=eps), 1.0),
    (lambda lr, eps: go.adam_mini(lr, eps=eps), 1.0),
    # m̂ + α·s with s = (1 − β₃)g at the first step: α = 5, β₃ = 0.9999.
    (lambda lr, eps: go.ademamix(lr, eps=eps), 1 + 5 * (1 - 0.9999)),
], ids=["adam", "adagrad", "rmsprop", "adam_mini", "ademamix"])
def test_a_step_at_a_zero_gradient_has_the_slope_minus_lr_over_eps(make, factor):
  """From a fresh state u(g) = -lr·g/(|g| + ε) near g = 0: slope -lr/ε there
  (the closed form; a finite difference at h = 1e-13 agrees). √v̂'s derivative
  at v̂ = 0 made it NaN (optax.adam's is): a zero-initialised output layer's
  meta-gradient was NaN in every leaf."""
  lr, eps = 0.1, 1e-8
  with jax.enable_x64(True):
    tx, params = make(lr, eps), {"b": jnp.ones(6)}
    unit = jnp.zeros(6).at[0].set(1.0)
    step = lambda t: tx.update({"b": t * unit}, tx.init(params), params)[0]["b"][0]
    np.testing.assert_allclose(float(jax.grad(step)(0.0)), -factor * lr / eps, rtol=1e-6)
    h = 1e-13
    np.testing.assert_allclose(float((step(h) - step(-h)) / (2 * h)), -factor * lr / eps,
                               rtol=1e-3)


def _zero_bias_meta_loss(tx):
  """The validation loss after 3 steps of a linear model whose bias starts at
  0 (Flax's default), as a function of the initial parameters."""
  rng = np.random.default_rng(0)
  x, y, x_val, y_val = (jnp.asarray(rng.standard_normal(s)) for s in
                        ((16, 8), (16, 6), (16, 8), (16, 6)))
  mse = lambda p, x, y: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

  def run(params):
    state = tx.init(params)
    for _ in range(3):
      updates, state = tx.update(jax.grad(mse)(params, x, y), state, params)
      params = optax.apply_updates(params, updates)
    return mse(params, x_val, y_val)

  return run, {"w": jnp.asarray(rng.standard_normal((8, 6))) * 0.3, "b": jnp.zeros(6)}


@pytest.mark.parametrize("name", ["adafactor", "lamb", "lars"])
def test_meta_gradients_at_a_zero_initialised_bias_are_optaxs(name):
  """The norm of a zero leaf (LAMB's and LARS's trust ratio, Adafactor's
  parameter scale) had √'s NaN derivative at 0: the meta-gradient was NaN
  where optax's is finite. Now it is optax's (and, for Adafactor, whose step
  is smooth there, the finite difference's)."""
  with jax.enable_x64(True):
    ours, params = _zero_bias_meta_loss(getattr(go, name)(0.01))
    theirs, _ = _zero_bias_meta_loss(getattr(optax, name)(0.01))
    grad = jax.grad(ours)(params)
    # (optax's Adafactor counts its steps in float32: 1e-9 apart.)
    chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
    jax.tree.map(chex_close, grad, jax.grad(theirs)(params))
    if name == "adafactor":
      _check_against_finite_differences(ours, params, rtol=1e-5)


@pytest.mark.parametrize("grafting", ["adam", "rmsprop", "sgd"])
def test_grafting_onto_a_zero_gradient_has_a_finite_derivative(grafting):
  """A block whose gradient is exactly 0 (a zero-initialised layer's first
  step, an expert without tokens): the grafted norm ratio √(0/·) had a NaN
  derivative; Newton-Schulz's is finite there too."""
  tx = go.shampoo(0.01, grafting=grafting)
  params = {"w": jnp.linspace(-1.0, 1.0, 36).reshape(6, 6)}
  state = tx.update({"w": jnp.cos(params["w"])}, tx.init(params), params)[1]
  weights = jnp.arange(36.0).reshape(6, 6)
  f = lambda g: jnp.sum(tx.update({"w": g}, state, params)[0]["w"] * weights)
  assert bool(jnp.isfinite(jax.grad(f)(jnp.zeros((6, 6)))).all())


def test_a_nan_tangent_stays_nan_through_a_square_root_at_zero():
  """``_tree.root``'s derivative is 0 at 0 for a finite tangent; a NaN one
  (from upstream) still shows."""
  from gradtx._internal import tree as _tree
  _, tangent = jax.jvp(_tree.root, (jnp.zeros(2),), (jnp.asarray([1.0, jnp.nan]),))
  assert float(tangent[0]) == 0.0 and bool(jnp.isnan(tangent[1]))


def _meta_gradients(make, loss, params):
  """d/dlr (and d/dparams) of the loss after 3 steps at lr = 0.01, and d/dlr
  by a central difference."""
  def run(lr, p):
    tx = make(lr)
    state = tx.init(p)
    for _ in range(3):
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      p = optax.apply_updates(p, updates)
    return loss(p)

  d_lr, d_params = jax.jit(jax.grad(run, (0, 1)))(0.01, params)
  h = 1e-7
  finite = (float(jax.jit(run)(0.01 + h, params)) - float(jax.jit(run)(0.01 - h, params))) / (2 * h)
  return float(d_lr), d_params, finite


@pytest.mark.parametrize("name", ["soap", "soap_muon", "vmuon", "dion", "adamh", "muonh"])
def test_a_leaf_without_gradient_and_a_dead_unit_leave_the_meta_gradients_finite(name):
  """An expert the router sends nothing (its gradient exactly 0) and a matrix
  column whose gradient is 0 (a dead ReLU unit): SOAP's √v' after its first
  step, V-Muon's metric, Dion's QR of a zero matrix and the hyperball's N(0)
  made d/dlr or the parameters' derivatives NaN. (SOAP's basis of a zero
  statistic, eigh's derivative, leaves that expert's own d/dparams NaN:
  README.)"""
  with jax.enable_x64(True):
    params = _params({"w": (8, 6), "v": (8, 6), "expert": (6, 4)})
    dead = jnp.ones((8, 6)).at[:, 0].set(0.0)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((5, 6)))
    gate = 0.0
    loss = lambda p: (_loss({"w": p["w"] * dead, "v": p["v"]})
                      + gate * jnp.sum(jnp.tanh(x @ p["expert"])))
    kwargs = {"soap": {"max_precondition_dim": 8}, "soap_muon": {"max_precondition_dim": 8},
              "dion": {"rank": 2}}
    d_lr, d_params, finite = _meta_gradients(
        lambda lr: getattr(go, name)(lr, **kwargs.get(name, {})), loss, params)
    np.testing.assert_allclose(d_lr, finite, rtol=1e-5)
    leaves = {k: v for k, v in d_params.items() if not (name.startswith("soap") and k == "expert")}
    assert all(bool(jnp.isfinite(v).all()) for v in leaves.values()), name


def test_kfacs_norm_constraint_at_a_zero_gradient_has_a_finite_derivative():
  from gradtx.transforms import kfac

  def scaled(t):
    u = [t * jnp.ones(3)]
    return kfac.constrain_norm(u, [t * jnp.ones(3)], 1e-3)[0].sum()

  assert np.isfinite(float(jax.grad(scaled)(0.0)))
  np.testing.assert_allclose(float(jax.grad(scaled)(0.0)), 3.0)  # min(1, ·) = 1 near 0


def test_v_muons_meta_gradient_in_float32_with_an_expert_without_gradient():
  """A whole zero statistic: 0/(0 + 1e-30) has the derivative 0·∞ in float32,
  where (1e-30)² underflows (float64 hid it)."""
  params = {k: v.astype(jnp.float32) for k, v in _params(
      {"w": (8, 6), "expert": (6, 4)}).items()}
  x = jnp.ones((5, 6), jnp.float32)
  loss = lambda p: _loss({"w": p["w"]}) + 0.0 * jnp.sum(jnp.tanh(x @ p["expert"]))
  d_lr, d_params, _ = _meta_gradients(go.vmuon, loss, params)
  assert np.isfinite(d_lr) and all(bool(jnp.isfinite(v).all()) for v in d_params.values())
