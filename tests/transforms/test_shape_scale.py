"""Muon's shape scale (transforms/shape_scale.py) against its closed forms.

``"jordan"``: sqrt(max(1, fan_out/fan_in)); ``"moonlight"``:
0.2·sqrt(max(fan_in, fan_out)); ``None``: 1; an empty matrix: 1. (fan_in,
fan_out) are the (rows, cols) of the leaf's matrix view, written out by hand
here for a dense, a conv and attention kernels. (Argument checks, zero
gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from gradtx.transforms import shape_scale

CLOSED_FORMS = {
    "jordan": lambda fan_in, fan_out: math.sqrt(max(1.0, fan_out / fan_in)),
    "moonlight": lambda fan_in, fan_out: 0.2 * math.sqrt(max(fan_in, fan_out)),
    None: lambda fan_in, fan_out: 1.0,
}
# name: (shape, (fan_in, fan_out)), in flax's (in, out) layout.
LEAVES = {
    "dense": ((4, 16), (4, 16)),
    "tall": ((24, 6), (24, 6)),
    "conv": ((3, 3, 4, 8), (36, 8)),  # (kh, kw, in, out): rows kh·kw·in
    "query": ((16, 2, 4), (16, 8)),  # attention (in, heads, head_dim)
    "out": ((2, 4, 16), (8, 16)),  # attention output (heads, head_dim, out)
}


@pytest.mark.parametrize("scale", list(CLOSED_FORMS), ids=str)
@pytest.mark.parametrize("fans", [(4, 16), (16, 4), (5, 5), (1, 300)], ids=str)
def test_shape_scale_is_the_closed_form(scale, fans):
  assert shape_scale.shape_scale(scale, *fans) == pytest.approx(CLOSED_FORMS[scale](*fans))


@pytest.mark.parametrize("scale", list(CLOSED_FORMS), ids=str)
def test_empty_matrices_get_one(scale):
  assert shape_scale.shape_scale(scale, 0, 8) == 1.0
  assert shape_scale.shape_scale(scale, 8, 0) == 1.0


def test_jordan_is_the_reference_rule_in_torch_layout():
  """Keller Jordan's max(1, rows/cols)**0.5 on the (out, in) matrix."""
  for fan_in, fan_out in [(4, 16), (16, 4)]:
    rows, cols = fan_out, fan_in
    assert shape_scale.shape_scale("jordan", fan_in, fan_out) == max(1, rows / cols) ** 0.5


@pytest.mark.parametrize("bad", ["big", "Jordan", 1.0])
def test_unknown_scale_is_refused_even_for_an_empty_matrix(bad):
  for fans in [(4, 16), (0, 16)]:
    with pytest.raises(ValueError, match=r"scale must be one of \('jordan', 'moonlight'\)"):
      shape_scale.shape_scale(bad, *fans)


def _tree():
  rng = np.random.default_rng(0)
  tree = {
      "attention": {
          name: {"kernel": jnp.asarray(rng.normal(size=LEAVES[name][0]), jnp.float32)}
          for name in ("query", "out")
      },
      **{name: {"kernel": jnp.asarray(rng.normal(size=LEAVES[name][0]), jnp.float32)}
         for name in ("dense", "tall", "conv")},
  }
  tree["dense"]["bias"] = jnp.asarray(rng.normal(size=16), jnp.float32)
  tree["empty"] = {"kernel": jnp.zeros((0, 4))}
  return tree


@pytest.mark.parametrize("scale", list(CLOSED_FORMS), ids=str)
def test_each_matrix_view_is_scaled_by_its_closed_form(scale):
  grads = _tree()
  tx = gt.scale_by_matrix_shape(scale)
  updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
  for name in ("dense", "tall", "conv"):
    factor = CLOSED_FORMS[scale](*LEAVES[name][1])
    np.testing.assert_allclose(updates[name]["kernel"], factor * grads[name]["kernel"],
                               rtol=1e-6)
  for name in ("query", "out"):
    factor = CLOSED_FORMS[scale](*LEAVES[name][1])
    np.testing.assert_allclose(updates["attention"][name]["kernel"],
                               factor * grads["attention"][name]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], grads["dense"]["bias"])
  assert updates["empty"]["kernel"].shape == (0, 4)


def test_a_user_view_sets_the_fans():
  """A stacked view (3 matrices of 4 × 16): the fans of one matrix."""
  g = jnp.ones((3, 4, 16))
  tx = gt.scale_by_matrix_shape(
      "moonlight", matrix_view=lambda path, leaf: gt.MatrixView((1,), (2,), batch=(0,)))
  updates, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(updates, 0.2 * math.sqrt(16) * g, rtol=1e-6)
