"""Grafting: the magnitude's norm and the direction's direction, per leaf and per block."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx import transforms as gt
from gradtx.transforms import kronecker as kron


def test_graft_takes_the_norm_of_one_and_the_direction_of_the_other():
  g = {"w": jnp.asarray(np.random.default_rng(10).standard_normal((10, 6)), jnp.float32),
       "b": jnp.arange(1.0, 4.0)}
  scaled = optax.scale(3.0)
  tx = gt.graft(scaled, gt.scale_by_sign())
  u, _ = tx.update(g, tx.init(g))
  for name in g:
    ratio = np.linalg.norm(u[name]) / np.linalg.norm(3 * np.asarray(g[name]))
    assert abs(ratio - 1) < 1e-6
    np.testing.assert_array_equal(np.sign(u[name]), np.sign(g[name]))
  blocked = gt.graft(scaled, gt.scale_by_sign(), block_size=4)
  u, _ = blocked.update(g, blocked.init(g))
  layout = kron.block_layout(gt.MatrixView((0,), (1,)), (10, 6), 4, 4096)
  norms = np.linalg.norm(kron.to_blocks(u["w"], layout), axis=(1, 2))
  expected = np.linalg.norm(kron.to_blocks(3 * g["w"], layout), axis=(1, 2))
  np.testing.assert_allclose(norms, expected, rtol=1e-6)


def test_zero_direction_block_gives_zero_and_dtype_is_kept():
  w = np.ones((8, 4), np.float32)
  w[:4] = 0  # the first 4-row block has a zero direction
  g = {"w": jnp.asarray(w, jnp.bfloat16)}
  tx = gt.graft(optax.scale(2.0), optax.identity(), block_size=4)
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  assert u["w"].dtype == jnp.bfloat16
  u = np.asarray(u["w"], np.float32)
  np.testing.assert_array_equal(u[:4], 0)
  np.testing.assert_allclose(u[4:], 2.0, rtol=1e-2)
