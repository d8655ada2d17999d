"""gt.scale_by_ademamix against optax.contrib.scale_by_ademamix, and its 8-bit states.

optax.contrib.scale_by_ademamix is an independent implementation of the same
algorithm (Pagliardini et al. 2024, Algorithm 1): whole float64 trajectories
of 24 steps where the arguments overlap, schedules of α and β₃ included.
(Argument checks, zero gradients, jit and bf16: tests/transforms/
test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners

STEPS = 24
PROBLEM = problems.LogisticProblem(seed=7, steps=STEPS)

SETTINGS = {
    "defaults": dict(alpha=5.0),
    "short_memory": dict(b1=0.8, b2=0.99, b3=0.95, alpha=2.0, eps=1e-6, eps_root=1e-10),
    "schedules": dict(
        b3=lambda count: 0.9 + 0.09 * count / (count + 5.0),
        alpha=optax.linear_schedule(0.0, 8.0, 10)),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_transform_matches_optax_contrib(setting):
  kwargs = SETTINGS[setting]
  ours = runners.run_gradtx(optax.chain(gt.scale_by_ademamix(**kwargs),
                                        gt.scale_by_learning_rate(0.02)),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  # optax reads schedules at its int32 count (float32 values); gradtx at int64 under x64.
  read64 = {k: runners.at_int64_counts(v) if callable(v) else v for k, v in kwargs.items()}
  theirs = runners.run_gradtx(
      optax.chain(optax.contrib.scale_by_ademamix(**read64), optax.scale_by_learning_rate(0.02)),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, 1e-12)
  # The slow EMA matters: plain Adam is far from it.
  adam = runners.run_gradtx(go.adam(0.02, b1=kwargs.get("b1", 0.9), b2=kwargs.get("b2", 0.999)),
                            PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(adam, theirs)["updates"] > 1e-2


def test_state_holds_both_emas_and_the_second_moment():
  params = {"w": jnp.zeros((3, 2))}
  tx = gt.scale_by_ademamix(b1=0.5, b2=0.75, b3=0.9)
  g = {"w": jnp.full((3, 2), 2.0)}
  _, state = tx.update(g, tx.init(params))
  np.testing.assert_allclose(state.mu["w"], 1.0)
  np.testing.assert_allclose(state.mu_slow["w"], 0.2, rtol=1e-6)
  np.testing.assert_allclose(state.nu["w"], 1.0)
  assert int(state.count) == 1


def test_int8_states_follow_the_float_trajectory():
  """Block-wise 8-bit EMAs (gt.Int8Blocks, as scale_by_adam's) stay within
  quantization error of the float32 run, and are stored as codes."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(64, 80)), jnp.float32)}
  grads = [{"w": jnp.asarray(rng.normal(size=(64, 80)), jnp.float32)} for _ in range(20)]

  def run(tx):
    state, step = tx.init(params), jax.jit(tx.update)
    out = []
    for g in grads:
      u, state = step(g, state)
      out.append(u["w"])
    return np.asarray(out), state

  exact, _ = run(gt.scale_by_ademamix(b3=0.99))
  quantized, state = run(gt.scale_by_ademamix(b3=0.99, mu_dtype="int8", nu_dtype="int8"))
  assert isinstance(state.mu["w"], gt.QuantizedArray)
  assert isinstance(state.mu_slow["w"], gt.QuantizedArray)
  assert isinstance(state.nu["w"], gt.QuantizedArray)
  error = np.abs(quantized - exact).mean() / np.abs(exact).mean()
  assert error < 0.05, error


def test_int8_states_reset_a_non_finite_coordinate():
  params = {"w": jnp.zeros((8, 8))}
  tx = gt.scale_by_ademamix(mu_dtype=gt.Int8Blocks(16, 0), nu_dtype=gt.Int8Blocks(16, 0))
  g = {"w": jnp.ones((8, 8)).at[2, 3].set(jnp.nan)}
  u, state = jax.jit(tx.update)(g, tx.init(params))
  assert bool(jnp.isfinite(u["w"]).all()) and float(u["w"][2, 3]) == 0.0
  mu = gt.dequantize_blockwise(state.mu["w"], jnp.float32)
  assert float(mu[2, 3]) == 0.0 and float(mu[0, 0]) > 0
