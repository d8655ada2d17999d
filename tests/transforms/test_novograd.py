"""gt.scale_by_novograd: one second moment per leaf (layer), started at ‖g₁‖²."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt


def test_first_two_steps_per_leaf():
  """v₁ = ‖g₁‖² (no (1 − β₂) factor: an Adam-style v₁ = (1−β₂)‖g₁‖² would
  give steps 1/√(1−β₂) = 1.15x larger here), then the EMA; each leaf its own."""
  b2, eps = 0.25, 1e-3
  g1 = {"w": np.array([[3.0, 0.0], [0.0, 4.0]]), "b": np.array([1.0, -1.0, 1.0])}
  g2 = {"w": np.array([[1.0, 2.0], [2.0, 0.0]]), "b": np.array([0.0, 0.5, 0.0])}
  tx = gt.scale_by_novograd(b2=b2, eps=eps)
  with jax.enable_x64(True):
    state = tx.init(jax.tree.map(jnp.zeros_like, g1))
    u1, state = tx.update(jax.tree.map(jnp.asarray, g1), state)
    u2, state = tx.update(jax.tree.map(jnp.asarray, g2), state)
  for k in g1:
    v1 = np.sum(g1[k] ** 2)
    v2 = b2 * v1 + (1 - b2) * np.sum(g2[k] ** 2)
    np.testing.assert_allclose(u1[k], g1[k] / (np.sqrt(v1) + eps), rtol=1e-14)
    np.testing.assert_allclose(u2[k], g2[k] / (np.sqrt(v2) + eps), rtol=1e-14)
    np.testing.assert_allclose(state.nu[k], v2, rtol=1e-14)
    assert state.nu[k].shape == ()


def test_eps_root_sits_inside_the_root():
  """OpenSeq2Seq's g/√(v + ε) is ``eps=0, eps_root=ε``."""
  g = jnp.array([0.003, 0.004])  # ‖g‖² = 2.5e-5
  tx = gt.scale_by_novograd(eps=0.0, eps_root=1e-5)
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u, g / np.sqrt(2.5e-5 + 1e-5), rtol=1e-6)


def test_state_is_one_float32_scalar_per_leaf_for_bf16_and_complex():
  params = {"w": jnp.zeros((4, 3), jnp.bfloat16), "z": jnp.zeros(2, jnp.complex64)}
  tx = gt.scale_by_novograd()
  state = tx.init(params)
  assert {k: (v.shape, v.dtype) for k, v in state.nu.items()} == {
      "w": ((), jnp.float32), "z": ((), jnp.float32)}
  grads = {"w": jnp.ones((4, 3), jnp.bfloat16), "z": jnp.array([3.0 + 4.0j, 0.0])}
  u, state = tx.update(grads, state)
  assert u["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(state.nu["z"], 25.0)  # Σ|z|²
  np.testing.assert_allclose(u["z"], grads["z"] / 5.0, rtol=1e-6)


def test_zero_gradients_give_zero_steps():
  tx = gt.scale_by_novograd()
  state = tx.init(jnp.ones(3))
  for _ in range(3):
    u, state = tx.update(jnp.zeros(3), state)
  assert bool(jnp.all(u == 0)) and bool(jnp.isfinite(state.nu))


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_non_finite_gradient_makes_its_whole_leaf_nan(bad):
  """A ±inf norm would otherwise zero the leaf's other coordinates silently."""
  tx = gt.scale_by_novograd()
  grads = {"w": jnp.ones(4).at[1].set(bad), "b": jnp.ones(2)}
  state = tx.init(grads)
  u, state = tx.update(grads, state)
  assert bool(jnp.all(jnp.isnan(u["w"]))) and bool(jnp.all(jnp.isfinite(u["b"])))
  u, _ = tx.update({"w": jnp.ones(4), "b": jnp.ones(2)}, state)  # v remembers it
  assert bool(jnp.all(jnp.isnan(u["w"])))


@pytest.mark.parametrize("kwargs, message", [
    (dict(b2=1.0), r"b2 must be in \[0, 1\), got 1.0"),
    (dict(eps=-1.0), r"eps must be in \[0, inf\)"),
    (dict(eps_root=float("nan")), r"eps_root must be in \[0, inf\)"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gt.scale_by_novograd(**kwargs)
