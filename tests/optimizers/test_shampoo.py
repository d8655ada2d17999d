"""Shampoo against Algorithm 1 of Gupta et al. 2018 in float64, grafting, flax.nnx."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions
from tests.support import helpers

# Integer arguments that fix shapes or the step structure stay static.
SHAMPOO_STATIC = ("precondition_every", "block_size", "max_precondition_dim")


@pytest.mark.parametrize("shape", [(5, 8), (7, 3)], ids=["wide", "tall"])
@pytest.mark.parametrize("root_method, rtol", [("eigh", 1e-10), ("newton", 1e-8)])
def test_reference_configuration_is_algorithm_1(shape, root_method, rtol):
  """25 steps of mini-batch least squares; statistics start at εI."""
  steps, lr, eps = 25, 0.1, 1e-3
  problem = problems.LeastSquaresProblem({"w": shape}, steps)
  grad = lambda w, t: problem.grad({"w": w}, t)["w"]
  expected = transcriptions.shampoo_algorithm1(problem.params0["w"], grad, steps, lr, eps)
  tx = go.shampoo(lr, b1=0.0, precondition_b2=1.0, damping=eps, grafting=None,
                  precondition_every=1, root_method=root_method)
  ours = runners.run_gradtx(tx, problem.params0, problem.grad, steps)
  assert np.abs(expected[-1] - expected[0]).max() > 0.1  # it does move
  for theirs, mine in zip(expected, ours):
    np.testing.assert_allclose(mine["w"], theirs, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_averages_the_preconditioned_direction(nesterov):
  steps, lr, eps, b1 = 25, 0.05, 1e-3, 0.9
  problem = problems.LeastSquaresProblem({"w": (5, 8)}, steps)
  grad = lambda w, t: problem.grad({"w": w}, t)["w"]
  expected = transcriptions.shampoo_algorithm1(
      problem.params0["w"], grad, steps, lr, eps, momentum=b1, nesterov=nesterov)
  tx = go.shampoo(lr, b1=b1, precondition_b2=1.0, damping=eps, grafting=None,
                  precondition_every=1, nesterov=nesterov)
  ours = runners.run_gradtx(tx, problem.params0, problem.grad, steps)
  for theirs, mine in zip(expected, ours):
    np.testing.assert_allclose(mine["w"], theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grafting", ["adam", "rmsprop", "sgd"])
def test_grafting_gives_each_block_the_grafted_norm(grafting):
  """Step 1, b1 = 0: per 4×4 block, ‖update‖ = η‖grafted update‖."""
  g = np.random.default_rng(0).standard_normal((8, 6))
  tx = go.shampoo(0.5, b1=0.0, grafting=grafting, block_size=4, precondition_every=1)
  params = {"w": jnp.zeros((8, 6))}
  updates, _ = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init(params), params)
  grafted = {"adam": np.sign(g), "rmsprop": g / np.sqrt(0.001 * g * g),
             "sgd": g}[grafting]
  for r in range(2):
    for c in range(2):
      block = (slice(4 * r, 4 * r + 4), slice(3 * c, 3 * c + 3))
      np.testing.assert_allclose(np.linalg.norm(updates["w"][block]),
                                 0.5 * np.linalg.norm(grafted[block]), rtol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: go.shampoo(3e-2, block_size=8, precondition_every=3),
    lambda: optax.inject_hyperparams(go.shampoo, static_args=SHAMPOO_STATIC)(
        learning_rate=3e-2, block_size=8, root_method="newton", relative_damping=1e-6),
], ids=["shampoo", "shampoo-newton-injected"])
def test_trains_an_nnx_model_in_one_trace(make):
  x = jnp.arange(12) % 11
  losses, traces, _ = helpers.nnx_train(
      helpers.EmbedClassifier(nnx.Rngs(0)), make(), helpers.EmbedClassifier.loss(x), 25)
  assert traces == 1
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
