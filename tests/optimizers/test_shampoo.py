"""Shampoo vs Algorithm 1 of Gupta et al. 2018, SOAP vs the reference code, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
from tests import oracles


@pytest.mark.parametrize("shape", [(5, 8), (7, 3)], ids=["wide", "tall"])
@pytest.mark.parametrize("root_method, rtol", [("eigh", 1e-10), ("newton", 1e-8)])
def test_reference_configuration_is_algorithm_1(shape, root_method, rtol):
  """25 steps of mini-batch least squares; statistics start at εI."""
  steps, lr, eps = 25, 0.1, 1e-3
  problem = oracles.LeastSquaresProblem({"w": shape}, steps)
  grad = lambda w, t: problem.grad({"w": w}, t)["w"]
  expected = oracles.shampoo_algorithm1(problem.params0["w"], grad, steps, lr, eps)
  tx = go.shampoo(lr, b1=0.0, precondition_b2=1.0, damping=eps, grafting=None,
                  precondition_every=1, root_method=root_method)
  ours = oracles.run_gradtx(tx, problem.params0, problem.grad, steps)
  assert np.abs(expected[-1] - expected[0]).max() > 0.1  # it does move
  for theirs, mine in zip(expected, ours):
    np.testing.assert_allclose(mine["w"], theirs, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_averages_the_preconditioned_direction(nesterov):
  steps, lr, eps, b1 = 25, 0.05, 1e-3, 0.9
  problem = oracles.LeastSquaresProblem({"w": (5, 8)}, steps)
  grad = lambda w, t: problem.grad({"w": w}, t)["w"]
  expected = oracles.shampoo_algorithm1(
      problem.params0["w"], grad, steps, lr, eps, momentum=b1, nesterov=nesterov)
  tx = go.shampoo(lr, b1=b1, precondition_b2=1.0, damping=eps, grafting=None,
                  precondition_every=1, nesterov=nesterov)
  ours = oracles.run_gradtx(tx, problem.params0, problem.grad, steps)
  for theirs, mine in zip(expected, ours):
    np.testing.assert_allclose(mine["w"], theirs, rtol=1e-10, atol=1e-10)


SOAP_SHAPES = {"w": (6, 6), "v": (4, 12), "b": (6,)}


@pytest.mark.parametrize("refresh", ["qr", "eigh"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_soap_matches_the_reference_code(refresh, weight_decay):
  """30 steps, basis refreshed every 3; v (4×12) has its 12 columns above
  max_precondition_dim = 8 (identity on that side); b is 1-D (plain Adam).

  Square and one-sided matrices keep every statistic full rank, so the
  eigenbases are unique (up to signs, which cancel) and both runs agree to
  round-off. With weight decay the oracle uses gradtx's AdamW decay order
  (see ``go.soap``); the reference order differs by O(η²λ) per step.
  """
  steps = 30
  problem = oracles.LeastSquaresProblem(SOAP_SHAPES, steps)
  hyper = dict(b1=0.9, b2=0.95, precondition_b2=0.8, eps=1e-8, weight_decay=weight_decay,
               precondition_every=3, max_precondition_dim=8)
  tx = go.soap(0.01, refresh=refresh, **hyper)
  ours = oracles.run_gradtx(tx, problem.params0, problem.grad, steps)
  decay = "adamw" if weight_decay else "reference"
  # The transcription keeps the reference's name for the statistics' decay.
  hyper["shampoo_b2"] = hyper.pop("precondition_b2")
  expected = oracles.soap_reference(problem.params0, problem.grad, steps, 0.01,
                                    refresh=refresh, decay=decay, **hyper)
  for theirs, mine in zip(expected, ours):
    for k in SOAP_SHAPES:
      np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-10, atol=1e-12)
  if weight_decay:
    reference_order = oracles.soap_reference(
        problem.params0, problem.grad, steps, 0.01, refresh=refresh, **hyper)
    gap = max(np.abs(ours[-1][k] - reference_order[-1][k]).max() for k in SOAP_SHAPES)
    assert 0 < gap < 2e-3


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
    lambda: go.shampoo(0.1, weight_decay=0.5, precondition_every=2),
    lambda: go.soap(0.1, weight_decay=0.5, precondition_every=2),
], ids=["shampoo", "soap"])
def test_zero_gradients_give_decoupled_decay_and_finite_updates(make):
  tx = make()
  params = {"w": jnp.full((4, 6), 2.0), "b": jnp.full((6,), 2.0)}
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(4):
    updates, state = tx.update(zeros, state, params)
    for name in params:
      np.testing.assert_allclose(updates[name], -0.1 * 0.5 * params[name], rtol=1e-6)
    params = optax.apply_updates(params, updates)


# Integer arguments that fix shapes or the step structure stay static.
SHAMPOO_STATIC = ("precondition_every", "block_size", "max_precondition_dim")
SOAP_STATIC = ("precondition_every", "max_precondition_dim")


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 8, rngs=rngs)
    self.hidden = nnx.Linear(8, 16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, 11, rngs=rngs)


@pytest.mark.parametrize("make", [
    lambda: go.shampoo(3e-2, block_size=8, precondition_every=3),
    lambda: optax.inject_hyperparams(go.shampoo, static_args=SHAMPOO_STATIC)(
        learning_rate=3e-2, block_size=8, root_method="newton", relative_damping=1e-6),
    lambda: optax.inject_hyperparams(go.soap, static_args=SOAP_STATIC)(
        learning_rate=3e-2, precondition_every=3),
], ids=["shampoo", "shampoo-newton-injected", "soap-injected"])
def test_trains_an_nnx_model_in_one_trace(make):
  model = _Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)
  x = jnp.arange(12) % 11
  traces = []

  def loss_fn(m):
    logits = m.head(m.norm(jax.nn.gelu(m.hidden(m.embed(x)))))
    return optax.softmax_cross_entropy_with_integer_labels(logits, (x + 1) % 11).mean()

  @nnx.jit
  def train_step(m, opt):
    traces.append(1)
    loss, grads = nnx.value_and_grad(loss_fn)(m)
    opt.update(m, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(25)]
  assert len(traces) == 1
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]


def test_bf16_parameters_keep_bf16_updates():
  params = {"w": jnp.ones((6, 10), jnp.bfloat16), "b": jnp.ones(10, jnp.bfloat16)}
  grads = jax.tree.map(lambda p: p * 0.3, params)
  for tx in (go.shampoo(1e-2, precondition_every=1), go.soap(1e-2)):
    state = tx.init(params)
    for _ in range(2):
      updates, state = tx.update(grads, state, params)
      assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("factory, kwargs, name", [
    (go.shampoo, dict(grafting="adagrad"), "grafting"),
    (go.shampoo, dict(b1=1.0), "b1"),
    (go.shampoo, dict(b2=1.01), "b2"),
    (go.shampoo, dict(b2=1.0), "b2"),
    (go.shampoo, dict(eps=-1.0), "eps"),
    (go.shampoo, dict(block_size=0), "block_size"),
    (go.shampoo, dict(precondition_every=0), "precondition_every"),
    (go.shampoo, dict(learning_rate=-1.0), "learning_rate"),
    (go.soap, dict(b1=-0.5), "b1"),
    (go.soap, dict(max_precondition_dim=0), "max_precondition_dim"),
    (go.soap, dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_arguments_raise_naming_the_argument(factory, kwargs, name):
  kwargs = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)
