"""Unit tests of the shared tree and dtype helpers in gradtx/_internal/tree.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx._internal import names as _names
from gradtx._internal import tree as _tree

PARAMS = {
    "w": jnp.ones((2, 3), jnp.float32),
    "b": jnp.arange(3, dtype=jnp.bfloat16),
    "nested": [jnp.zeros((), jnp.float32), (jnp.full((1,), 2.0),)],
}


# --- compute_dtype ----------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,expected",
    [
        (jnp.bfloat16, jnp.float32),
        (jnp.float16, jnp.float32),
        (jnp.float32, jnp.float32),
        (jnp.int8, jnp.float32),
        (jnp.int32, jnp.float32),
        (jnp.bool_, jnp.float32),
        (jnp.complex64, jnp.complex64),
    ],
    ids=lambda d: jnp.dtype(d).name,
)
def test_compute_dtype_is_at_least_float32(dtype, expected):
  assert _tree.compute_dtype(jnp.zeros(2, dtype)) == jnp.dtype(expected)


def test_compute_dtype_of_python_and_numpy_scalars():
  assert _tree.compute_dtype(0.5) == jnp.float32
  assert _tree.compute_dtype(np.float16(1)) == jnp.float32


def test_compute_dtype_keeps_float64_under_x64():
  with jax.enable_x64(True):
    assert _tree.compute_dtype(jnp.zeros(2, jnp.float64)) == jnp.float64
    assert _tree.compute_dtype(jnp.zeros(2, jnp.bfloat16)) == jnp.float32


def test_compute_dtype_of_a_tracer():
  @jax.jit
  def f(x):
    assert _tree.compute_dtype(x) == jnp.float32
    return x.astype(_tree.compute_dtype(x))

  assert f(jnp.ones(2, jnp.bfloat16)).dtype == jnp.float32


# --- dtype_of / real_dtype / abs_sq ----------------------------------------


def test_dtype_of_arrays_abstract_leaves_and_numbers():
  assert _tree.dtype_of(jnp.ones(2, jnp.bfloat16)) == jnp.bfloat16
  assert _tree.dtype_of(jax.ShapeDtypeStruct((2,), jnp.complex64)) == jnp.complex64
  assert _tree.dtype_of(0.5) == jnp.float32


def test_real_dtype_and_abs_sq_of_complex():
  assert _tree.real_dtype(jnp.complex64) == jnp.float32
  assert _tree.real_dtype(jnp.bfloat16) == jnp.bfloat16
  z = jnp.array([1j, 1 + 1j, 3 - 4j], jnp.complex64)
  squared = _tree.abs_sq(z)
  assert squared.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(squared), np.abs(np.asarray(z)) ** 2)
  np.testing.assert_array_equal(_tree.abs_sq(jnp.array([-2.0])), [4.0])


# --- resolve_schedule -------------------------------------------


def test_resolve_schedule():
  count = jnp.asarray(3, jnp.int32)
  assert _tree.resolve_schedule(0.1, count) == 0.1
  array = jnp.asarray(0.2)
  assert _tree.resolve_schedule(array, count) is array
  schedule = optax.linear_schedule(1.0, 0.0, transition_steps=10)
  assert float(_tree.resolve_schedule(schedule, count)) == pytest.approx(0.7)
  assert _tree.resolve_schedule(lambda c: 2 * c, count) == 6


# --- map_leaves -------------------------------------------------------------


def test_map_leaves_returns_one_tree_per_output():
  a = {"x": jnp.ones(2), "y": jnp.full((3,), 2.0)}
  b = {"x": jnp.full(2, 3.0), "y": jnp.ones(3)}
  total, product = _tree.map_leaves(lambda u, v: (u + v, u * v), 2, a, b)
  chex.assert_trees_all_close(total, jax.tree.map(jnp.add, a, b))
  chex.assert_trees_all_close(product, jax.tree.map(jnp.multiply, a, b))


def test_map_leaves_single_output():
  (out,) = _tree.map_leaves(lambda u: (2 * u,), 1, {"x": jnp.ones(2)})
  chex.assert_trees_all_close(out, {"x": 2 * jnp.ones(2)})


def test_map_leaves_none_tree_contributes_none():
  seen = []

  def fn(g, m, v):
    seen.append(v)
    return g + m, None

  a = {"x": jnp.ones(2), "y": jnp.ones(1)}
  out, off = _tree.map_leaves(fn, 2, a, a, None)
  assert seen == [None, None]
  chex.assert_trees_all_close(out, jax.tree.map(lambda x: 2 * x, a))
  # A switched-off output comes back as a tree of Nones shaped like the input.
  assert jax.tree.leaves(off) == []
  assert jax.tree.structure(off) == jax.tree.structure({"x": None, "y": None})


def test_map_leaves_skips_none_and_masked_leaves_of_the_updates():
  calls = []

  def fn(g, m):
    calls.append(g.shape)
    return g + m, m

  updates = {"a": jnp.ones(2), "frozen": None, "masked": optax.MaskedNode()}
  state = {"a": jnp.ones(2), "frozen": None, "masked": optax.MaskedNode()}
  out, new_state = _tree.map_leaves(fn, 2, updates, state)
  assert calls == [(2,)]
  assert out["frozen"] is None and new_state["frozen"] is None
  assert out["masked"] == optax.MaskedNode()
  assert new_state["masked"] == optax.MaskedNode()
  chex.assert_trees_all_close(out["a"], 2 * jnp.ones(2))


def test_map_leaves_on_an_empty_tree():
  out, other = _tree.map_leaves(lambda g: (g, g), 2, {})
  assert out == {} and other == {}


def test_map_leaves_rejects_mismatched_structures():
  with pytest.raises(ValueError):
    _tree.map_leaves(lambda g, m: (g, m), 2, {"a": jnp.ones(2)}, {"b": jnp.ones(2)})


def test_map_leaves_under_jit_and_vmap():
  fn = lambda g, m: (g * m, g + m)
  trees = ({"x": jnp.arange(6.0).reshape(3, 2)}, {"x": jnp.ones((3, 2))})
  direct = _tree.map_leaves(fn, 2, *trees)
  jitted = jax.jit(lambda a, b: _tree.map_leaves(fn, 2, a, b))(*trees)
  vmapped = jax.vmap(lambda a, b: _tree.map_leaves(fn, 2, a, b))(*trees)
  chex.assert_trees_all_close(direct, jitted)
  chex.assert_trees_all_close(direct, vmapped)


# --- map_statistics / zeros_where ------------------------------------------


def _factors(p):
  return jnp.zeros(p.shape[:1]), jnp.zeros(p.shape[1:])


def test_map_leaves_once_per_shape_traces_each_shape_once():
  """Six leaves of two shapes: with ``once_per_shape`` the leaf function is
  traced under jit once per shape (two traces), without it once per leaf
  (six traces); the values
  are the same, and a static (non-array) argument per leaf is honoured."""
  tree = {f"a{i}": jnp.full((2, 3), float(i)) for i in range(4)}
  tree |= {f"b{i}": jnp.full((5,), float(i)) for i in range(2)}
  scales = {k: (2 if k.startswith("a") else 3) for k in tree}  # Python ints: static
  calls = []

  def leaf(x, scale):
    calls.append(x.shape)
    return (x * scale + 1,)

  def run(once):
    calls.clear()
    (out,) = jax.jit(lambda t: _tree.map_leaves(
        leaf, 1, t, scales, once_per_shape=once))(tree)
    return out, len(calls)

  shared, traced_shared = run(True)
  per_leaf, traced_per_leaf = run(False)
  assert (traced_shared, traced_per_leaf) == (2, 6)
  chex.assert_trees_all_equal(shared, per_leaf)
  np.testing.assert_array_equal(shared["a3"], 3.0 * 2 + 1)
  np.testing.assert_array_equal(shared["b1"], 1.0 * 3 + 1)


def test_map_leaves_once_per_shape_is_plain_eagerly():
  calls = []
  leaf = lambda x: (calls.append(1) or x + 1,)
  (out,) = _tree.map_leaves(leaf, 1, [jnp.ones(2), jnp.ones(2)], once_per_shape=True)
  assert len(calls) == 2  # called per leaf, no jit compiled per call
  np.testing.assert_array_equal(out[1], 2.0)


def test_map_statistics_collects_each_output_into_a_params_structured_tree():
  rows, cols = _tree.map_statistics(_factors, 2, {"w": jnp.ones((2, 3))})
  assert rows["w"].shape == (2,) and cols["w"].shape == (3,)


def test_map_statistics_passes_paths_when_asked():
  (names,) = _tree.map_statistics(
      lambda path, p: (jnp.zeros(len(_names.path_names(path))),), 1,
      {"a": {"b": jnp.ones(5)}}, with_path=True)
  assert names["a"]["b"].shape == (2,)  # the path's length, not the leaf's


def test_map_statistics_is_not_a_params_copy_for_tree_map_params():
  init = lambda p: {
      "copy": optax.tree.zeros_like(p),
      "stats": _tree.map_statistics(_factors, 2, p),
  }
  params = {"w": jnp.ones((2, 3)), "v": jnp.ones((4, 1))}
  marked = optax.tree_map_params(
      init, lambda _: "param", init(params), transform_non_params=lambda _: "other"
  )
  assert set(jax.tree.leaves(marked["copy"])) == {"param"}
  # One mark for the whole field: a prefix of the statistics tree.
  assert marked["stats"] == ("other", "other")


def test_map_statistics_unwraps_flax_variables():
  nnx = pytest.importorskip("flax.nnx")
  # (Sharding annotations are metadata like this one.)
  state = {"w": nnx.Param(jnp.ones((2, 3)), axes_note=("rows", "cols"))}
  rows, _ = _tree.map_statistics(_factors, 2, state)
  assert isinstance(rows["w"], jax.Array) and rows["w"].shape == (2,)
  copy = optax.tree.zeros_like(state)  # a copy keeps the metadata
  assert copy["w"].get_metadata()["axes_note"] == ("rows", "cols")


def test_zeros_where_masks_the_other_leaves():
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3, jnp.bfloat16)}
  zeros = _tree.zeros_where(params, lambda _, p: p.ndim == 1)
  assert isinstance(zeros["w"], optax.MaskedNode)
  assert zeros["b"].dtype == jnp.bfloat16 and not zeros["b"].any()
  zeros32 = _tree.zeros_where(params, lambda _, p: True, lambda p: jnp.float32)
  assert {x.dtype for x in jax.tree.leaves(zeros32)} == {jnp.dtype(jnp.float32)}


def test_rms_and_clipped_to_rms_by_hand():
  x = jnp.array([3.0 + 4.0j, 0.0])  # |x|² = 25, 0: RMS √12.5
  np.testing.assert_allclose(_tree.rms(x), np.sqrt(12.5), rtol=1e-6)
  y = jnp.array([3.0, -4.0])  # RMS √12.5 ≈ 3.54
  np.testing.assert_allclose(_tree.clipped_to_rms(y, 1.0), y / np.sqrt(12.5), rtol=1e-6)
  np.testing.assert_array_equal(_tree.clipped_to_rms(y, 10.0), y)  # under the limit


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4)])
def test_sum_squares_matches_numpy(shape):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  z = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
  np.testing.assert_allclose(_tree.sum_squares(x), np.sum(x.astype(np.float64) ** 2),
                             rtol=1e-6)
  total = _tree.sum_squares(z)
  assert total.dtype == jnp.float32  # real, the complex leaf's real dtype
  np.testing.assert_allclose(total, np.sum(np.abs(z.astype(np.complex128)) ** 2), rtol=1e-6)


def test_norm_is_the_root_of_the_sum_of_squares():
  np.testing.assert_allclose(_tree.norm(jnp.array([[3.0, 0.0], [0.0, 4.0]])), 5.0, rtol=1e-7)
  np.testing.assert_allclose(_tree.norm(jnp.array([3.0 + 4.0j])), 5.0, rtol=1e-7)


def test_sum_squares_and_rms_of_nothing_are_zero():
  assert float(_tree.sum_squares(jnp.zeros((0, 3)))) == 0.0
  assert float(_tree.rms(jnp.zeros((0,)))) == 0.0


def test_sum_squares_asks_for_full_precision():
  # A backend's reduced default matmul precision (TPU) must not reach a norm.
  with jax.default_matmul_precision("bfloat16"):
    text = jax.jit(_tree.sum_squares).lower(jnp.ones((4, 4))).as_text()
  assert "HIGHEST" in text
