"""Muon vs a numpy transcription of the published algorithm, and its routing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
from tests.oracles import runners, transcriptions
from tests.support import helpers


def _least_squares_problem(rng, fan_in=6, fan_out=10, rows=16):
  a = rng.standard_normal((rows, fan_in))
  b = rng.standard_normal((rows, fan_out))
  w0 = rng.standard_normal((fan_in, fan_out)) * 0.3
  return a, b, w0


def _run(tx, w0, gradient, steps=20):
  """``steps`` float64 steps of ``tx`` on {"w": w0}; the list of iterates."""
  with jax.enable_x64(True):
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    trajectory = []
    for _ in range(steps):
      grads = {"w": jnp.asarray(gradient(np.asarray(params["w"])))}
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      trajectory.append(np.asarray(params["w"]))
  return trajectory


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
  trajectory = _run(go.muon(lr, beta=beta, nesterov=nesterov, weight_decay=wd), w0, gradient)
  for ours, theirs in zip(trajectory, expected):
    np.testing.assert_allclose(ours, theirs.T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("nesterov", [True, False])
def test_cautious_weight_decay_matches_the_record_step(nesterov):
  """20 float64 steps against the reference Muon with modded-nanogpt's
  cautious decay step, ``p -= lr·u + lr·wd·p·[u·p >= 0]``, at a decay large
  enough that the mask matters."""
  a, b, w0 = _least_squares_problem(np.random.default_rng(2), 6, 10)
  lr, wd, beta = 0.05, 2.0, 0.9
  gradient = lambda w: a.T @ (a @ w - b)
  expected = transcriptions.muon_reference(
      w0.T, lambda wt: gradient(wt.T).T, steps=20, lr=lr, weight_decay=wd,
      beta=beta, nesterov=nesterov, cautious_weight_decay=True)
  plain = transcriptions.muon_reference(
      w0.T, lambda wt: gradient(wt.T).T, steps=20, lr=lr, weight_decay=wd,
      beta=beta, nesterov=nesterov)
  tx = go.muon(lr, beta=beta, nesterov=nesterov, weight_decay=wd, cautious_weight_decay=True)
  trajectory = _run(tx, w0, gradient)
  for ours, theirs in zip(trajectory, expected):
    np.testing.assert_allclose(ours, theirs.T, rtol=1e-9, atol=1e-12)
  assert np.abs(plain[-1] - expected[-1]).max() > 1e-3


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


def _embedding_problem():
  """Two embedding tables (token, positions), a hidden matrix, a head, a bias."""
  rng = np.random.default_rng(3)
  params = {"tok_embed": {"embedding": rng.standard_normal((9, 4))},
            "wpe": rng.standard_normal((5, 4)),
            "block": {"kernel": rng.standard_normal((4, 6)) * 0.3},
            "lm_head": {"kernel": rng.standard_normal((6, 9)) * 0.3},
            "bias": rng.standard_normal(6)}
  grads = [jax.tree.map(lambda p, t=t: np.cos((t + 1) * p + t), params) for t in range(10)]
  return params, grads


def _trajectory(tx, params, grads):
  """Parameters after each of the gradients (fed, not computed: any leaf subset works)."""
  params = jax.tree.map(jnp.asarray, params)
  state, out = tx.init(params), []
  for g in grads:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


FACTORIES = {  # the factories built on gt.AdamWSide.around
    "muon": (go.muon, {}), "dion": (go.dion, dict(rank=1)), "normuon": (go.normuon, {}),
    "adamuon": (go.adamuon, {}), "soap_muon": (go.soap_muon, {}), "vmuon": (go.vmuon, {}),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_embedding_learning_rate_gives_the_embeddings_optax_adamw_at_that_rate(name):
  """10 float64 steps: the token table and the positions follow optax.adamw at
  ``embedding_learning_rate`` (the AdamW side's b1, b2, eps, decay); every other
  leaf (hidden matrix, head, bias) is exactly as without the argument."""
  factory, kwargs = FACTORIES[name]
  params, grads = _embedding_problem()
  side = dict(adam_learning_rate=3e-3, adam_b1=0.8, adam_b2=0.99, adam_eps=1e-7,
              adam_weight_decay=0.05)
  schedule = optax.linear_schedule(0.3, 0.03, 10)
  with jax.enable_x64(True):
    fast = _trajectory(factory(0.02, **kwargs, **side, embedding_learning_rate=schedule),
                       params, grads)
    plain = _trajectory(factory(0.02, **kwargs, **side), params, grads)
    tables = ("tok_embed", "wpe")
    anchor = _trajectory(
        optax.adamw(runners.at_int64_counts(schedule), b1=0.8, b2=0.99, eps=1e-7,
                    weight_decay=0.05),
        {k: params[k] for k in tables}, [{k: g[k] for k in tables} for g in grads])
  for ours, slow, theirs in zip(fast, plain, anchor):
    for key in tables:
      np.testing.assert_allclose(
          jax.tree.leaves(ours[key]), jax.tree.leaves(theirs[key]), rtol=1e-12)
      assert not np.allclose(jax.tree.leaves(ours[key]), jax.tree.leaves(slow[key]))
    for key in ("block", "lm_head", "bias"):
      np.testing.assert_array_equal(jax.tree.leaves(ours[key]), jax.tree.leaves(slow[key]))


def test_embedding_learning_rate_leaves_the_state_as_it_was_when_not_given():
  """No third AdamW (and checkpoints of the two-label state still load) unless asked."""
  params = jax.tree.map(jnp.asarray, _embedding_problem()[0])
  assert set(go.muon(0.02).init(params).inner_states) == {"muon", "adam"}
  assert set(go.muon(0.02, embedding_learning_rate=0.1).init(params).inner_states) == {
      "muon", "adam", "embedding"}


def test_adaptive_steps_are_optax_adaptive_times_the_momentum_bias():
  """⟨M, O⟩ of the reference's undebiased momentum: without Nesterov each
  step is (1 − βᵗ) times ``optax.contrib.muon(adaptive=True)``'s, which
  debiases M (the same O, since NS is scale-invariant), float64."""
  rng = np.random.default_rng(3)
  w = rng.normal(size=(6, 4))
  grads = [rng.normal(size=(6, 4)) for _ in range(8)]
  with jax.enable_x64(True):
    ours = go.muon(0.02, nesterov=False, eps=0.0, adaptive=True)
    theirs = optax.contrib.muon(0.02, nesterov=False, eps=0.0, adaptive=True)
    params = {"w": jnp.asarray(w)}
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for t, g in enumerate(grads, start=1):
      u_ours, s_ours = ours.update({"w": jnp.asarray(g)}, s_ours, params)
      u_theirs, s_theirs = theirs.update({"w": jnp.asarray(g)}, s_theirs, params)
      np.testing.assert_allclose(u_ours["w"], (1 - 0.95**t) * u_theirs["w"], rtol=1e-10)
