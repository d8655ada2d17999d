"""Muon vs a numpy transcription of the published algorithm, and its routing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
from tests.oracles import transcriptions
from tests.support import helpers


def _least_squares_problem(rng, fan_in=6, fan_out=10, rows=16):
  a = rng.standard_normal((rows, fan_in))
  b = rng.standard_normal((rows, fan_out))
  w0 = rng.standard_normal((fan_in, fan_out)) * 0.3
  return a, b, w0


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(6, 10), (12, 5)], ids=["wide", "tall"])
def test_muon_trajectory_matches_reference_algorithm(nesterov, shape):
  """20 steps on a least-squares loss in float64, flax (in, out) layout vs the
  reference's PyTorch (out, in) layout."""
  a, b, w0 = _least_squares_problem(np.random.default_rng(0), *shape)
  lr, wd, beta = 0.05, 0.1, 0.95
  gradient = lambda w: a.T @ (a @ w - b)
  # The reference works on W_torch = Wᵀ with gradient Gᵀ.
  expected = transcriptions.muon_reference(
      w0.T, lambda wt: gradient(wt.T).T, steps=20, lr=lr, weight_decay=wd,
      beta=beta, nesterov=nesterov,
  )
  with jax.enable_x64(True):
    tx = go.muon(lr, beta=beta, nesterov=nesterov, weight_decay=wd)
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    trajectory = []
    for _ in range(20):
      grads = {"w": jnp.asarray(gradient(np.asarray(params["w"])))}
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      trajectory.append(np.asarray(params["w"]))
  for ours, theirs in zip(trajectory, expected):
    np.testing.assert_allclose(ours, theirs.T, rtol=1e-9, atol=1e-12)


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 8, rngs=rngs)
    self.conv = nnx.Conv(8, 6, (3, 3), rngs=rngs)
    self.hidden = nnx.Linear(8, 16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.lm_head = nnx.Linear(16, 11, rngs=rngs)


def test_default_routing_sends_hidden_matrices_to_muon_and_the_rest_to_adamw():
  params = nnx.state(_Net(nnx.Rngs(0)), nnx.Param)
  routed = jax.tree_util.tree_map_with_path(go.is_hidden_matrix, params)
  flat = {jax.tree_util.keystr(k): v for k, v in
          jax.tree_util.tree_leaves_with_path(routed)}
  muon_leaves = sorted(k for k, v in flat.items() if v)
  assert muon_leaves == ["['conv']['kernel'].value", "['hidden']['kernel'].value"]


def test_routing_rule_can_be_overridden():
  params = {"embedding": jnp.ones((5, 4)), "w": jnp.ones((4, 4))}
  everything = go.muon(0.02, is_muon_param=lambda path, leaf: leaf.ndim == 2)
  state = everything.init(params)
  updates, _ = everything.update(jax.tree.map(jnp.ones_like, params), state, params)
  # msign of the all-ones 5x4 matrix is ones/sqrt(20); Jordan's iteration
  # lands its one singular value in [0.68, 1.135]. AdamW would give -0.02.
  ratio = np.asarray(updates["embedding"]) / (-0.02 / np.sqrt(20))
  assert np.ptp(ratio) < 1e-5 and 0.68 <= ratio.mean() <= 1.135


def test_conv_kernel_is_orthogonalized_as_a_flattened_matrix():
  rng = np.random.default_rng(1)
  grad = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
  tx = go.muon(1.0, beta=0.0, nesterov=False, scale=None, coefficients="cubic",
               ns_steps=40)
  params = {"conv": jnp.zeros((3, 3, 4, 8))}
  updates, _ = tx.update({"conv": jnp.asarray(grad)}, tx.init(params), params)
  u, _, vt = np.linalg.svd(grad.reshape(36, 8), full_matrices=False)
  np.testing.assert_allclose(
      -np.asarray(updates["conv"]).reshape(36, 8), u @ vt, atol=1e-4)


@pytest.mark.parametrize(
    "scale, expected",
    [("jordan", np.sqrt(16 / 4)), ("moonlight", 0.2 * np.sqrt(16)), (None, 1.0)],
)
def test_update_scale_modes(scale, expected):
  grad = np.linalg.qr(np.random.default_rng(2).standard_normal((16, 4)))[0].T
  tx = go.muon(1.0, beta=0.0, scale=scale, coefficients="cubic", ns_steps=30)
  params = {"w": jnp.zeros((4, 16))}  # fan_in 4, fan_out 16
  updates, _ = tx.update({"w": jnp.asarray(grad, jnp.float32)}, tx.init(params), params)
  np.testing.assert_allclose(-np.asarray(updates["w"]), expected * grad, atol=1e-4)


def test_trains_an_nnx_model_with_bf16_compute():
  """(Zero gradients, which leave only the decoupled decay, are in
  tests/test_non_finite.py.)"""
  x = jnp.arange(12) % 11

  def loss_fn(m):
    h = m.norm(m.hidden(m.embed(x)))
    logits = m.lm_head(h)
    return optax.softmax_cross_entropy_with_integer_labels(logits, (x + 1) % 11).mean()

  losses, _, _ = helpers.nnx_train(
      _Net(nnx.Rngs(0)), go.muon(0.02, adam_learning_rate=3e-3, compute_dtype=jnp.bfloat16),
      loss_fn, 30)
  assert losses[-1] < 0.5 * losses[0]
