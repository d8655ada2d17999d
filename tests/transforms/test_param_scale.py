"""transforms/param_scale.py: per-leaf RMS steps (Tiger, Adafactor) and RMS clipping.

u ← max(RMS(p), s)·u for leaves with at least ``min_ndim`` dimensions, and
u ← u / max(1, RMS(u)/d), by hand and against optax's Adafactor pieces.
(Zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt

PARAMS = {"w": jnp.array([[3.0, -1.0], [1.0, 3.0]]), "b": jnp.array([0.0, 2.0]),
          "conv": jnp.full((2, 2, 1, 2), -0.5)}
UPDATES = {"w": jnp.array([[1.0, 2.0], [-1.0, 0.5]]), "b": jnp.array([1.0, -1.0]),
           "conv": jnp.ones((2, 2, 1, 2))}


def test_matrices_are_scaled_by_their_rms_and_vectors_pass_through():
  tx = gt.scale_by_param_rms()
  out, _ = tx.update(UPDATES, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(out["w"], np.sqrt(5.0) * UPDATES["w"], rtol=1e-6)  # RMS √5
  np.testing.assert_allclose(out["conv"], 0.5 * UPDATES["conv"], rtol=1e-6)
  np.testing.assert_array_equal(out["b"], UPDATES["b"])


def test_min_ndim_selects_the_scaled_leaves():
  tx = gt.scale_by_param_rms(min_ndim=1)
  out, _ = tx.update(UPDATES, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(out["b"], np.sqrt(2.0) * UPDATES["b"], rtol=1e-6)
  only_4d = gt.scale_by_param_rms(min_ndim=3)
  out, _ = only_4d.update(UPDATES, only_4d.init(PARAMS), PARAMS)
  np.testing.assert_array_equal(out["w"], UPDATES["w"])
  np.testing.assert_allclose(out["conv"], 0.5 * UPDATES["conv"], rtol=1e-6)


def test_bfloat16_params_are_averaged_in_float32():
  p = jnp.full((4, 4), 3.0, jnp.bfloat16)
  tx = gt.scale_by_param_rms()
  out, _ = tx.update(jnp.ones((4, 4), jnp.bfloat16), tx.init(p), p)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out, np.float32), 3.0)


def test_needs_params():
  tx = gt.scale_by_param_rms()
  with pytest.raises(ValueError, match="scale_by_param_rms needs params"):
    tx.update(UPDATES, tx.init(PARAMS))


def test_tiger_with_param_rms_scaling_scales_its_matrix_steps():
  """go.tiger(param_rms_scaling=True): the sign step of a matrix leaf times
  RMS(p), a vector's unchanged (one step, no decay: u = −η RMS(p) sign(g))."""
  grads = {"w": jnp.array([[0.5, -2.0], [1.0, 0.1]]), "b": jnp.array([-1.0, 3.0])}
  params = {"w": PARAMS["w"], "b": PARAMS["b"]}
  tx = go.tiger(0.1, param_rms_scaling=True)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * np.sqrt(5.0) * np.sign(grads["w"]),
                             rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -0.1 * np.sign(grads["b"]), rtol=1e-6)


def test_min_scale_floors_the_factor():
  p = {"small": jnp.full((3, 3), 1e-4), "big": jnp.full((3, 3), 2.0)}
  u = {"small": jnp.ones((3, 3)), "big": jnp.ones((3, 3))}
  tx = gt.scale_by_param_rms(min_scale=1e-3)
  out, _ = tx.update(u, tx.init(p), p)
  np.testing.assert_allclose(out["small"], 1e-3, rtol=1e-6)  # RMS 1e-4 < s
  np.testing.assert_allclose(out["big"], 2.0, rtol=1e-6)


def _random_tree(seed):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = {"w": (6, 5), "b": (5,), "conv": (3, 3, 2, 4), "zero": (4,)}
  tree = {k: jax.random.normal(key, s) for key, (k, s) in zip(keys, shapes.items())}
  tree["zero"] = jnp.zeros(4)
  return tree


def test_adafactor_form_is_optax_scale_by_param_block_rms():
  params, updates = _random_tree(0), _random_tree(1)
  params["tiny"], updates["tiny"] = jnp.full((2, 2), 1e-5), jnp.ones((2, 2))
  ours = gt.scale_by_param_rms(min_ndim=0, min_scale=1e-3)
  theirs = optax.scale_by_param_block_rms(1e-3)
  got, _ = jax.jit(ours.update)(updates, ours.init(params), params)
  want, _ = theirs.update(updates, theirs.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


@pytest.mark.parametrize("threshold", [0.5, 1.0, 100.0])
def test_clip_by_block_rms_is_optax_and_the_closed_form(threshold):
  updates = _random_tree(2)
  updates["w"] = 30.0 * updates["w"]  # far above the threshold
  tx = gt.clip_by_block_rms(threshold)
  got, _ = jax.jit(tx.update)(updates, tx.init(updates))
  want, _ = optax.clip_by_block_rms(threshold).update(updates, optax.EmptyState())
  for k, u in updates.items():
    u = np.asarray(u, np.float64)
    rms = np.sqrt(np.mean(u**2))
    np.testing.assert_allclose(got[k], u / max(1.0, rms / threshold), rtol=1e-6)
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    assert np.sqrt(np.mean(np.asarray(got[k], np.float64) ** 2)) <= threshold * (1 + 1e-6)


def test_clip_by_block_rms_keeps_bfloat16_and_zeros():
  u = {"w": jnp.full((4, 4), 8.0, jnp.bfloat16), "z": jnp.zeros((4,), jnp.bfloat16)}
  out, _ = gt.clip_by_block_rms(2.0).update(u, optax.EmptyState())
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out["w"], np.float32), 2.0)
  np.testing.assert_array_equal(np.asarray(out["z"], np.float32), 0.0)
