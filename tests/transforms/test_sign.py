"""Update rules of the sign transforms: sign, soft sign, Lion and Tiger.

(Argument checks, zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
