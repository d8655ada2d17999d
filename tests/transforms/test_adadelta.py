"""gt.scale_by_adadelta: its two running averages, step by step, and its edges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt


def test_two_steps_follow_zeilers_algorithm_1():
  """E[Δx²] accumulates the step before it is used: the second step's
  numerator is √((1−ρ)Δ₁² + ε), not √ε (a wrong order gives 1e-3 here)."""
  rho, eps = 0.8, 1e-4
  g1, g2 = np.array([0.5, -2.0]), np.array([0.1, 3.0])
  tx = gt.scale_by_adadelta(decay=rho, eps=eps)
  with jax.enable_x64(True):
    state = tx.init(jnp.zeros(2, jnp.float64))
    u1, state = tx.update(jnp.asarray(g1), state)
    u2, state = tx.update(jnp.asarray(g2), state)
  v1 = (1 - rho) * g1**2
  d1_step = np.sqrt(eps) / np.sqrt(v1 + eps) * g1
  d1 = (1 - rho) * d1_step**2
  v2 = rho * v1 + (1 - rho) * g2**2
  d2_step = np.sqrt(d1 + eps) / np.sqrt(v2 + eps) * g2
  np.testing.assert_allclose(u1, d1_step, rtol=1e-14)
  np.testing.assert_allclose(u2, d2_step, rtol=1e-14)
  np.testing.assert_allclose(state.nu, v2, rtol=1e-14)
  np.testing.assert_allclose(state.delta_nu, rho * d1 + (1 - rho) * d2_step**2, rtol=1e-14)


def test_zero_gradients_give_zero_steps_and_finite_state():
  tx = gt.scale_by_adadelta()
  state = tx.init({"w": jnp.ones((3, 2))})
  for _ in range(3):
    u, state = tx.update({"w": jnp.zeros((3, 2))}, state)
  assert bool(jnp.all(u["w"] == 0))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def test_complex_gradients_share_one_real_moment():
  """|g|² = g·conj(g): a complex g moves like a real one of the same modulus."""
  tx = gt.scale_by_adadelta()
  g = jnp.array([3.0 + 4.0j, -1.0j])
  u, state = tx.update(g, tx.init(jnp.zeros(2, jnp.complex64)))
  real_u, _ = tx.update(jnp.abs(g), tx.init(jnp.zeros(2)))
  assert state.nu.dtype == jnp.float32 and state.delta_nu.dtype == jnp.float32
  np.testing.assert_allclose(u, real_u * g / jnp.abs(g), rtol=1e-6)


def test_nan_propagates_with_float_state_and_resets_with_int8():
  g = jnp.linspace(-1.0, 1.0, 64).at[5].set(jnp.nan)
  tx = gt.scale_by_adadelta()
  u, state = tx.update(g, tx.init(jnp.zeros(64)))
  assert bool(jnp.isnan(u[5])) and bool(jnp.isnan(state.nu[5]))
  assert int(jnp.isnan(u).sum()) == 1
  tx8 = gt.scale_by_adadelta(nu_dtype=gt.Int8Blocks(64, 0))
  u8, state8 = tx8.update(g, tx8.init(jnp.zeros(64)))
  assert float(u8[5]) == 0.0 and bool(jnp.all(jnp.isfinite(u8)))
  assert isinstance(state8.nu, gt.QuantizedArray)
  np.testing.assert_allclose(np.delete(u8, 5), np.delete(u, 5), rtol=2e-2)


def test_nu_dtype_stores_both_averages():
  tx = gt.scale_by_adadelta(nu_dtype=jnp.bfloat16)
  _, state = tx.update(jnp.ones(4), tx.init(jnp.zeros(4)))
  assert state.nu.dtype == jnp.bfloat16 and state.delta_nu.dtype == jnp.bfloat16


@pytest.mark.parametrize("kwargs, message", [
    (dict(decay=1.0), r"decay must be in \[0, 1\), got 1.0"),
    (dict(decay=-0.1), r"decay must be in \[0, 1\)"),
    (dict(eps=-1e-6), r"eps must be in \[0, inf\)"),
    (dict(nu_dtype="int4"), r"nu_dtype must be"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gt.scale_by_adadelta(**kwargs)
