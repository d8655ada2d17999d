"""Block-wise 8-bit state, stochastic bf16 rounding, and the moments that use them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from gradtx.transforms import quantize
from tests import oracles

SMALL_INT8 = gt.Int8Blocks(block_size=64, min_size=0)


# The code map ----------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_code_map_is_bitsandbytes_dynamic_map(signed):
  table = gt.dynamic_code_map(signed)
  np.testing.assert_allclose(table, oracles.bnb_dynamic_map(signed), rtol=1e-6)
  assert table.shape == (256,) and np.all(np.diff(table) > 0)
  assert np.count_nonzero(table == 0) == 1 and table[-1] == 1
  assert table[0] == (np.float32(-0.99296874) if signed else 0)


@pytest.mark.parametrize("signed", [True, False])
def test_decoding_by_arithmetic_matches_the_table(signed):
  table = gt.dynamic_code_map(signed)
  decoded = np.asarray(quantize._decode(jnp.arange(256), signed))
  np.testing.assert_allclose(decoded, table, rtol=2e-7, atol=0)
  assert decoded[table == 0] == 0 and decoded[-1] == 1


# Quantize / dequantize ---------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_is_round_to_nearest(signed):
  """The table-lookup encoder equals a brute-force argmin over all 256 codes."""
  rng = np.random.default_rng(0)
  magnitudes = 10 ** rng.uniform(-9, 0, 40 * 256)
  x = magnitudes * (rng.choice([-1.0, 1.0], magnitudes.size) if signed else 1)
  x = x.reshape(40, 256).astype(np.float32)
  q = gt.quantize_blockwise(x, signed=signed, block_size=128)
  index, scales = oracles.nearest_codes(x, gt.dynamic_code_map(signed), 128)
  np.testing.assert_array_equal(np.asarray(q.codes).view(np.uint8), index)
  np.testing.assert_array_equal(q.scales, scales)


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


def test_second_moments_far_below_their_block_maximum_round_to_zero():
  """The dynamic map's range: the smallest unsigned code is 3.25e-7 of the
  block maximum, so a coordinate whose v is below 1.6e-7 of its block's
  largest v (a gradient ~2500x smaller) stores 0, as in bitsandbytes; its
  next step then divides by the fresh (1 - b2) g² alone."""
  v = np.array([1.0, 1.7e-7, 1.5e-7, 0.0], np.float32)
  y = np.asarray(gt.quantize_blockwise(v, signed=False).dequantize())
  np.testing.assert_allclose(y[1], 3.25e-7, rtol=1e-6)
  assert y[2] == 0 and y[3] == 0


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
  axis_types = (getattr(jax.sharding.AxisType, axis_type),)
  mesh = jax.make_mesh((8,), ("data",), axis_types=axis_types)
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


# State formats ---------------------------------------------------------------


@pytest.mark.parametrize("bad", ["int4", "float64x", jnp.int32, 3])
def test_unknown_state_dtypes_are_refused(bad):
  with pytest.raises(ValueError, match="mu_dtype must be"):
    gt.scale_by_adam(mu_dtype=bad)


def test_int8_format_arguments_are_validated():
  with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
    gt.Int8Blocks(block_size=0)
  with pytest.raises(ValueError, match="min_size"):
    gt.Int8Blocks(min_size=-1)


def test_int8_state_layout_and_small_leaves_stay_float32():
  params = {"big": jnp.zeros((64, 128), jnp.bfloat16), "small": jnp.zeros(10)}
  state = gt.scale_by_adam(mu_dtype="int8", nu_dtype=jnp.int8).init(params)
  for moment, signed in ((state.mu, True), (state.nu, False)):
    assert isinstance(moment["big"], gt.QuantizedArray)
    assert moment["big"].signed == signed and moment["big"].codes.shape == (32, 256)
    assert moment["small"].dtype == jnp.float32
  state = gt.ema(0.9, mu_dtype="int8").init(params)
  assert isinstance(state.mu["big"], gt.QuantizedArray)


# Adam with 8-bit and stochastic-bf16 moments ----------------------------------


def _grads(steps, shape, seed=0, zero_columns=False):
  g = jax.random.normal(jax.random.key(seed), (steps, *shape))
  g = g * jnp.logspace(-1, 0, shape[-1])  # columns of different scales
  return g.at[..., ::4].set(0.0) if zero_columns else g


def _updates(tx, grads, params=None):
  params = jnp.zeros_like(grads[0]) if params is None else params
  state, out = tx.init(params), []
  step = jax.jit(tx.update)
  for g in grads:
    u, state = step(g, state, params)
    out.append(np.asarray(u))
  return np.asarray(out), state


def test_int8_adam_tracks_float32_adam():
  grads = _grads(40, (32, 64))
  ref, _ = _updates(gt.scale_by_adam(), grads)
  low, state = _updates(gt.scale_by_adam(mu_dtype=SMALL_INT8, nu_dtype=SMALL_INT8), grads)
  assert isinstance(state.mu, gt.QuantizedArray) and low.dtype == np.float32
  # Per-step relative error of the update direction: a few percent.
  error = np.linalg.norm(low - ref, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2))
  assert error.max() < 0.05, error.max()
  # Stored moments agree with float32 Adam's to the map's precision.
  _, ref_state = _updates(gt.scale_by_adam(), grads)
  nu, ref_nu = np.asarray(state.nu.dequantize()), np.asarray(ref_state.nu)
  assert np.linalg.norm(nu - ref_nu) / np.linalg.norm(ref_nu) < 0.02


def test_zero_gradient_coordinates_get_exactly_zero_updates():
  """FIELD_NOTES: affinely quantised v made never-updated coordinates move."""
  grads = _grads(30, (32, 64), zero_columns=True)
  tx = gt.scale_by_adam(mu_dtype=SMALL_INT8, nu_dtype=SMALL_INT8, eps=1e-12)
  updates, state = _updates(tx, grads)
  assert np.all(updates[:, :, ::4] == 0)
  assert np.all(np.asarray(state.mu.dequantize())[:, ::4] == 0)
  assert np.all(np.asarray(state.nu.dequantize())[:, ::4] == 0)


def test_non_finite_gradient_resets_only_its_coordinate():
  """A NaN/inf gradient zeroes that coordinate's step and states; the rest of
  its block is exactly as if that gradient had been 0 (bitsandbytes' rule)."""
  grads = np.array(_grads(5, (4, 64)))
  grads[:, 1, 5] = 0.0  # so that "reset" and "g = 0" coincide
  poisoned, zeroed = grads.copy(), grads.copy()
  poisoned[4, 1, 5], poisoned[4, 2, 9] = np.nan, np.inf
  zeroed[4, 1, 5] = 0.0
  tx = gt.scale_by_adam(mu_dtype=SMALL_INT8, nu_dtype=SMALL_INT8, amsgrad=True)
  u_bad, s_bad = _updates(tx, jnp.asarray(poisoned))
  u_ref, _ = _updates(tx, jnp.asarray(zeroed))
  assert np.isfinite(u_bad).all()
  assert u_bad[4, 1, 5] == 0 and u_bad[4, 2, 9] == 0
  for moment in (s_bad.mu, s_bad.nu, s_bad.nu_max):
    values = np.asarray(moment.dequantize())
    assert np.isfinite(values).all() and values[1, 5] == 0
  np.testing.assert_array_equal(u_bad[4, 1], u_ref[4, 1])
  np.testing.assert_array_equal(u_bad[:4], u_ref[:4])


def test_stochastic_bf16_adam_is_reproducible_and_unbiased():
  grads = _grads(30, (16, 64))
  sr = gt.StochasticBfloat16()
  tx = gt.scale_by_adam(b2=0.999, mu_dtype=sr, nu_dtype=sr)
  a, state = _updates(tx, grads)
  b, _ = _updates(gt.scale_by_adam(b2=0.999, mu_dtype=sr, nu_dtype=sr), grads)
  np.testing.assert_array_equal(a, b)
  assert state.mu.dtype == jnp.bfloat16 and state.nu.dtype == jnp.bfloat16
  ref, ref_state = _updates(gt.scale_by_adam(b2=0.999), grads)
  np.testing.assert_allclose(a, ref, atol=3e-2)
  other, _ = _updates(gt.scale_by_adam(mu_dtype=gt.StochasticBfloat16(seed=1),
                                       nu_dtype=sr), grads)
  assert np.any(other != a)


def test_stochastic_rounding_keeps_a_slow_average_moving():
  """With b2 = 0.999 a bf16 nu rounded to nearest stalls once the increments
  fall below half an ulp; stochastic rounding keeps it right on average."""
  steps, exact = 1000, 1 - 0.999**1000
  tx_nearest = gt.scale_by_adam(b2=0.999, nu_dtype=jnp.bfloat16)
  tx_stochastic = gt.scale_by_adam(b2=0.999, nu_dtype=gt.StochasticBfloat16())
  params = jnp.zeros(4096)

  def final_nu(tx):
    def body(state, _):
      return tx.update(jnp.ones(4096), state, params)[1], None

    state, _ = jax.lax.scan(body, tx.init(params), None, length=steps)
    return float(state.nu.astype(jnp.float32).mean())

  assert abs(final_nu(tx_stochastic) / exact - 1) < 0.01
  assert final_nu(tx_nearest) / exact - 1 < -0.2


def test_int8_ema_tracks_float32_ema():
  grads = _grads(20, (32, 64))
  ref, _ = _updates(gt.ema(0.9, debias=True), grads)
  low, state = _updates(gt.ema(0.9, debias=True, mu_dtype=SMALL_INT8), grads)
  assert isinstance(state.mu, gt.QuantizedArray)
  error = np.linalg.norm(low - ref, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2))
  assert error.max() < 0.03, error.max()
  bad = np.array(grads)
  bad[3, 0, 0] = np.nan
  u, state = _updates(gt.ema(0.9, mu_dtype=SMALL_INT8), jnp.asarray(bad))
  assert np.isfinite(u).all() and np.isfinite(state.mu.dequantize()).all()


def test_default_dtypes_keep_plain_array_states():
  tx = gt.scale_by_adam()
  state = tx.init({"w": jnp.zeros((64, 128))})
  assert type(state.mu["w"]) is type(jnp.zeros(1))
  _, state = _updates(gt.scale_by_adam(), jnp.full((2, 3), jnp.nan))
  assert np.isnan(state.mu).all()  # float state: NaN propagates, as in optax


def test_int8_state_survives_jit_donation_and_optax_wrappers():
  params = {"w": jnp.ones((64, 128))}
  tx = optax.MultiSteps(
      optax.chain(gt.scale_by_adam(mu_dtype="int8", nu_dtype="int8"),
                  optax.scale(-1e-2)),
      every_k_schedule=2,
  )
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
  for _ in range(4):
    u, state = step(params, state, params)
  assert np.isfinite(u["w"]).all() and float(jnp.abs(u["w"]).max()) > 0
