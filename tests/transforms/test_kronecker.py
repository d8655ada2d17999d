"""Kronecker preconditioning: statistics, blocks, diagonal fallback, root refresh.

(Argument checks, zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from gradtx.transforms import kronecker as kron
from tests.oracles import runners
from tests.oracles.transcriptions import inverse_root
from tests.support import helpers


def test_blocks_round_trip_with_padding():
  layout = kron.block_layout(gt.MatrixView((0,), (1,)), (10, 7), block_size=4,
                             max_precondition_dim=100)
  assert (layout.row_blocks, layout.col_blocks) == (3, 2)
  assert (layout.block_rows, layout.block_cols) == (4, 4)
  x = jnp.arange(70.0).reshape(10, 7)
  blocks = kron.to_blocks(x, layout)
  assert blocks.shape == (6, 4, 4)
  np.testing.assert_array_equal(blocks[1, :, :3], x[:4, 4:])
  np.testing.assert_array_equal(kron.from_blocks(blocks, layout, x.shape), x)


_run = helpers.jit_updates


def test_blocks_are_preconditioned_independently():
  """Each 4×4 block of a 10×7 leaf follows Algorithm 1 on its own."""
  rng = np.random.default_rng(3)
  grads = rng.standard_normal((3, 10, 7))
  eps = 0.1
  with jax.enable_x64(True):
    tx = gt.kronecker_precondition(damping=eps, block_size=4)
    updates, _ = _run(tx, [jnp.asarray(g) for g in grads])
  padded = np.pad(grads, ((0, 0), (0, 2), (0, 1)))
  for r in range(3):
    for c in range(2):
      block = padded[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
      left, right = np.zeros((4, 4)), np.zeros((4, 4))
      for t, g in enumerate(block):
        left, right = left + g @ g.T, right + g.T @ g
        expected = inverse_root(left, 4, eps) @ g @ inverse_root(right, 4, eps)
        rows, cols = min(4, 10 - 4 * r), min(4, 7 - 4 * c)
        np.testing.assert_allclose(
            np.asarray(updates[t])[4 * r:4 * r + rows, 4 * c:4 * c + cols],
            expected[:rows, :cols], rtol=1e-10, atol=1e-12)


def test_side_above_max_precondition_dim_gets_the_identity():
  """(L + εI)^{-1/2} G: one factor, so the root is −1/2."""
  rng = np.random.default_rng(4)
  grads = rng.standard_normal((2, 3, 20))
  with jax.enable_x64(True):
    tx = gt.kronecker_precondition(damping=0.1, max_precondition_dim=8)
    updates, state = _run(tx, [jnp.asarray(g) for g in grads])
  # One stack of left statistics for the one 3x20 block shape, no right ones.
  assert state.right_stats == {} and set(state.left_stats) == {"3x20_left_float64"}
  left = grads[0] @ grads[0].T + grads[1] @ grads[1].T
  np.testing.assert_allclose(
      updates[1], inverse_root(left, 2, 0.1) @ grads[1], rtol=1e-10)


@pytest.mark.parametrize("shape", [(6,), (20, 30)], ids=["vector", "oversized"])
def test_diagonal_fallback(shape):
  rng = np.random.default_rng(5)
  grads = rng.standard_normal((3, *shape)).astype(np.float32)
  tx = gt.kronecker_precondition(precondition_b2=0.9, damping=1e-3, max_precondition_dim=8)
  updates, _ = _run(tx, [jnp.asarray(g) for g in grads])
  s = 0.9 * (0.9 * grads[0] ** 2 + grads[1] ** 2) + grads[2] ** 2
  np.testing.assert_allclose(updates[2], grads[2] / np.sqrt(s + 1e-3), rtol=1e-5)


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_zero_rank_deficient_and_high_rank_leaves_give_finite_updates(root_method):
  """eps = 0 (eigh) with zero and rank-one gradients, b2 < 1; 0-D to 4-D leaves."""
  params = {"zero": jnp.zeros((6, 5)), "rank1": jnp.zeros((16, 12)),
            "conv": jnp.zeros((3, 3, 4, 8)), "bias": jnp.zeros(7),
            "scalar": jnp.zeros(())}
  damping = dict(damping=0.0) if root_method == "eigh" else dict(
      damping=0.0, relative_damping=1e-6)
  tx = gt.kronecker_precondition(
      precondition_b2=0.9, block_size=8, root_method=root_method, **damping)
  rng = np.random.default_rng(6)
  grads = []
  for _ in range(4):
    g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    g["zero"] = jnp.zeros((6, 5))
    g["rank1"] = jnp.outer(jnp.arange(16.0), jnp.ones(12))
    grads.append(g)
  updates, _ = _run(tx, grads)
  for u in updates:
    for name, leaf in u.items():
      assert leaf.shape == params[name].shape
      assert np.isfinite(leaf).all(), name
  np.testing.assert_array_equal(updates[-1]["zero"], 0.0)


def test_roots_refresh_every_k_steps_in_one_trace():
  traces = []
  tx = gt.kronecker_precondition(precondition_b2=0.9, precondition_every=3)

  def step(g, state):
    traces.append(1)
    return tx.update(g, state)

  step = jax.jit(step)
  rng = np.random.default_rng(7)
  state = tx.init(jnp.zeros((4, 6)))
  roots = []
  for _ in range(7):
    _, state = step(jnp.asarray(rng.standard_normal((4, 6)), jnp.float32), state)
    roots.append(np.asarray(state.left_root["4x6"]))
  assert len(traces) == 1
  changed = [not np.array_equal(a, b) for a, b in zip(roots, roots[1:])]
  # Roots are computed at steps 1, 4 and 7, so they change going into 4 and 7.
  assert changed == [False, False, True, False, False, True]
  expected = inverse_root(np.asarray(state.left_stats["4x6"][0]), 4, 1e-6)
  assert runners.relative_error(roots[-1][0], expected) < 1e-4


def test_cpu_lowering_has_no_batched_lapack_calls():
  """jaxlib 0.10's batched CPU LAPACK kernels deadlock when several run at
  once (see ``matrix_roots.unbatched_on_cpu``): matrices go one at a time on CPU."""
  grads = {f"w{i}": jnp.ones((16, 24)) for i in range(4)}
  for tx in (gt.kronecker_precondition(block_size=8),
             gt.scale_by_soap(precondition_every=2)):
    text = jax.jit(tx.update).lower(grads, tx.init(grads)).as_text()
    assert "lapack_ssyevd_ffi" in text
    assert 'num_batch_dims = "0"' in text
    assert 'num_batch_dims = "1"' not in text and 'num_batch_dims = "2"' not in text


def test_newton_and_eigh_updates_agree():
  rng = np.random.default_rng(8)
  grads = [jnp.asarray(rng.standard_normal((12, 9)), jnp.float32) for _ in range(3)]
  by_eigh, _ = _run(gt.kronecker_precondition(damping=1e-3), grads)
  by_newton, _ = _run(gt.kronecker_precondition(damping=1e-3, root_method="newton"), grads)
  assert runners.relative_error(by_newton[-1], np.asarray(by_eigh[-1], np.float64)) < 1e-4


def test_statistics_a_nan_gradient_reached_give_nan_roots_not_stale_ones():
  """A root that fails on finite statistics keeps the previous one; once a
  NaN gradient has entered the statistics the roots show it (before: the
  step-1 roots were kept for good, and with int8 moments Shampoo then trained
  on a frozen preconditioner, silently)."""
  tx = gt.kronecker_precondition(precondition_every=2)
  params = {"w": jnp.ones((6, 4))}
  state = tx.init(params)
  g = {"w": jnp.arange(24.0).reshape(6, 4) / 24 + jnp.eye(6, 4)}
  _, state = tx.update(g, state)  # step 1: roots from finite statistics
  assert all(bool(jnp.isfinite(r).all()) for r in jax.tree.leaves(state.left_root))
  _, state = tx.update({"w": g["w"].at[2, 1].set(jnp.nan)}, state)
  _, state = tx.update(g, state)  # step 3: the roots are recomputed
  assert not any(bool(jnp.isfinite(r).all()) for r in jax.tree.leaves(state.left_root))


def test_statistics_of_another_block_size_are_refused_at_update_naming_it():
  """A checkpoint of block_size 16 restored (flax's from_bytes) into a block
  size 8 optimizer failed deep in an add of (2, 16, 16) and (2, 8, 8)."""
  from flax import serialization
  params = {"w": jnp.ones((16, 16)), "v": jnp.ones((16, 16))}
  saved = serialization.to_bytes(gt.kronecker_precondition(block_size=16).init(params))
  other = gt.kronecker_precondition(block_size=8)
  restored = serialization.from_bytes(other.init(params), saved)
  with pytest.raises(ValueError, match=r"left statistics' blocks of .* has shape \(16, 16\)"
                     r" but block_size, max_precondition_dim and the matrix view give \(8, 8\)"):
    other.update(params, restored, params)
