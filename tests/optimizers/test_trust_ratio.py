"""LARS and LAMB against NumPy transcriptions of their papers and against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners, transcriptions

STEPS = 40
PROBLEM = problems.LogisticProblem(seed=5, steps=STEPS)
# A decaying, jumping schedule, the same for NumPy (int t) and JAX (count).
FACTOR = lambda t: (1 + t % 3) / (1 + 0.1 * t)


def _lr(base, scheduled):
  if not scheduled:
    return base, base
  return (lambda t: base * FACTOR(t)), (lambda c: base * FACTOR(c.astype(jnp.float64)))


def _only_w(params):
  return {"w": True, "b": False}


@pytest.mark.parametrize(
    "kwargs, scheduled",
    [(dict(momentum=0.9, weight_decay=0.0), False),
     (dict(momentum=0.9, weight_decay=1e-2), True),
     (dict(momentum=0.8, nesterov=True, weight_decay=5e-2, eps=1e-3), False),
     (dict(momentum=0.9, weight_decay=1e-2, mask=_only_w), True)],
    ids=["plain", "decay+schedule", "nesterov+eps", "mask"],
)
def test_lars_matches_algorithm_1(kwargs, scheduled):
  numpy_lr, jax_lr = _lr(1.0, scheduled)
  # The paper's exemption covers the decay and the trust ratio: both masks.
  masks = {"trust_ratio_mask": kwargs["mask"]} if "mask" in kwargs else {}
  ours = runners.run_gradtx(
      go.lars(jax_lr, trust_coefficient=0.01, **kwargs, **masks), PROBLEM.params0,
      PROBLEM.grad, STEPS)
  kw = dict(kwargs)
  adapted = ["w"] if kw.pop("mask", None) else None
  reference = transcriptions.lars_numpy(
      PROBLEM.params0, PROBLEM.grad, STEPS, numpy_lr, trust_coefficient=0.01,
      adapted=adapted, **kw)
  runners.assert_trajectories_close(ours, reference, 1e-12)
  # It discriminates: momentum SGD at the same rate goes elsewhere.
  sgd = runners.run_gradtx(
      go.sgd(1e-2, momentum=kwargs["momentum"]), PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(sgd, reference)["params"] > 1e-3



def test_lars_takes_a_prefix_mask_as_its_full_tree():
  """optax.masked takes a mask that stops above the leaves; lars' combined
  decay mask crashed on one (a prefix tree mapped against a full one)."""
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}, "emb": jnp.ones((4, 3))}
  grads = jax.tree.map(lambda p: 0.1 * jnp.cos(p), params)
  prefix, full = {"dense": False, "emb": True}, {
      "dense": {"kernel": False, "bias": False}, "emb": True}
  for name in ("mask", "trust_ratio_mask"):
    runs = [go.lars(0.1, weight_decay=0.1, **{name: m}) for m in (prefix, full)]
    (a, _), (b, _) = (tx.update(grads, tx.init(params), params) for tx in runs)
    jax.tree.map(np.testing.assert_array_equal, a, b)

def test_lars_equals_optax_without_decay_and_departs_with_it():
  """optax.lars divides by ‖g + βw‖ where the paper has ‖g‖ + β‖w‖."""
  run = lambda tx: runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(
      run(go.lars(0.5, trust_coefficient=0.01, eps=1e-4)),
      run(optax.lars(0.5, trust_coefficient=0.01, eps=1e-4)), 1e-12)
  ours = run(go.lars(0.5, weight_decay=0.1, trust_coefficient=0.01))
  theirs = run(optax.lars(0.5, weight_decay=0.1, trust_coefficient=0.01))
  assert runners.trajectory_errors(ours, theirs)["updates"] > 1e-3


@pytest.mark.parametrize(
    "kwargs, scheduled",
    [(dict(), False),
     (dict(b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.1), True),
     (dict(weight_decay=0.1, mask=_only_w), False)],
    ids=["defaults", "betas+decay+schedule", "mask"],
)
def test_lamb_matches_algorithm_2_and_optax(kwargs, scheduled):
  numpy_lr, jax_lr = _lr(1e-2, scheduled)
  ours = runners.run_gradtx(go.lamb(jax_lr, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  kw = {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "weight_decay": 0.0, **kwargs}
  decayed = ["w"] if kw.pop("mask", None) else None
  reference = transcriptions.lamb_numpy(
      PROBLEM.params0, PROBLEM.grad, STEPS, numpy_lr, decayed=decayed, **kw)
  runners.assert_trajectories_close(ours, reference, 1e-12)
  theirs = runners.run_gradtx(
      optax.lamb(jax_lr, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, 1e-12)
  adamw = runners.run_gradtx(
      go.adamw(1e-2, eps=1e-6, weight_decay=0.0), PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(adamw, reference)["params"] > 1e-3


@pytest.mark.parametrize("factory", [go.lars, go.lamb])
def test_zero_initialised_leaf_moves(factory):
  """(Zero gradients are in tests/test_non_finite.py.)"""
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  tx = factory(0.1)
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.ones((3, 2)), "b": jnp.ones(2)}, state, params)
  assert float(jnp.abs(updates["b"]).min()) > 0  # ratio 1 for ‖b‖ = 0


def test_lamb_with_int8_moments_tracks_float32():
  """Quantized moments (``mu_dtype``/``nu_dtype``) work in LAMB's chain too."""
  run = lambda tx: runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grad, STEPS)
  int8 = gt.Int8Blocks(block_size=8, min_size=0)  # quantize even these tiny leaves
  full = run(go.lamb(1e-2))
  quantized = run(go.lamb(1e-2, mu_dtype=int8, nu_dtype=int8))
  errors = runners.trajectory_errors(quantized, full)
  assert 1e-5 < errors["params"] < 2e-2, errors
