"""go.adamh and go.muonh against a NumPy transcription of Marin's code
(``transcriptions.hyperball_marin``: Levanter's ``scale_by_adamh``,
``scale_with_muonh`` and their configs' routing), whole 20-step trajectories
of a 2-layer MLP in float64; the matrices' norms held over training; the
default routing of a model-shaped tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions

STEPS = 20
PROBLEM = problems.MlpProblem(seed=5, steps=STEPS)


def _named(*names):
  return lambda path, leaf: path[-1].key in names


def test_adamh_matches_marin():
  tx = go.adamh(0.05, adam_learning_rate=1e-2)
  ours = runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grads, STEPS)
  ref = transcriptions.hyperball_marin(PROBLEM.params0, PROBLEM.grads, STEPS, lr=0.05,
                                       adam_lr=1e-2, hyperball=("w1", "w2"))
  runners.assert_trajectories_close(ours, ref, 1e-10)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muonh_matches_marin(nesterov):
  """w1 on MuonH, w2 (as an output head) on AdamH, the biases on Adam."""
  tx = go.muonh(0.05, nesterov=nesterov, adam_learning_rate=1e-2,
                is_muon_param=_named("w1"), is_hyperball_param=_named("w2"))
  ours = runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grads, STEPS)
  ref = transcriptions.hyperball_marin(
      PROBLEM.params0, PROBLEM.grads, STEPS, lr=0.05, adam_lr=1e-2, nesterov=nesterov,
      muon=("w1",), hyperball=("w2",))
  runners.assert_trajectories_close(ours, ref, 1e-10)


MODEL = {
    "embedding": jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32),
    "block": {"kernel": jnp.asarray(np.random.default_rng(1).normal(size=(8, 8)), jnp.float32),
              "bias": jnp.zeros(8)},
    "lm_head": {"kernel": jnp.asarray(np.random.default_rng(2).normal(size=(8, 16)),
                                      jnp.float32)},
}


def _train(tx, steps=100):
  def loss(p):
    h = jnp.tanh(p["embedding"][:4] @ p["block"]["kernel"] + p["block"]["bias"])
    return jnp.mean((h @ p["lm_head"]["kernel"] - 0.1) ** 2)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  p, s = MODEL, tx.init(MODEL)
  for _ in range(steps):
    p, s = step(p, s)
  return p, s, float(loss(MODEL)), float(loss(p))


@pytest.mark.parametrize("factory", [go.adamh, go.muonh], ids=["adamh", "muonh"])
def test_matrix_norms_are_held_and_the_loss_falls(factory):
  p, _, before, after = _train(factory(0.02, adam_learning_rate=1e-2))
  assert after < before
  for layer in ("block", "lm_head"):
    np.testing.assert_allclose(jnp.linalg.norm(p[layer]["kernel"]),
                               jnp.linalg.norm(MODEL[layer]["kernel"]), rtol=1e-5,
                               err_msg=layer)
  assert not np.isclose(float(jnp.linalg.norm(p["embedding"])),
                        float(jnp.linalg.norm(MODEL["embedding"])), rtol=1e-4)


def test_default_routing_follows_marin():
  """AdamH: every matrix but the embedding; MuonH: hidden matrices on Muon,
  the output head on AdamH, embedding and bias on Adam."""
  _, adamh_state, _, _ = _train(go.adamh(0.02), steps=1)
  labels = lambda state: {k for k, v in state.inner_states.items()
                          if not isinstance(v.inner_state, optax.EmptyState)}
  assert labels(adamh_state) == {"adamh", "output_head", "adam"}
  _, muonh_state, _, _ = _train(go.muonh(0.02), steps=1)
  assert labels(muonh_state) == {"muonh", "output_head", "adam"}
  muon_mu = muonh_state.inner_states["muonh"].inner_state[0].mu
  adamh_mu = muonh_state.inner_states["output_head"].inner_state[0].mu
  assert isinstance(muon_mu["lm_head"]["kernel"], optax.MaskedNode)
  assert muon_mu["block"]["kernel"].shape == (8, 8)
  assert adamh_mu["lm_head"]["kernel"].shape == (8, 16)
  assert isinstance(adamh_mu["block"]["kernel"], optax.MaskedNode)
  adam_side = adamh_state.inner_states["adam"].inner_state[0].mu
  assert adam_side["embedding"].shape == (16, 8)
  assert isinstance(adam_side["lm_head"]["kernel"], optax.MaskedNode)
