"""The 8-bit codec (dynamic map, block quantization) and stochastic bf16 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from gradtx.storage import quantize
from tests.oracles import transcriptions
from tests.support import helpers

# The code map ----------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_code_map_is_bitsandbytes_dynamic_map(signed):
  table = gt.dynamic_code_map(signed)
  np.testing.assert_allclose(table, transcriptions.bnb_dynamic_map(signed), rtol=1e-6)
  assert table.shape == (256,) and np.all(np.diff(table) > 0)
  assert np.count_nonzero(table == 0) == 1 and table[-1] == 1
  assert table[0] == (np.float32(-0.99296874) if signed else 0)


@pytest.mark.parametrize("signed", [True, False])
def test_dequantize_is_the_table_value_times_the_block_scale(signed):
  """bitsandbytes' dequantization, T[c] s_b, exactly (not to an ulp)."""
  x = np.random.default_rng(3).normal(size=(6, 256)).astype(np.float32)
  x = x if signed else np.abs(x)
  q = gt.quantize_blockwise(x, signed=signed, block_size=128)
  codes = np.asarray(q.codes).view(np.uint8).astype(np.int64)
  expected = gt.dynamic_code_map(signed)[codes] * np.asarray(q.scales)[..., None]
  np.testing.assert_array_equal(np.asarray(q.dequantize()), expected.reshape(6, 256))
  assert len(np.unique(codes)) > 100  # most of the map is exercised


# Quantize / dequantize ---------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_is_round_to_nearest(signed):
  """The table-lookup encoder equals a brute-force argmin over all 256 codes,
  except that on the unsigned map a positive value below half the smallest
  positive code takes that code, not zero."""
  rng = np.random.default_rng(0)
  magnitudes = 10 ** rng.uniform(-9, 0, 40 * 256)
  x = magnitudes * (rng.choice([-1.0, 1.0], magnitudes.size) if signed else 1)
  x = x.reshape(40, 256).astype(np.float32)
  q = gt.quantize_blockwise(x, signed=signed, block_size=128)
  index, scales = transcriptions.nearest_codes(x, gt.dynamic_code_map(signed), 128)
  if not signed:
    assert np.count_nonzero(index == 0) > 50  # nearest would store these as 0
    index = np.maximum(index, 1)
  np.testing.assert_array_equal(np.asarray(q.codes).view(np.uint8).reshape(-1, 128), index)
  np.testing.assert_array_equal(np.asarray(q.scales).reshape(-1), scales)


@pytest.mark.parametrize("signed", [True, False])
def test_values_at_and_beside_the_rounding_thresholds(signed):
  """Exact round-to-nearest where it is decided: at each midpoint between
  codes (a tie rounds toward zero) and one float32 step either side, against
  a search of the midpoints in numpy (on the unsigned map no positive value
  rounds to zero)."""
  table = gt.dynamic_code_map(signed)
  magnitudes = table[table >= 0]
  midpoints = ((magnitudes[:-1] + magnitudes[1:]) / 2).astype(np.float32)
  values = np.concatenate([midpoints, np.nextafter(midpoints, np.float32(0)),
                           np.nextafter(midpoints, np.float32(1)), magnitudes])
  values = np.concatenate([[1.0], values]).astype(np.float32)  # block max 1
  rank = np.searchsorted(midpoints, values, side="left")
  zero = int(np.flatnonzero(table == 0)[0])
  for sign in ((1, -1) if signed else (1,)):
    x = sign * values
    x[0] = 1.0
    q = gt.quantize_blockwise(x, signed=signed, block_size=x.size)
    # The signed map has no -1: the largest negative magnitudes take -0.99297.
    expected = zero + rank if sign > 0 else zero - np.minimum(rank, zero)
    if not signed:  # below the first midpoint a positive value keeps code 1
      expected = np.where(x > 0, np.maximum(expected, 1), expected)
    expected[0] = 255
    np.testing.assert_array_equal(np.asarray(q.codes).view(np.uint8)[0], expected)


def test_layout_padding_and_bytes():
  x = jnp.arange(1000.0).reshape(10, 100) - 500
  q = gt.quantize_blockwise(x, signed=True, block_size=256)
  assert q.codes.shape == (4, 256) and q.codes.dtype == jnp.int8
  assert q.scales.shape == (4,) and q.scales.dtype == jnp.float32
  assert q.shape == (10, 100) and q.dequantize().shape == (10, 100)
  assert sum(leaf.nbytes for leaf in jax.tree.leaves(q)) == 4 * 256 + 4 * 4
  # A positive block maximum comes back exactly; the signed map's most
  # negative code is -0.99297. Relative error elsewhere is small.
  y = np.asarray(q.dequantize())
  assert y[-1, -1] == 499 and y[0, 0] == np.float32(-0.99296874) * 500
  np.testing.assert_allclose(y, x, rtol=0.04, atol=1e-3 * 500)


@pytest.mark.parametrize("shape, codes", [
    ((4, 64, 512), (4, 64, 2, 256)),  # a stack of layers: layer and row axes kept
    ((64, 2048), (64, 8, 256)),  # rows kept
    ((4, 32, 384), (4, 48, 256)),  # a row is not whole blocks, a layer is
    ((1000, 16), (63, 256)),  # no sub-array is: flat, the last block padded
    ((2048,), (8, 256)),
    ((0, 256), (1, 256)),  # empty: one block of padding, as before
])
def test_codes_keep_the_leading_axes_that_are_whole_blocks(shape, codes):
  """The layout is a reshape of the flat one: the same blocks, codes and scales."""
  x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  q = gt.quantize_blockwise(x, signed=True)
  flat = gt.quantize_blockwise(x.reshape(-1), signed=True)
  assert q.codes.shape == codes and q.scales.shape == codes[:-1]
  np.testing.assert_array_equal(np.asarray(q.codes).reshape(-1, 256), flat.codes)
  np.testing.assert_array_equal(np.asarray(q.scales).reshape(-1), flat.scales)
  np.testing.assert_array_equal(q.dequantize(), flat.dequantize().reshape(shape))
  zeros = quantize.quantized_zeros(shape, signed=True)
  assert zeros.codes.shape == codes and zeros.scales.shape == codes[:-1]


def test_zero_round_trips_exactly_inside_a_busy_block():
  """An affine code map would not give exact zeros: that port diverged."""
  x = np.random.default_rng(1).normal(size=(8, 256)).astype(np.float32) * 1e3
  x[:, ::3] = 0
  for signed, values in ((True, x), (False, np.abs(x))):
    y = np.asarray(gt.quantize_blockwise(values, signed=signed).dequantize())
    assert np.all(y[:, ::3] == 0)
  for signed in (True, False):
    z = quantize.quantized_zeros((300,), signed=signed)
    assert np.all(np.asarray(z.dequantize()) == 0)


def test_second_moments_far_below_their_block_maximum_keep_the_smallest_code():
  """The dynamic map's range: the smallest unsigned code is 3.25e-7 of the
  block maximum. A v below half of it (a gradient ~2500x smaller than its
  block's largest) takes that code where nearest rounding (bitsandbytes'
  CUDA kernel) stores 0; only a zero stays zero."""
  v = np.array([1.0, 1.7e-7, 1.5e-7, 1e-30, 0.0], np.float32)
  y = np.asarray(gt.quantize_blockwise(v, signed=False).dequantize())
  np.testing.assert_allclose(y[1:4], 3.25e-7, rtol=1e-6)
  assert y[4] == 0


def test_blocks_whose_maximum_is_above_2_to_126_are_stored_as_zeros_on_cpu():
  """The documented limit: XLA divides by a block's scale as a product with
  its reciprocal, subnormal above 2^126 and flushed to zero on CPU (a fix
  cost the 8-bit step ~10% more compile). Below it the block keeps its
  maximum exactly."""
  for scale, kept in ((8e37, True), (2e38, False)):
    x = np.array([1.0, 0.5, -0.25, 0.0], np.float32) * np.float32(scale)
    y = np.asarray(jax.jit(lambda v: gt.quantize_blockwise(
        v, signed=True, block_size=4).dequantize())(x))
    assert (y[0] == x[0]) if kept else np.all(y == 0)


def test_rounding_never_flips_a_sign():
  x = np.random.default_rng(2).normal(size=4096).astype(np.float32)
  x *= 10.0 ** np.random.default_rng(3).uniform(-8, 0, 4096)
  y = np.asarray(gt.quantize_blockwise(x, signed=True).dequantize())
  assert np.all(y * x >= 0)


def test_non_finite_entries_stay_in_their_own_coordinate():
  x = np.linspace(-1, 1, 256, dtype=np.float32)
  poisoned = x.copy()
  poisoned[[3, 7, 11]] = [np.nan, np.inf, -np.inf]
  q = gt.quantize_blockwise(poisoned, signed=True)
  y = np.asarray(q.dequantize())
  assert np.isfinite(y).all() and float(q.scales[0]) == 1.0
  assert y[3] == 0 and y[7] == 1 and y[11] == np.float32(-0.99296874)
  clean = np.asarray(gt.quantize_blockwise(x, signed=True).dequantize())
  keep = np.setdiff1d(np.arange(256), [3, 7, 11])
  np.testing.assert_array_equal(y[keep], clean[keep])


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_quantized_state_is_a_shardable_pytree(axis_type):
  mesh = helpers.make_mesh(getattr(jax.sharding.AxisType, axis_type), (8,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x = jax.random.normal(jax.random.key(0), (64, 64))
  q = jax.device_put(gt.quantize_blockwise(x, signed=True), sharding)
  assert q.codes.sharding.is_equivalent_to(sharding, 2)
  requantized = jax.jit(
      lambda q: gt.quantize_blockwise(q.dequantize() * 2, signed=True)
  )(q)
  np.testing.assert_allclose(requantized.dequantize(), 2 * q.dequantize(), rtol=0.05, atol=1e-6)


# Stochastic rounding ---------------------------------------------------------


def test_stochastic_rounding_is_unbiased_and_brackets_the_value():
  x = jnp.full((1 << 16,), 1 + 2**-9 + 2**-11, jnp.float32)  # between bf16 steps
  r = np.asarray(gt.stochastic_round(x, 7).astype(jnp.float32))
  assert set(np.unique(r)) == {1.0, 1 + 2**-7}
  np.testing.assert_allclose(r.mean(), float(x[0]), rtol=1e-4)  # 7 sigma
  nearest = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32))
  assert abs(nearest.mean() - float(x[0])) > 1e-3  # round-to-nearest is biased


def test_stochastic_rounding_exact_values_and_specials():
  x = jnp.array([1.0, -2.5, 0.0, 3.0e38, jnp.inf, -jnp.inf, jnp.nan, 1e-30])
  r = np.asarray(gt.stochastic_round(x, 0).astype(jnp.float32))
  np.testing.assert_array_equal(r[:3], [1.0, -2.5, 0.0])
  assert r[4] == np.inf and r[5] == -np.inf and np.isnan(r[6])
  np.testing.assert_allclose(r[7], 1e-30, rtol=1e-2)


def test_stochastic_rounding_depends_only_on_the_seed():
  x = jax.random.normal(jax.random.key(0), (4096,))
  a, b, c = (gt.stochastic_round(x, s) for s in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_codes_and_scales_are_named_in_key_paths():
  """Path-based rules (shardings, filters) and orbax's names see ``.codes`` and
  ``.scales`` (they were flat indices 0 and 1)."""
  q = quantize.quantize_blockwise(jnp.ones((3, 300)), signed=True)
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(
      {"mu": q})[0]]
  assert paths == ["['mu'].codes", "['mu'].scales"]
  back = jax.tree_util.tree_unflatten(jax.tree.structure(q), jax.tree.leaves(q))
  np.testing.assert_array_equal(back.dequantize(), q.dequantize())
  assert (back.shape, back.signed) == (q.shape, q.signed)
