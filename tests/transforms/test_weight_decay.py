"""Weight decay: u + λ_t p, its schedule's step count, masks, and placement.

(Argument checks, zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.oracles import transcriptions

PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 4.0]]), "b": jnp.array([3.0, -1.0])}
GRADS = {"w": jnp.array([[0.1, 0.2], [-0.3, 0.0]]), "b": jnp.array([1.0, 2.0])}

DECAYS = [gt.decoupled_weight_decay, gt.coupled_weight_decay]


@pytest.mark.parametrize("decay", DECAYS)
def test_adds_scaled_params(decay):
  tx = decay(0.25)
  updates, state = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  for k in PARAMS:
    np.testing.assert_allclose(updates[k], GRADS[k] + 0.25 * PARAMS[k], rtol=1e-6)
  # A constant λ keeps no count, as optax's add_decayed_weights.
  assert state == optax.EmptyState()


@pytest.mark.parametrize("decay", DECAYS)
def test_schedule_is_evaluated_at_the_step_count(decay):
  """Step t (0-based) uses λ(t), as optax schedules and torch's LambdaLR do."""
  seen = []
  schedule = lambda count: 0.1 * (count + 1)
  tx = decay(schedule)
  state = tx.init(PARAMS)
  step = jax.jit(tx.update)
  zeros = jax.tree.map(jnp.zeros_like, GRADS)
  for _ in range(4):
    updates, state = step(zeros, state, PARAMS)
    seen.append(float(updates["b"][0] / PARAMS["b"][0]))
  np.testing.assert_allclose(seen, [0.1, 0.2, 0.3, 0.4], rtol=1e-6)


@pytest.mark.parametrize(
    "mask",
    [{"w": True, "b": False}, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)],
    ids=["pytree", "callable"],
)
def test_mask_selects_the_decayed_leaves(mask):
  tx = gt.decoupled_weight_decay(0.5, mask)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["w"], GRADS["w"] + 0.5 * PARAMS["w"], rtol=1e-6)
  np.testing.assert_array_equal(updates["b"], GRADS["b"])


def test_masked_schedule_still_counts_steps():
  tx = gt.decoupled_weight_decay(lambda c: 1.0 * c, {"w": True, "b": False})
  state = tx.init(PARAMS)
  zeros = jax.tree.map(jnp.zeros_like, GRADS)
  for _ in range(3):
    updates, state = tx.update(zeros, state, PARAMS)
  np.testing.assert_allclose(updates["w"], 2.0 * PARAMS["w"], rtol=1e-6)


def test_static_zero_needs_no_params_and_is_the_identity():
  tx = gt.decoupled_weight_decay(0.0)
  updates, _ = tx.update(GRADS, tx.init(PARAMS))
  for k in GRADS:
    np.testing.assert_array_equal(updates[k], GRADS[k])


def test_missing_params_is_an_error():
  tx = gt.decoupled_weight_decay(0.1)
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(GRADS, tx.init(PARAMS))


def test_injected_weight_decay_is_traced_and_applied():
  tx = optax.inject_hyperparams(gt.decoupled_weight_decay)(weight_decay=0.5)
  state = tx.init(PARAMS)
  updates, _ = jax.jit(tx.update)(GRADS, state, PARAMS)
  np.testing.assert_allclose(updates["b"], GRADS["b"] + 0.5 * PARAMS["b"], rtol=1e-6)


def test_placement_decides_coupled_versus_decoupled():
  """The same transform before or after Adam: L2 versus AdamW (seed 002).

  With a zero gradient, decay after Adam leaves λp (radial shrinkage); decay
  before Adam is normalised into ≈ sign(p), whatever |p|.
  """
  params = jnp.array([1e-2, -3.0, 200.0])
  zeros = jnp.zeros(3)
  decoupled = optax.chain(gt.scale_by_adam(), gt.decoupled_weight_decay(0.1))
  coupled = optax.chain(gt.coupled_weight_decay(0.1), gt.scale_by_adam())
  u_dec, _ = decoupled.update(zeros, decoupled.init(params), params)
  u_cou, _ = coupled.update(zeros, coupled.init(params), params)
  np.testing.assert_allclose(u_dec, 0.1 * params, rtol=1e-6)
  np.testing.assert_allclose(u_cou, np.sign(params), rtol=1e-4)


def _cautious_step(u, p, lr, wd):
  """p + (the update of decoupled cautious decay then −η), float64."""
  with jax.enable_x64(True):
    tx = optax.chain(gt.decoupled_weight_decay(wd, cautious_weight_decay=True),
                     gt.scale_by_learning_rate(lr))
    p_ = jnp.asarray(p)
    updates, _ = tx.update(jnp.asarray(u), tx.init(p_), p_)
    return np.asarray(p_ + updates)


def test_cautious_decay_matches_the_record_step_and_heavyball():
  """modded-nanogpt's ``p -= lr·u + lr·wd·p·[u·p >= 0]`` and heavyball's sign-bit
  rule, on random u and p (no zeros, where the two agree)."""
  rng = np.random.default_rng(0)
  u, p = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  ours = _cautious_step(u, p, 0.1, 0.5)
  np.testing.assert_allclose(ours, transcriptions.nanogpt_cautious_step(p, u, 0.1, 0.5),
                             rtol=1e-15)
  np.testing.assert_allclose(
      ours, transcriptions.heavyball_update(p, u, 0.5, 0.1, False, True, None), rtol=1e-15)
  agrees = u * p >= 0
  assert 0 < agrees.sum() < agrees.size
  np.testing.assert_allclose(ours[~agrees], (p - 0.1 * u)[~agrees], rtol=1e-15)


def test_cautious_decay_at_zero_updates_follows_the_record_step():
  """A zero update decays in full ((0·p >= 0): plain decay on zero gradients);
  heavyball leaves a negative weight alone there (+0 and p < 0 differ in sign bit)."""
  u, p = np.array([0.0, 0.0, 1.0]), np.array([-2.0, 2.0, -1.0])
  ours = _cautious_step(u, p, 0.1, 0.5)
  np.testing.assert_allclose(ours, transcriptions.nanogpt_cautious_step(p, u, 0.1, 0.5))
  assert transcriptions.heavyball_update(p, u, 0.5, 0.1, False, True, None)[0] == -2.0
  assert ours[0] == -2.0 * (1 - 0.05)


def test_cautious_decay_keeps_schedules_and_masks():
  mask = {"w": True, "b": False}
  tx = gt.decoupled_weight_decay(lambda count: 0.1 * (count + 1), mask,
                                 cautious_weight_decay=True)
  state = tx.init(PARAMS)
  for _ in range(2):
    updates, state = tx.update(GRADS, state, PARAMS)
  agrees = GRADS["w"] * PARAMS["w"] >= 0
  np.testing.assert_allclose(updates["w"], GRADS["w"] + 0.2 * PARAMS["w"] * agrees, rtol=1e-6)
  np.testing.assert_allclose(updates["b"], GRADS["b"])
