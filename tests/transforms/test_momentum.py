"""Update rules of the first-moment transforms: momentum and the EMA.

(Argument checks, zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.support import helpers

GRADS = [np.array([1.0, -2.0]), np.array([3.0, 0.5]), np.array([-1.0, 4.0])]


def _run(tx, grads=GRADS):
  updates, state = helpers.jit_updates(tx, [jnp.asarray(g, jnp.float32) for g in grads])
  return [np.asarray(u) for u in updates], state


# momentum --------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_heavy_ball_by_hand(nesterov):
  mu = 0.5
  m, expected = np.zeros(2), []
  for g in GRADS:
    m = mu * m + g
    expected.append(g + mu * m if nesterov else m)
  updates, state = _run(gt.momentum(mu, nesterov=nesterov))
  np.testing.assert_allclose(updates, expected, rtol=1e-6)
  np.testing.assert_allclose(state.mu, m, rtol=1e-6)


def test_heavy_ball_first_step_is_the_gradient():
  """m_0 = 0 reproduces torch's first step m_1 = g_1 (no dampening)."""
  (u, *_), _ = _run(gt.momentum(0.9))
  np.testing.assert_allclose(u, GRADS[0], rtol=1e-6)


def test_dampening_by_hand():
  """torch.optim.SGD's buffer: m₁ = g₁, then m ← μm + (1 − d)g."""
  mu, d = 0.9, 0.25
  m, expected = None, []
  for g in GRADS:
    m = g if m is None else mu * m + (1 - d) * g
    expected.append(m)
  updates, _ = _run(gt.momentum(mu, dampening=d))
  np.testing.assert_allclose(updates, expected, rtol=1e-6)


def test_zero_momentum_keeps_no_state_and_is_the_identity():
  tx = gt.momentum(0.0)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  assert state.mu is None and [x.shape for x in jax.tree.leaves(state)] == [()]
  g = {"w": jnp.array([1.0, -2.0, 3.0])}
  updates, new_state = tx.update(g, state)
  np.testing.assert_array_equal(updates["w"], g["w"])
  assert new_state.mu is None
  # dampening is ignored without momentum, as in torch.
  damped = gt.momentum(0.0, dampening=0.5)
  np.testing.assert_array_equal(
      damped.update(g, damped.init(params))[0]["w"], g["w"])
  # A non-zero momentum does keep a buffer (the switch-off is only static 0).
  assert gt.momentum(0.1).init(params).mu is not None


def test_momentum_bfloat16_buffer():
  tx = gt.momentum(0.9, mu_dtype=jnp.bfloat16)
  updates, state = _run(tx)
  ref, _ = _run(gt.momentum(0.9))
  assert state.mu.dtype == jnp.bfloat16
  assert all(u.dtype == np.float32 for u in updates)
  np.testing.assert_allclose(updates, ref, rtol=1e-2)


# ema -------------------------------------------------------------------------


def test_ema_by_hand():
  beta = 0.75
  m, expected = np.zeros(2), []
  for g in GRADS:
    m = beta * m + (1 - beta) * g
    expected.append(m)
  updates, state = _run(gt.ema(beta))
  np.testing.assert_allclose(updates, expected, rtol=1e-6)
  assert int(state.count) == 3


def test_ema_nesterov_by_hand():
  beta = 0.75
  m, expected = np.zeros(2), []
  for g in GRADS:
    m = beta * m + (1 - beta) * g
    expected.append(beta * m + (1 - beta) * g)
  updates, _ = _run(gt.ema(beta, nesterov=True))
  np.testing.assert_allclose(updates, expected, rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_ema_debias_of_a_constant_is_the_constant(nesterov):
  """Debiasing undoes the zero start: a constant gradient comes back as is.

  Without debias the EMA of a constant g is (1 − βᵗ)g.
  """
  beta, g = 0.9, np.array([2.0, -0.5])
  debiased, _ = _run(gt.ema(beta, nesterov=nesterov, debias=True), [g] * 4)
  np.testing.assert_allclose(debiased, [g] * 4, rtol=1e-6)
  raw, _ = _run(gt.ema(beta), [g] * 4)
  np.testing.assert_allclose(
      raw, [(1 - beta**t) * g for t in range(1, 5)], rtol=1e-6
  )


def test_ema_zero_decay_keeps_no_state():
  tx = gt.ema(0.0, debias=True)
  state = tx.init(jnp.ones(2))
  assert state.mu is None
  updates, state = _run(tx)
  np.testing.assert_allclose(updates, GRADS, rtol=0)
  assert int(state.count) == 3


def test_ema_bfloat16_average():
  updates, state = _run(gt.ema(0.9, debias=True, mu_dtype=jnp.bfloat16))
  ref, _ = _run(gt.ema(0.9, debias=True))
  assert state.mu.dtype == jnp.bfloat16
  np.testing.assert_allclose(updates, ref, rtol=1e-2)


def test_optax_ema_is_the_debiased_ema():
  """``optax.ema(β)`` debiases by default: it is ``gt.ema(β, debias=True)``."""
  grads = [jnp.asarray(g, jnp.float32) for g in GRADS]
  theirs = [np.asarray(u) for u in helpers.jit_updates(optax.ema(0.8), grads)[0]]
  np.testing.assert_allclose(_run(gt.ema(0.8, debias=True))[0], theirs, rtol=1e-6)
  assert not np.allclose(_run(gt.ema(0.8))[0][0], theirs[0])


def test_an_injected_zero_momentum_with_dampening_steps_the_gradient_as_torch():
  """torch.optim.SGD(momentum=0, dampening=d) steps g_t; a traced 0 keeps a
  buffer, which must be g_t itself, not (1 − d)·g_t from the second step."""
  import torch  # noqa: PLC0415

  grads = [np.array([1.0, -2.0, 3.0]) * 0.8**t for t in range(4)]
  w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
  reference = torch.optim.SGD([w], lr=1.0, momentum=0.0, dampening=0.5)
  tx = optax.inject_hyperparams(gt.momentum)(momentum=0.0, dampening=0.5)
  state = tx.init(jnp.zeros(3))
  for g in grads:
    before = w.detach().clone()
    w.grad = torch.tensor(g)
    reference.step()
    update, state = tx.update(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(update, (before - w.detach()).numpy(), rtol=1e-6)
