"""go.ademamix against optax.contrib.ademamix (float64 trajectories), and its dtypes.

The generic battery (tests/support/cases.py) runs it too; the transform's own
checks are in tests/transforms/test_ademamix.py.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners

STEPS = 24
PROBLEM = problems.LogisticProblem(seed=7, steps=STEPS)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_optimizer_matches_optax_contrib_with_schedules(weight_decay):
  mask = {"w": True, "b": False}
  kwargs = dict(b3=0.99, alpha=optax.linear_schedule(1.0, 6.0, 12),
                weight_decay=weight_decay, mask=mask)
  lr = optax.cosine_decay_schedule(0.05, STEPS)
  ours = runners.run_gradtx(go.ademamix(lr, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  at_int64 = runners.at_int64_counts  # gradtx's float64 rates under x64
  theirs = runners.run_gradtx(
      optax.contrib.ademamix(at_int64(lr), **{**kwargs, "alpha": at_int64(kwargs["alpha"])}),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, 1e-12)


def test_bfloat16_params_keep_bfloat16_states_and_updates():
  params = {"w": jnp.ones((4, 3), jnp.bfloat16)}
  tx = go.ademamix(1e-2)
  state = tx.init(params)
  u, state = jax.jit(tx.update)(params, state, params)
  assert u["w"].dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(state[0]) if x.ndim} == {jnp.dtype(jnp.bfloat16)}


def test_cautious_weight_decay_is_threaded():
  params = {"w": jnp.array([1.0, -1.0, 2.0])}
  grads = {"w": jnp.array([1.0, 1.0, -1.0])}  # α = 0: Adam's first step, sign(g)
  tx = go.ademamix(0.1, alpha=0.0, weight_decay=0.5, cautious_weight_decay=True)
  u, _ = tx.update(grads, tx.init(params), params)
  # Decayed only where sign(g)·p >= 0 (the first coordinate).
  expected = -0.1 * (jnp.sign(grads["w"]) + 0.5 * params["w"] * jnp.array([1, 0, 0]))
  assert jnp.allclose(u["w"], expected, atol=1e-6)
