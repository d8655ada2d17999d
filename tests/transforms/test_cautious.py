"""gt.cautious against NumPy transcriptions of the reference codes.

C-AdamW's whole float64 trajectory against C-Optim's ``AdamW.step``
(``transcriptions.c_adamw_numpy``); the mask alone against C-Optim's,
Levanter's and heavyball's rules, equal where they agree and apart only where
their docstrings say. (Argument checks, zero gradients, jit and bf16:
tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners, transcriptions

STEPS = 20
PROBLEM = problems.LogisticProblem(seed=3, steps=STEPS)


def c_adamw(lr, weight_decay, b1=0.9, b2=0.999):
  return optax.chain(
      gt.cautious(gt.scale_by_adam(b1, b2, eps=0.0)),
      gt.decoupled_weight_decay(weight_decay),
      gt.scale_by_learning_rate(lr))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_c_adamw_trajectory_matches_c_optim(weight_decay):
  """20 float64 steps. C-Optim's ε sits in √v + ε with the bias corrections
  folded into the step size, gradtx's in √v̂ + ε: with ε = 0 the rules are
  the same, so the trajectories must agree to round-off."""
  ours = runners.run_gradtx(c_adamw(0.05, weight_decay), PROBLEM.params0, PROBLEM.grad, STEPS)
  ref = transcriptions.c_adamw_numpy(
      PROBLEM.params0, PROBLEM.grad, STEPS, lr=0.05, b1=0.9, b2=0.999, eps=0.0,
      weight_decay=weight_decay)
  runners.assert_trajectories_close(ours, ref, 1e-10)
  # The reference tells the cautious step from plain AdamW's.
  plain = runners.run_gradtx(
      go.adamw(0.05, eps=0.0, weight_decay=weight_decay), PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(plain, ref)["updates"] > 1e-2


def _fixed(updates):
  """A transform whose update is ``updates`` whatever the gradient."""
  return optax.GradientTransformation(
      lambda params: optax.EmptyState(), lambda g, state, params=None: (updates, state))


def _masked(u, g):
  with jax.enable_x64(True):
    tx = gt.cautious(_fixed({"x": jnp.asarray(u)}))
    out, _ = tx.update({"x": jnp.asarray(g)}, tx.init({"x": jnp.asarray(g)}))
    return np.asarray(out["x"])


def test_mask_matches_the_three_references_where_they_agree():
  """No zero in u or g and well over 0.1% kept: C-Optim and heavyball to
  round-off, Levanter up to its +1e-8 in the denominator."""
  rng = np.random.default_rng(0)
  for shape in [(7,), (5, 6), (3, 4, 5)]:
    u, g = rng.normal(size=shape), rng.normal(size=shape)
    ours = _masked(u, g)
    np.testing.assert_allclose(ours, transcriptions.caution_c_optim(u, g), rtol=1e-15)
    np.testing.assert_allclose(ours, transcriptions.caution_heavyball(g, u), rtol=1e-15)
    np.testing.assert_allclose(ours, transcriptions.caution_levanter(u, g), rtol=1e-7)
    kept = u * g > 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(ours[~kept], 0)


def test_mask_is_per_leaf():
  rng = np.random.default_rng(1)
  u = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=(9,))}
  g = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=(9,))}
  with jax.enable_x64(True):
    tx = gt.cautious(_fixed(jax.tree.map(jnp.asarray, u)))
    out, _ = tx.update(jax.tree.map(jnp.asarray, g), tx.init(g))
  for k in u:
    np.testing.assert_allclose(out[k], transcriptions.caution_c_optim(u[k], g[k]), rtol=1e-15)


def test_where_the_references_differ_gradtx_follows_c_optim():
  # A zero gradient: heavyball keeps a positive u (+0 and u share a sign bit).
  u, g = np.array([1.0, 2.0, -1.0, 1.0]), np.array([0.0, 1.0, -1.0, -1.0])
  np.testing.assert_array_equal(_masked(u, g), transcriptions.caution_c_optim(u, g))
  assert transcriptions.caution_heavyball(g, u)[0] != 0 and _masked(u, g)[0] == 0
  # One coordinate of 4000 kept: C-Optim's scale stops at 1000, heavyball's
  # and Levanter's go on to 4000.
  u, g = np.ones(4000), -np.ones(4000)
  g[0] = 1.0
  ours = _masked(u, g)
  np.testing.assert_array_equal(ours, transcriptions.caution_c_optim(u, g))
  assert ours[0] == 1000.0 and transcriptions.caution_heavyball(g, u)[0] == 4000.0
  # Nothing kept: a zero update, never 0/0.
  np.testing.assert_array_equal(_masked(u, -u), np.zeros(4000))


def test_nan_stays_visible_and_other_coordinates_are_masked_as_usual():
  u = np.array([1.0, -1.0, np.nan, 2.0])
  g = np.array([1.0, 1.0, 1.0, np.nan])
  out = _masked(u, g)
  assert np.isnan(out[2]) and np.isnan(out[3])
  assert out[1] == 0 and np.isfinite(out[0])


def test_complex_agreement_is_the_real_part_of_conj_g_u():
  u = np.array([1 + 1j, 1 - 1j, -1 + 0.5j])
  g = np.array([1 + 0j, -1 + 0j, 1j])  # Re(ḡu) = 1, -1, 0.5
  out = _masked(u, g)
  np.testing.assert_allclose(out, np.array([1 + 1j, 0, -1 + 0.5j]) * 1.5)


def test_wraps_any_transform_and_keeps_its_state_dtype_and_one_trace():
  params = {"w": jnp.ones((3, 4), jnp.bfloat16), "b": jnp.zeros(4, jnp.bfloat16)}
  tx = gt.cautious(gt.scale_by_lion())
  state = tx.init(params)
  assert isinstance(state, gt.CautiousState)
  assert isinstance(state.inner_state, gt.ScaleByLionState)
  traces = []

  @jax.jit
  def step(grads, state):
    traces.append(1)
    return tx.update(grads, state, params)

  rng = np.random.default_rng(2)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    updates, state = step(grads, state)
    assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
  assert len(traces) == 1


def test_extra_arguments_reach_the_inner_transform():
  seen = {}

  def update(updates, state, params=None, **extra):
    seen.update(extra)
    return updates, state

  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  tx = gt.cautious(inner)
  tx.update(jnp.ones(2), tx.init(jnp.ones(2)), None, loss=3.0)
  assert seen == {"loss": 3.0}
