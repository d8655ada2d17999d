"""go.ademamix against optax.contrib.ademamix (float64 trajectories), and its dtypes.

The generic battery (tests/support/cases.py) runs it too; the transform's own
checks are in tests/transforms/test_ademamix.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
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


def _official_ademamix(params0, grad_fn, steps, lr, alpha, warmup, b1=0.9, b2=0.999, b3=0.99,
                       eps=1e-8, weight_decay=0.1):
  """apple/ml-ademamix's ``AdEMAMix.step`` (pytorch/ademamix.py) in NumPy: the
  step count is incremented first, so its α warm-up reads the 1-based step."""
  params = {k: np.array(v, np.float64) for k, v in params0.items()}
  state = {k: [np.zeros_like(v) for _ in range(3)] for k, v in params.items()}
  trajectory = [{k: v.copy() for k, v in params.items()}]
  for step in range(1, steps + 1):
    grads = grad_fn(trajectory[-1], step - 1)
    a = alpha * min(step / warmup, 1.0)  # linear_warmup_scheduler(step, alpha, 0, warmup)
    for k, g in grads.items():
      fast, slow, sq = state[k]
      fast[...] = b1 * fast + (1 - b1) * g
      slow[...] = b3 * slow + (1 - b3) * g
      sq[...] = b2 * sq + (1 - b2) * g * g
      denom = np.sqrt(sq) / np.sqrt(1 - b2**step) + eps
      update = (fast / (1 - b1**step) + a * slow) / denom + weight_decay * params[k]
      params[k] = params[k] - lr * update
    trajectory.append({k: v.copy() for k, v in params.items()})
  return trajectory


def test_the_docstrings_alpha_warmup_matches_the_official_code():
  """The docstring's recipe, ``alpha=lambda count: α·min((count + 1)/T, 1)``,
  is the official code's warm-up read at gradtx's 0-based count."""
  warmup, alpha = 10, 5.0
  ours = runners.run_gradtx(
      go.ademamix(0.05, b3=0.99, weight_decay=0.1,
                  alpha=lambda count: alpha * jnp.minimum((count + 1) / warmup, 1.0)),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  official = _official_ademamix(PROBLEM.params0, PROBLEM.grad, STEPS, 0.05, alpha, warmup)
  runners.assert_trajectories_close(ours, official, 1e-12)


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
