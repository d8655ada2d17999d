"""map_matrices (gradtx/_internal/matrix_stacks.py): wide stacks, groups, round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from gradtx._internal import matrix_stacks

V = gt.MatrixView
LEAVES = [jnp.arange(24.0).reshape(4, 6), jnp.arange(24.0).reshape(6, 4) + 1,
          jnp.arange(48.0).reshape(2, 4, 6) - 3, jnp.ones(5)]
VIEWS = [V((0,), (1,)), V((0,), (1,)), V((1,), (2,), batch=(0,)), None]


def _recording(calls):
  def fn(stack):
    calls.append(stack.shape)
    return 2 * stack + 1  # any per-matrix function of the (rows ≤ cols) stack
  return fn


@pytest.mark.parametrize("stack", [False, True])
def test_each_matrix_is_mapped_once_and_reshaped_back(stack):
  calls = []
  out = matrix_stacks.map_matrices(_recording(calls), LEAVES, VIEWS, stack=stack)
  for leaf, view, result in zip(LEAVES, VIEWS, out):
    assert result.shape == leaf.shape and result.dtype == leaf.dtype
    if view is None:
      assert result is leaf
    else:
      np.testing.assert_array_equal(result, 2 * leaf + 1)
  assert all(rows <= cols for _, rows, cols in calls)  # tall ones are transposed
  # Stacked: the four 4x6 matrices (one transposed) in one call; else one per leaf.
  assert sorted(calls) == ([(4, 4, 6)] if stack else [(1, 4, 6), (1, 4, 6), (2, 4, 6)])


def test_tall_matrices_reach_fn_transposed():
  seen = []

  def fn(stack):
    seen.append(np.asarray(stack))
    return stack

  tall = jnp.arange(6.0).reshape(3, 2)
  (out,) = matrix_stacks.map_matrices(fn, [tall], [V((0,), (1,))], stack=False)
  np.testing.assert_array_equal(seen[0][0], np.asarray(tall).T)
  np.testing.assert_array_equal(out, tall)


def test_complex_tall_matrices_are_conjugate_transposed():
  seen = []
  z = jnp.array([[1 + 2j], [3 - 1j]], jnp.complex64)
  matrix_stacks.map_matrices(lambda s: seen.append(np.asarray(s)) or s, [z],
                             [V((0,), (1,))], stack=False)
  np.testing.assert_array_equal(seen[0][0], np.conj(np.asarray(z)).T)


def test_groups_differ_by_shape_and_dtype():
  calls = []
  leaves = [jnp.ones((2, 3)), jnp.ones((2, 3), jnp.bfloat16), jnp.ones((2, 5))]
  out = matrix_stacks.map_matrices(_recording(calls), leaves, [V((0,), (1,))] * 3, stack=True)
  assert sorted(calls) == [(1, 2, 3), (1, 2, 3), (1, 2, 5)]
  assert [o.dtype for o in out] == [jnp.float32, jnp.bfloat16, jnp.float32]


def test_under_jit():
  fn = lambda leaves: matrix_stacks.map_matrices(
      lambda s: s @ jnp.swapaxes(s, -1, -2) @ s, leaves, VIEWS, stack=True)
  eager, jitted = fn(LEAVES), jax.jit(fn)(LEAVES)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-6)
