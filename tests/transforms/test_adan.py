"""Adan's moments (``scale_by_adan``) and its proximal decay, by hand and against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.oracles import problems, runners, transcriptions

B1, B2, B3 = 0.9, 0.8, 0.95


def _two_steps_by_hand(g1, g2, diff_weight):
  """u_2 of the Adan step with the difference weighted by ``diff_weight``
  in n and in u (β₂ in the official code and the paper, 1 − β₂ in optax)."""
  m = (1 - B1) * (B1 * g1 + g2)
  v = (1 - B2) * (g2 - g1)  # v_1 = 0: the first difference is 0
  n = B3 * (1 - B3) * g1**2 + (1 - B3) * (g2 + diff_weight * (g2 - g1)) ** 2
  numerator = m / (1 - B1**2) + diff_weight * v / (1 - B2**2)
  return numerator / np.sqrt(n / (1 - B3**2))


def test_second_step_weighs_the_difference_by_b2_as_the_official_code():
  g1, g2 = np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.25, -1.0])
  with jax.enable_x64(True):
    for tx, weight in ((gt.scale_by_adan(b1=B1, b2=B2, b3=B3, eps=0.0), B2),
                       (optax.scale_by_adan(B1, B2, B3, eps=0.0), 1 - B2)):
      state = tx.init(jnp.zeros(3))
      u1, state = tx.update(jnp.asarray(g1), state)
      u2, state = tx.update(jnp.asarray(g2), state)
      np.testing.assert_allclose(u1, np.sign(g1), rtol=1e-12)
      np.testing.assert_allclose(u2, _two_steps_by_hand(g1, g2, weight), rtol=1e-12)
    # The two weights give steps this far apart already at step 2.
    gap = _two_steps_by_hand(g1, g2, B2) / _two_steps_by_hand(g1, g2, 1 - B2)
    assert np.abs(gap - 1).max() > 0.1


def test_optax_adan_departs_from_the_official_step():
  """optax.adan (its decay, eps_root=0) against the official code: O(1)
  apart over 30 steps, where gradtx agrees to 1e-14 (tests/optimizers/test_adan.py)."""
  problem = problems.LogisticProblem(seed=3, steps=30)
  ref = transcriptions.adan_official(problem.params0, problem.grad, 30, 0.05)
  theirs = runners.run_gradtx(optax.adan(0.05, eps_root=0.0), problem.params0, problem.grad, 30)
  assert runners.trajectory_errors(theirs, ref)["params"] > 0.5


def test_eps_root_is_added_inside_the_root():
  """Step 1 (no difference yet, every moment bias-corrected to its first
  value): u = g/(√(g² + ε_root) + ε); ε_root = 1, ε = 0 gives g/√(g² + 1)."""
  g = jnp.array([0.5, -2.0, 0.0])
  tx = gt.scale_by_adan(eps=0.0, eps_root=1.0)
  u, _ = tx.update(g, tx.init(jnp.zeros(3)))
  np.testing.assert_allclose(u, g / jnp.sqrt(g**2 + 1.0), rtol=1e-6)


def test_state_fields_and_previous_gradient():
  tx = gt.scale_by_adan(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  state = tx.init(params)
  assert state.mu["w"].dtype == state.mu_diff["w"].dtype == state.nu["w"].dtype == jnp.bfloat16
  assert state.previous_grads["w"].dtype == jnp.float32  # the parameter's dtype
  grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.ones(3, jnp.bfloat16)}
  u, state = jax.jit(tx.update)(grads, state)
  assert u["b"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(state.previous_grads["w"], grads["w"])
  np.testing.assert_array_equal(state.mu_diff["w"], 0.0)  # δ_1 = 0
  assert int(state.count) == 1


def test_zero_gradients_give_zero_updates():
  tx = gt.scale_by_adan()
  params = jnp.ones((2, 2))
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update(jnp.zeros((2, 2)), state)
    np.testing.assert_array_equal(u, 0.0)
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))


def test_nan_gradient_propagates_with_float_moments():
  tx = gt.scale_by_adan()
  state = tx.init(jnp.zeros(3))
  _, state = tx.update(jnp.array([1.0, jnp.nan, 1.0]), state)
  u, state = tx.update(jnp.ones(3), state)
  u = np.asarray(u)
  assert np.isnan(u[1]) and np.isfinite(u[[0, 2]]).all()
  assert np.isnan(state.nu[1])


def test_int8_moments_skip_a_non_finite_coordinate():
  """A NaN gradient: zero update, fresh moments, the previous gradient kept
  (the next difference is taken from the last finite one)."""
  tx = gt.scale_by_adan(mu_dtype=gt.Int8Blocks(64, 0), nu_dtype=gt.Int8Blocks(64, 0))
  params = jnp.zeros(64)
  state = tx.init(params)
  g1 = jnp.linspace(-1.0, 1.0, 64)
  _, state = tx.update(g1, state)
  u, state = tx.update(g1.at[5].set(jnp.nan), state)
  assert u[5] == 0 and bool(jnp.isfinite(u).all())
  assert float(state.previous_grads[5]) == pytest.approx(float(g1[5]))


@pytest.mark.parametrize("kwargs", [dict(b1=1.0), dict(b2=-0.1), dict(b3=1.5),
                                    dict(eps=-1.0), dict(eps_root=float("nan"))])
def test_bad_arguments_are_refused_by_name(kwargs):
  (name,) = kwargs
  with pytest.raises(ValueError, match=f"^{name} must be in"):
    gt.scale_by_adan(**kwargs)


def test_proximal_weight_decay_divides_the_stepped_weights():
  eta, lam = 0.5, 0.4
  params = {"w": jnp.array([3.0, -2.0]), "b": jnp.array([1.0])}
  updates = {"w": jnp.array([1.0, 1.0]), "b": jnp.array([2.0])}
  tx = gt.proximal_weight_decay(learning_rate=eta, weight_decay=lam,
                                mask={"w": True, "b": False})
  u, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_allclose(params["w"] + u["w"],
                             (params["w"] - eta * updates["w"]) / (1 + eta * lam), rtol=1e-6)
  np.testing.assert_allclose(u["b"], -eta * updates["b"])  # masked out: the plain step
  # Cautious: w[1] (u·p < 0) gets the plain step.
  cautious = gt.proximal_weight_decay(learning_rate=eta, weight_decay=lam,
                                      cautious_weight_decay=True)
  u, _ = cautious.update(updates, cautious.init(params), params)
  np.testing.assert_allclose(u["w"], [(-eta * 1.0 - eta * lam * 3.0) / (1 + eta * lam),
                                      -eta * 1.0], rtol=1e-6)


def test_proximal_weight_decay_reads_schedules_at_the_step_count():
  eta = optax.linear_schedule(0.4, 0.1, 3)
  lam = lambda count: 0.5 + count
  tx = gt.proximal_weight_decay(learning_rate=eta, weight_decay=lam)
  p = jnp.array([2.0])
  state = tx.init(p)
  for t in range(3):
    u, state = tx.update(jnp.zeros(1), state, p)
    np.testing.assert_allclose(p + u, p / (1 + float(eta(t)) * lam(t)), rtol=1e-6)
    p = p + u


def test_proximal_weight_decay_needs_the_parameters():
  tx = gt.proximal_weight_decay(learning_rate=0.1, weight_decay=0.1)
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="^learning_rate must be"):
    gt.proximal_weight_decay(learning_rate=-1.0, weight_decay=0.1)
