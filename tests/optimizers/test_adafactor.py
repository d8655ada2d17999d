"""Adafactor against optax.adafactor (float64 trajectories), its schedule and int8 momentum."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners
from tests.support import helpers

ADAFACTOR_PARAMS = {
    "w": np.random.default_rng(0).normal(size=(12, 20)),  # factored (min dim 8)
    "conv": np.random.default_rng(1).normal(size=(3, 10, 9)),
    "small": np.random.default_rng(2).normal(size=(4, 20)),  # 4 < 8: unfactored
    "b": np.zeros(20),
}


@pytest.mark.parametrize(
    "config",
    [
        {"learning_rate": 0.05, "min_dim_size_to_factor": 8},
        {"learning_rate": optax.linear_schedule(0.1, 0.01, 25), "clipping_threshold": None,
         "decay_rate": 0.6, "min_dim_size_to_factor": 8},
        {"learning_rate": 0.05, "multiply_by_parameter_scale": False, "b1": 0.9},
        {"learning_rate": 0.02, "weight_decay": 1e-3, "factored": False, "eps": 1e-20},
        {"learning_rate": 0.05, "clipping_threshold": 0.5,
         "weight_decay": 1e-2, "mask": {"w": True, "conv": True, "small": False, "b": False},
         "min_dim_size_to_factor": 8},
    ],
)
def test_adafactor_matches_optax(config):
  names = {"mu_dtype": "dtype_momentum", "weight_decay": "weight_decay_rate", "b1": "momentum",
           "mask": "weight_decay_mask"}
  optax_config = {names.get(k, k): v for k, v in config.items()}
  grad = problems.quadratic_grads(ADAFACTOR_PARAMS, seed=3)
  ours = runners.run_quadratic(go.adafactor(**config), ADAFACTOR_PARAMS, grad, 25)
  theirs = runners.run_quadratic(optax.adafactor(**optax_config), ADAFACTOR_PARAMS, grad, 25)
  assert np.isfinite(ours[-1]["w"]).all()
  assert runners.max_relative_gap(ours, theirs) < 1e-6
  assert runners.max_relative_gap(ours[-1:], ours[:1]) > 0.05  # the run goes somewhere


def test_adafactor_default_is_the_relative_step_size():
  grad = problems.quadratic_grads(ADAFACTOR_PARAMS, seed=4)
  ours = runners.run_quadratic(go.adafactor(min_dim_size_to_factor=8), ADAFACTOR_PARAMS, grad, 25)
  theirs = runners.run_quadratic(
      optax.adafactor(go.relative_step_size(), min_dim_size_to_factor=8),
      ADAFACTOR_PARAMS, grad, 25,
  )
  assert runners.max_relative_gap(ours, theirs) < 1e-6
  schedule = go.relative_step_size()
  np.testing.assert_allclose([schedule(0), schedule(9999)], [1e-2, 1e-2])
  np.testing.assert_allclose(schedule(1e5 - 1), 1 / np.sqrt(1e5), rtol=1e-6)
  np.testing.assert_allclose(go.relative_step_size(warmup_init=True)(9), 1e-5, rtol=1e-6)


def test_adafactor_int8_momentum():
  params = {"w": np.random.default_rng(0).normal(size=(64, 128))}
  grad = problems.quadratic_grads(params, seed=5)
  exact = runners.run_quadratic(go.adafactor(0.05, b1=0.9), params, grad, 20, jnp.float32)
  int8 = runners.run_quadratic(go.adafactor(0.05, b1=0.9, mu_dtype="int8"), params, grad, 20,
                jnp.float32)
  state = go.adafactor(0.05, b1=0.9, mu_dtype="int8").init(
      {"w": jnp.zeros((64, 128))})
  assert any(isinstance(x, gt.QuantizedArray) for x in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, gt.QuantizedArray)))
  step = np.abs(exact[-1]["w"] - exact[0]["w"]).mean()
  assert np.abs(int8[-1]["w"] - exact[-1]["w"]).mean() < 0.05 * step


def test_state_memory_on_a_gpt_tree():
  """Factored second moments: under 5% of AdamW's state."""
  assert helpers.state_ratio(go.adafactor()) <= 0.05


def test_relative_step_size_is_computed_in_float64_under_x64():
  """ρ_t = min(1e-2, 1/√t) exactly, not float32(0.01) (2.2e-8 off), so a
  float64 run of the default Adafactor follows its equation to round-off;
  float32 updates stay float32."""
  with jax.enable_x64(True):
    rho = go.relative_step_size()(jnp.arange(4))
    assert rho.dtype == jnp.float64
    np.testing.assert_array_equal(rho, [0.01, 0.01, 0.01, 0.01])
    assert float(go.relative_step_size()(39999)) == 1 / 200
    params = {"w": jnp.ones((4, 4), jnp.float32)}
    tx = go.adafactor()
    assert tx.update(params, tx.init(params), params)[0]["w"].dtype == jnp.float32


def test_an_unknown_momentum_format_is_refused_without_momentum_too():
  with pytest.raises(ValueError, match=r"mu_dtype must be None"):
    go.adafactor(mu_dtype="bogus")
  go.adafactor(mu_dtype="int8")  # a known format without b1: unused, accepted


def test_float16_parameters_with_rows_never_seen_step_as_float32_does():
  """An embedding whose rows mostly get no gradient, in float16: g² + ε
  rounded to 0 in a float16 statistic and the whole leaf stepped NaN (as
  optax.adafactor's does); the statistics are float32 for float16 leaves."""
  rng = np.random.default_rng(0)
  params = {"embed": rng.normal(size=(256, 128)).astype(np.float16),
            "bias": np.zeros(128, np.float16)}
  tx, reference = go.adafactor(1e-2), optax.adafactor(1e-2)
  p16, p32 = jax.tree.map(jnp.asarray, params), jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float32), params)
  s16, s32 = tx.init(p16), reference.init(p32)
  assert {x.dtype for x in jax.tree.leaves(s16) if x.ndim} == {jnp.dtype(jnp.float32)}
  for _ in range(10):
    rows = rng.choice(256, 16, replace=False)
    g = np.zeros((256, 128), np.float16)
    g[rows] = rng.normal(size=(16, 128))
    grads = {"embed": jnp.asarray(g), "bias": jnp.zeros(128, jnp.float16)}
    u16, s16 = tx.update(grads, s16, p16)
    u32, s32 = reference.update(jax.tree.map(lambda x: x.astype(jnp.float32), grads), s32, p32)
    assert u16["embed"].dtype == jnp.float16
    np.testing.assert_allclose(u16["embed"].astype(np.float32), u32["embed"], rtol=2e-2, atol=1e-5)
    np.testing.assert_array_equal(u16["bias"], 0)
    p16, p32 = optax.apply_updates(p16, u16), optax.apply_updates(p32, u32)
