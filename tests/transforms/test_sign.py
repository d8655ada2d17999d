"""Update rules of the sign transforms: sign, soft sign, Lion and Tiger.

(Argument checks, zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.support import helpers

GRADS = [np.array([1.0, -2.0, 0.5]), np.array([-3.0, 0.5, 0.25]),
         np.array([0.5, 4.0, -2.0])]


def _run(tx, grads=GRADS):
  updates, state = helpers.jit_updates(tx, [jnp.asarray(g, jnp.float32) for g in grads])
  return [np.asarray(u) for u in updates], state


def test_sign():
  g = jnp.array([2.5, -1e-30, 0.0, -7.0, 1e-30])
  (u,), _ = _run(gt.scale_by_sign(), [g])
  np.testing.assert_array_equal(u, [1.0, -1.0, 0.0, -1.0, 1.0])


def test_soft_sign_with_tau_by_hand():
  tau = 0.5
  g = np.array([1.5, -0.5, 0.0, 1e3, -1e-4])
  (u,), _ = _run(gt.scale_by_sign(tau), [g])
  np.testing.assert_allclose(u, g / (tau + np.abs(g)), rtol=1e-6)
  np.testing.assert_allclose(u[:2], [0.75, -0.5], rtol=1e-6)
  assert np.all(np.abs(u) < 1)
  # Near zero the soft sign is linear, g/τ; far out it tends to sign(g).
  np.testing.assert_allclose(u[4], -1e-4 / tau, rtol=1e-3)
  np.testing.assert_allclose(u[3], 1.0, rtol=1e-3)


def test_soft_sign_tends_to_sign_as_tau_shrinks():
  g = jnp.array([0.3, -2.0, 5.0])
  for tau, tol in [(1e-2, 5e-2), (1e-5, 1e-4)]:
    (u,), _ = _run(gt.scale_by_sign(tau), [g])
    np.testing.assert_allclose(u, np.sign(g), rtol=tol)


def test_lion_by_hand():
  b1, b2 = 0.5, 0.75
  m, expected, sign_of_stored = np.zeros(3), [], []
  for g in GRADS:
    expected.append(np.sign(b1 * m + (1 - b1) * g))
    m = b2 * m + (1 - b2) * g
    sign_of_stored.append(np.sign(m))
  updates, state = _run(gt.scale_by_lion(b1, b2))
  np.testing.assert_array_equal(updates, expected)
  np.testing.assert_allclose(state.mu, m, rtol=1e-6)
  # The interpolation with b1, not the stored (b2) momentum, decides the sign;
  # the inputs are chosen so that the two differ somewhere.
  assert np.any(np.asarray(expected) != np.asarray(sign_of_stored))


def test_tiger_is_the_sign_of_the_ema():
  beta = 0.75
  m, expected = np.zeros(3), []
  for g in GRADS:
    m = beta * m + (1 - beta) * g
    expected.append(np.sign(m))
  updates, state = _run(gt.scale_by_tiger(beta))
  np.testing.assert_array_equal(updates, expected)
  np.testing.assert_allclose(state.mu, m, rtol=1e-6)
  lion_updates, _ = _run(gt.scale_by_lion(beta, beta))
  np.testing.assert_array_equal(updates, lion_updates)


def test_lion_bfloat16_momentum():
  updates, state = _run(gt.scale_by_lion(mu_dtype=jnp.bfloat16))
  ref, _ = _run(gt.scale_by_lion())
  assert state.mu.dtype == jnp.bfloat16
  assert all(u.dtype == np.float32 for u in updates)
  np.testing.assert_array_equal(updates, ref)


def test_an_injected_zero_tau_keeps_sign_zero_of_a_zero_gradient():
  """A soft sign annealed to τ = 0 under optax.inject_hyperparams is traced,
  so it takes the soft branch: 0/(0 + |0|) was NaN where sign(0) = 0."""
  import optax  # noqa: PLC0415

  tx = optax.inject_hyperparams(gt.scale_by_sign)(tau=0.0)
  g = jnp.array([2.0, 0.0, -3.0])
  update, _ = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(update, [1.0, 0.0, -1.0])
  soft = optax.inject_hyperparams(gt.scale_by_sign)(tau=0.5)
  np.testing.assert_allclose(soft.update(g, soft.init(g))[0], [0.8, 0.0, -3 / 3.5], rtol=1e-6)


def test_lion_with_a_small_b2_keeps_the_reference_direction():
  """The direction read from m_t, (β₁/β₂)m_t + ((β₂−β₁)/β₂)g, loses ~ε·β₁/β₂
  to rounding: with β₂ < β₁ (0.9/0.01) it flipped signs. There the reference
  form is kept: the same signs as optax.scale_by_lion (at 0.9/1e-5 about one
  in a thousand flipped)."""
  rng = np.random.default_rng(0)
  ours, theirs = gt.scale_by_lion(0.9, 1e-5), optax.scale_by_lion(0.9, 1e-5)
  params = jnp.zeros(20000)
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  for _ in range(5):
    g = jnp.asarray(rng.standard_normal(20000), jnp.float32)
    u_ours, s_ours = jax.jit(ours.update)(g, s_ours)
    u_theirs, s_theirs = jax.jit(theirs.update)(g, s_theirs)
    np.testing.assert_array_equal(u_ours, u_theirs)


def _lion_modes_by_hand(b1, b2, grads, sigma):
  m, out = np.zeros_like(grads[0]), []
  for g in grads:
    out.append(sigma(b1 * m + (1 - b1) * g))
    m = b2 * m + (1 - b2) * g
  return out


@pytest.mark.parametrize("mode, smooth_beta", [
    ("smooth", 1.0), ("smooth", 0.3), ("smooth", 4.0), ("refined", 1.0), ("hard", 1.0)])
def test_lion_modes_against_the_closed_form_and_optax(mode, smooth_beta):
  """σ = tanh(β_s x) or x inside (-1, 1), sign beyond: 40 float64 steps of
  gradients large and small (so the refined mode takes both branches)
  against NumPy and optax.scale_by_lion(mode=, smooth_beta=)."""
  sigma = {"smooth": lambda x: np.tanh(smooth_beta * x),
           "refined": lambda x: np.where(np.abs(x) < 1, x, np.sign(x)),
           "hard": np.sign}[mode]
  rng = np.random.default_rng(3)
  grads = [rng.standard_normal((4, 5)) * rng.choice([0.1, 30.0]) for _ in range(40)]
  expected = _lion_modes_by_hand(0.9, 0.99, grads, sigma)
  with jax.enable_x64(True):
    for tx in (gt.scale_by_lion(mode=mode, smooth_beta=smooth_beta),
               optax.scale_by_lion(mode=mode, smooth_beta=smooth_beta)):
      state, step = tx.init(jnp.zeros((4, 5))), jax.jit(tx.update)
      for g, want in zip(grads, expected):
        u, state = step(jnp.asarray(g), state)
        np.testing.assert_allclose(u, want, rtol=1e-12, atol=1e-14)
  if mode == "refined":  # both branches taken
    everything = np.abs(np.concatenate([e.ravel() for e in expected]))
    assert (everything < 1).any() and (everything == 1).any()


@pytest.mark.parametrize("mode", ["smooth", "refined"])
def test_lion_modes_show_a_non_finite_gradient(mode):
  """A NaN or ±inf gradient gives NaN in every mode (optax's smooth mode
  steps ±1 for ±inf, hiding it)."""
  tx = gt.scale_by_lion(mode=mode)
  g = jnp.array([jnp.inf, -jnp.inf, jnp.nan, 0.5])
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  assert np.isnan(np.asarray(u[:3])).all() and np.isfinite(u[3])


def test_lion_mode_reaches_the_optimizer():
  """go.lion(mode=, smooth_beta=) is optax's chain of scale_by_lion with that
  mode, decoupled decay and the learning rate."""
  rng = np.random.default_rng(4)
  params = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
  ours = go.lion(0.1, weight_decay=0.5, mode="smooth", smooth_beta=0.5)
  theirs = optax.chain(optax.scale_by_lion(mode="smooth", smooth_beta=0.5),
                       optax.add_decayed_weights(0.5), optax.scale(-0.1))
  s_ours, s_theirs, p_ours, p_theirs = ours.init(params), theirs.init(params), params, params
  for _ in range(20):
    g = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    u, s_ours = ours.update(g, s_ours, p_ours)
    v, s_theirs = theirs.update(g, s_theirs, p_theirs)
    p_ours, p_theirs = optax.apply_updates(p_ours, u), optax.apply_updates(p_theirs, v)
  np.testing.assert_allclose(p_ours, p_theirs, rtol=1e-5, atol=1e-6)
  assert not np.allclose(p_ours, optax.apply_updates(params, 0 * params))
