"""go.mars_adamw against a NumPy transcription of the official MARS optimizer
(``transcriptions.mars_official``: AGI-Arena/MARS ``MARS(...).step``, its
2-D/other routing and defaults), whole 20-step trajectories of a 2-layer MLP
in float64, MARS-approx and MARS-exact."""

import jax
import jax.numpy as jnp
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions

STEPS = 20
PROBLEM = problems.MlpProblem(seed=11, steps=STEPS)


SETTINGS = {
    "defaults": (dict(), dict()),
    "decay_and_own_rate": (dict(weight_decay=0.1, adam_learning_rate=1e-3, gamma=0.1),
                           dict(weight_decay=0.1, lr_1d=1e-3, gamma=0.1)),
}


@pytest.mark.parametrize("exact", [False, True], ids=["approx", "exact"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_the_official_optimizer(setting, exact):
  ours_kwargs, ref_kwargs = SETTINGS[setting]
  tx = go.mars_adamw(3e-3, exact=exact, **ours_kwargs)
  ours = (runners.run_with_grad_fn(tx, PROBLEM) if exact
          else runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grads, STEPS))
  ref = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=3e-3,
                                     is_approx=not exact, **ref_kwargs)
  runners.assert_trajectories_close(ours, ref, 1e-10)
  other = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=3e-3,
                                       is_approx=exact, **ref_kwargs)
  assert runners.trajectory_errors(ours, other)["updates"] > 1e-4


def test_optimize_1d_routes_every_leaf_to_mars():
  tx = go.mars_adamw(3e-3, weight_decay=0.1, is_mars_param=lambda path, leaf: True)
  ours = runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grads, STEPS)
  ref = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=3e-3,
                                     weight_decay=0.1, optimize_1d=True)
  runners.assert_trajectories_close(ours, ref, 1e-10)


def test_exact_is_extra_args_and_trains_under_jit_with_a_schedule():
  tx = go.mars_adamw(optax.cosine_decay_schedule(1e-2, 50), exact=True)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in PROBLEM.params0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    grad_fn = jax.grad(lambda p: PROBLEM.loss(p, x, y))
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  first = float(PROBLEM.loss(params, PROBLEM.xs[0], PROBLEM.ys[0]))
  for t in range(STEPS):
    params, state = step(params, state, PROBLEM.xs[t % 2], PROBLEM.ys[t % 2])
  assert float(PROBLEM.loss(params, PROBLEM.xs[0], PROBLEM.ys[0])) < first
  assert step._cache_size() == 1
