"""Running a per-matrix function over the matrix views of a tree's leaves.

The matrix transforms (Newton–Schulz, singular-value clipping) see each leaf
through its ``MatrixView`` as a stack of matrices, turn every matrix wide
(rows ≤ cols), and call one batched function per group of same-shape
matrices: one call for many small matrices instead of one each.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from gradtx._internal import sharding as _sharding


def _hermitian(x: jax.Array) -> jax.Array:
  return jnp.conj(jnp.swapaxes(x, -1, -2))


def map_matrices(
    fn: Callable[[jax.Array], jax.Array],
    leaves: Sequence[jax.Array],
    views: Sequence[Optional[object]],
    *,
    stack: bool,
) -> list:
  """``fn`` applied to every matrix of every leaf with a view.

  ``fn`` maps a (num_matrices, rows, cols) stack with rows ≤ cols to an
  array of the same shape; a tall matrix is transposed (conjugated, for
  complex) before and after. With ``stack``, the wide matrices of all leaves
  that share a (rows, cols, dtype) go to ``fn`` in one stack; otherwise each
  leaf is one call. Leaves without a view come back unchanged.
  """
  out = list(leaves)
  groups: dict = {}
  for i, (leaf, view) in enumerate(zip(leaves, views)):
    if view is None:
      continue
    # On an Explicit mesh a reshape across sharded axes is refused: the
    # matrices are gathered here and the result given the leaf's sharding.
    matrices = view.to_matrices(_sharding.gather(leaf))
    tall = matrices.shape[1] > matrices.shape[2]
    if tall:
      matrices = _hermitian(matrices)
    key = (matrices.shape[1:], matrices.dtype) if stack else i
    groups.setdefault(key, []).append((i, matrices, tall))
  for members in groups.values():
    if len(members) == 1:
      results = [fn(members[0][1])]
    else:
      stacked = jnp.concatenate([m for _, m, _ in members])
      sizes = [m.shape[0] for _, m, _ in members]
      results = jnp.split(fn(stacked), list(_cumulative(sizes)))
    for (i, _, tall), result in zip(members, results):
      result = _hermitian(result) if tall else result
      leaf = leaves[i]
      out[i] = _sharding.reshard_like(
          views[i].from_matrices(result, leaf.shape).astype(leaf.dtype), leaf)
  return out


def _cumulative(sizes: Sequence[int]) -> list:
  total, cuts = 0, []
  for size in sizes[:-1]:
    total += size
    cuts.append(total)
  return cuts
