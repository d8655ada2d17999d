"""scale_by_param_rms (transforms/param_scale.py): Tiger's per-tensor RMS step.

u ← RMS(p)·u for leaves with at least ``min_ndim`` dimensions, by hand.
(Zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax.numpy as jnp
import numpy as np
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
