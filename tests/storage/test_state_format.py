"""State formats (gradtx/storage/state_format.py): int8 blocks and stochastic bf16
in the moments."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.support import helpers

SMALL_INT8 = gt.Int8Blocks(block_size=64, min_size=0)


# State formats ---------------------------------------------------------------


def test_int8_format_arguments_are_validated():
  with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
    gt.Int8Blocks(block_size=0)
  with pytest.raises(ValueError, match="min_size"):
    gt.Int8Blocks(min_size=-1)


@pytest.mark.parametrize("seed", ["x", None, [1], 1.5, -1, True])
def test_stochastic_rounding_seed_is_validated(seed):
  """A string or list was taken and failed inside the first update
  (TypeError from its arithmetic); 1.5 was taken silently."""
  with pytest.raises(ValueError, match="seed must be an integer >= 0"):
    gt.StochasticBfloat16(seed=seed)
  assert gt.StochasticBfloat16(seed=3).seed == 3


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
  out, state = helpers.jit_updates(tx, list(grads), params)
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


def test_int8_state_path_is_traced_once_per_shape():
  # The codes' encode and decode (table gathers) appear once per distinct
  # shape in the lowered update, however many leaves share the shape.
  def gathers(per_shape):
    tree = {f"w{i}": jnp.zeros((64, 128)) for i in range(per_shape)}
    tx = gt.scale_by_adam(mu_dtype=SMALL_INT8, nu_dtype=SMALL_INT8)
    text = jax.jit(tx.update).lower(tree, tx.init(tree), tree).as_text()
    return text.count("stablehlo.gather")

  assert gathers(2) == gathers(8) > 0


# Narrow float states in a donated step ---------------------------------------

_BF16_DONATED = {
    "adamw": (lambda: gt.scale_by_adam(), optax.scale_by_adam),
    "adagrad": (lambda: gt.scale_by_adagrad(), lambda: optax.scale_by_rss(0.0)),
    "rmsprop_centered": (lambda: gt.scale_by_rms(centered=True),
                         lambda: optax.scale_by_stddev()),
    "adabelief": (lambda: gt.scale_by_belief(), optax.scale_by_belief),
    "ademamix": (lambda: gt.scale_by_ademamix(), lambda: optax.contrib.scale_by_ademamix(
        0.9, 0.999, 0.9999, 5.0)),
    "nesterov": (lambda: gt.momentum(0.9, nesterov=True),
                 lambda: optax.trace(0.9, nesterov=True)),
    "ema": (lambda: gt.ema(0.9, debias=True), lambda: optax.ema(0.9)),
    "factored": (lambda: gt.scale_by_factored_rms(min_dim_size_to_factor=32),
                 lambda: optax.scale_by_factored_rms(min_dim_size_to_factor=32)),
    "amsgrad": (lambda: gt.scale_by_adam(amsgrad=True), optax.scale_by_amsgrad),
    # Tiger keeps one EMA and steps its sign: the memory of optax's EMA.
    "tiger": (lambda: gt.scale_by_tiger(0.965), lambda: optax.ema(0.965, debias=False)),
}


def _donated_step_copies(tx, params):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, tx.init(params), params).compile()
  return compiled.as_text().count(" copy("), compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", list(_BF16_DONATED))
def test_bf16_moments_are_not_copied_in_a_donated_step(name):
  """The step uses the moment as stored (read back from bf16): computed from
  the float32 value, XLA recomputed it after the donated state buffer was
  overwritten, so it copied every moment first (a bf16 AdamW step's peak was
  1.5x optax's). Now no copies, and no more temporary memory than optax's."""
  params = {f"w{i}": jnp.ones((128, 64), jnp.bfloat16) * (i + 1) for i in range(3)}
  ours, theirs = (make() for make in _BF16_DONATED[name])
  copies, temp = _donated_step_copies(ours, params)
  _, optax_temp = _donated_step_copies(theirs, params)
  float32_copies, _ = _donated_step_copies(
      ours, jax.tree.map(lambda p: p.astype(jnp.float32), params))
  assert copies <= float32_copies  # no state buffer (a float32 step keeps them in place)
  assert temp <= optax_temp + 1024


# ADOPT normalizes by the previous v and Adan differences the previous gradient:
# both read a state buffer they overwrite, and copy it, as optax's do.
_NO_COPY_OPTIMIZERS = ("adamax", "adamaxw", "radam", "radamw", "yogi", "sm3", "adadelta",
                       "novograd", "fromage", "schedule_free_sgd", "schedule_free_adamw")


@pytest.mark.parametrize(
    "name", list(_BF16_DONATED) + ["lion", "adabelief_optimizer", *_NO_COPY_OPTIMIZERS])
def test_float32_donated_steps_copy_no_state_buffer(name):
  """No array (state buffer) copy in a float32 donated step either: AdaBelief
  recomputed (β₂s + (1−β₂)(g−m)²) + ε from the donated s after overwriting it,
  Lion read the old m for its direction, and Schedule-Free's step read the old
  z, so they copied every buffer each step (as optax's do; a scalar count's
  copies are not counted)."""
  make = {"lion": lambda: gt.scale_by_lion(),
          "adabelief_optimizer": lambda: optax.chain(gt.scale_by_belief(),
                                                    optax.scale(-1e-3)),
          **{n: lambda n=n: getattr(go, n)(1e-3) for n in _NO_COPY_OPTIMIZERS}}.get(
      name, _BF16_DONATED.get(name, (None,))[0])
  params = {f"w{i}": jnp.ones((128, 64), jnp.float32) * (i + 1) for i in range(3)}
  tx = make()

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  text = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, tx.init(params), params).compile().as_text()
  assert not re.findall(r"= \w+\[\d[^\]]*\]\S* copy\(", text)


def test_psgd_kron_bf16_momentum_is_not_copied_in_a_donated_step():
  """PSGD Kron's owners step from m_t as stored: from the float32 m_t, each
  bf16 momentum buffer was copied (3 more copies than the float32 step)."""
  params = {f"w{i}": jnp.ones((128, 64), jnp.bfloat16) * (i + 1) for i in range(3)}
  tx = gt.scale_by_psgd_kron()
  copies, temp = _donated_step_copies(tx, params)
  float32_copies, float32_temp = _donated_step_copies(
      tx, jax.tree.map(lambda p: p.astype(jnp.float32), params))
  assert copies <= float32_copies
  assert temp <= float32_temp


@pytest.mark.parametrize("make", [
    lambda fmt: gt.scale_by_adam(mu_dtype=fmt, nu_dtype=fmt),
    lambda fmt: gt.scale_by_adam(nu_dtype=fmt, amsgrad=True),
    lambda fmt: gt.momentum(0.9, mu_dtype=fmt),
], ids=["adam", "amsgrad", "momentum"])
def test_stochastic_bf16_states_are_not_copied_in_a_donated_step(make):
  """Stochastically rounded states cost the donated step what plain bf16
  states do: the rounding's bit arithmetic made XLA recompute the stored value
  after the donated buffer was overwritten, so it copied each state first
  (6 copies for Adam's two moments over three leaves)."""
  params = {f"w{i}": jnp.ones((128, 64), jnp.float32) * (i + 1) for i in range(3)}
  copies, temp = _donated_step_copies(make(gt.StochasticBfloat16()), params)
  plain_copies, plain_temp = _donated_step_copies(make(jnp.bfloat16), params)
  assert copies <= plain_copies
  assert temp <= plain_temp + 1024


def test_bf16_moments_step_from_the_moment_as_stored():
  """With bf16 state the step is m̂/(√v̂+ε) of the stored (rounded) moments,
  as torch.optim.Adam computes it from its bf16 exp_avg and exp_avg_sq."""
  tx = gt.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  g = jnp.linspace(-1.0, 1.0, 64).reshape(8, 8) ** 3 + 0.01
  state = tx.init(g)
  for _ in range(3):
    u, state = tx.update(g * 1.1, state)
  m = np.asarray(state.mu, np.float64) / (1 - 0.9 ** 3)
  v = np.asarray(state.nu, np.float64) / (1 - 0.999 ** 3)
  np.testing.assert_allclose(u, m / (np.sqrt(v) + 1e-8), rtol=1e-6)
