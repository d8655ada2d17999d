"""gt.hyperball_step: the sphere's geometry in closed form (norms held per
matrix, the angle of a tangent step, zero cases); the optimizers built on it
are checked against Marin's code in tests/optimizers/test_hyperball.py."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt

RNG = np.random.default_rng(0)


def _step(tx, u, p, state=None):
  state = tx.init(p) if state is None else state
  updates, state = jax.jit(tx.update)(u, state, p)
  return optax.apply_updates(p, updates), state


def test_a_step_orthogonal_to_the_weights_turns_them_by_arctan_eta():
  with jax.enable_x64(True):
    p = jnp.asarray(RNG.normal(size=(5, 3)))
    u = jnp.asarray(RNG.normal(size=(5, 3)))
    u = u - jnp.vdot(u, p) / jnp.vdot(p, p) * p
    new, _ = _step(gt.hyperball_step(0.2), 7.0 * u, p)
    cos = jnp.vdot(new, p) / (jnp.linalg.norm(new) * jnp.linalg.norm(p))
    np.testing.assert_allclose(jnp.linalg.norm(new), jnp.linalg.norm(p), rtol=1e-14)
    np.testing.assert_allclose(jnp.arccos(cos), np.arctan(0.2), rtol=1e-12)


def test_norms_are_held_per_matrix_of_a_stack_and_per_plain_leaf():
  params = {"layers": {"kernel": jnp.asarray(RNG.normal(size=(3, 4, 5)), jnp.float32)},
            "vector": jnp.asarray(RNG.normal(size=(6,)), jnp.float32)}
  tx = gt.hyperball_step(optax.linear_schedule(0.3, 0.01, 50),
                         matrix_view=gt.stacked_matrix_view())
  norms = lambda p: (jnp.linalg.norm(p["layers"]["kernel"], axis=(1, 2)),
                     jnp.linalg.norm(p["vector"]))
  start, p, state = norms(params), params, None
  for _ in range(100):
    u = jax.tree.map(lambda x: jnp.asarray(RNG.normal(size=x.shape), x.dtype), p)
    p, state = _step(tx, u, p, state)
  for a, b in zip(norms(p), start):
    np.testing.assert_allclose(a, b, rtol=2e-5)
  assert not np.allclose(p["vector"], params["vector"], atol=0.1)


def test_zero_direction_and_zero_weights_give_zero_updates():
  tx = gt.hyperball_step(0.5)
  p = {"w": jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32), "z": jnp.zeros((2, 2))}
  with pytest.warns(UserWarning, match=r"\['z'\] start\(s\) at zero"):
    state = tx.init(p)
  updates, _ = tx.update({"w": jnp.zeros((4, 3)), "z": jnp.ones((2, 2))}, state, p)
  np.testing.assert_array_equal(updates["w"], 0.0)
  np.testing.assert_array_equal(updates["z"], 0.0)


def test_a_zero_initialised_matrix_is_warned_of_through_the_optimizers():
  """A zero-initialised projection (modded-nanogpt's) never moves on the
  sphere of radius 0: adamh and muonh say so at init, naming the leaf, and
  say nothing for non-zero weights or an abstract init."""
  from gradtx import optimizers as go
  params = {"fc": {"kernel": jnp.asarray(RNG.normal(size=(8, 16)), jnp.float32)},
            "c_proj": {"kernel": jnp.zeros((16, 8), jnp.float32)}}
  for tx in (go.adamh(0.02), go.muonh(0.02)):
    with pytest.warns(UserWarning, match=r"\['c_proj'\]\['kernel'\] start\(s\) at zero"):
      tx.init(params)
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      tx.init({"fc": params["fc"]})
      jax.eval_shape(tx.init, params)
      jax.jit(tx.init)(params)


def test_the_direction_scale_does_not_matter_and_bf16_stays_bf16():
  p = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
  u = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
  tx = gt.hyperball_step(0.1)
  a, _ = tx.update(u, tx.init(p), p)
  b, _ = tx.update(1e3 * u, tx.init(p), p)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  c, _ = tx.update(u.astype(jnp.bfloat16), tx.init(p), p.astype(jnp.bfloat16))
  assert c.dtype == jnp.bfloat16


def test_needs_params_and_a_valid_learning_rate():
  tx = gt.hyperball_step(0.1)
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="learning_rate must be"):
    gt.hyperball_step(-0.1)
