"""The learning-rate step: u ← −η_t u, and the step count its schedule reads.

(Argument checks, zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt

G = jnp.array([1.0, -2.0, 0.5])


def test_constant_learning_rate_descends():
  tx = gt.scale_by_learning_rate(0.1)
  updates, state = tx.update(G, tx.init(G))
  np.testing.assert_allclose(updates, -0.1 * G, rtol=1e-6)
  assert state == optax.EmptyState()  # only a schedule needs the step count


def test_one_count_in_an_optimizers_state_as_in_optax():
  """optax.tree_utils.tree_get(state, "count") finds the step, as it does in
  optax's adam, adamw, lion and lamb (the learning rate, the decoupled decay
  and the trust ratio each kept a count of their own before: KeyError)."""
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  for name in ("adam", "adamw", "lion", "lamb"):
    state = getattr(go, name)(1e-3).init(params)
    assert int(optax.tree_utils.tree_get(state, "count")) == 0, name
  scheduled = go.adamw(optax.linear_schedule(1e-3, 0.0, 10)).init(params)
  counts = [k for k, _ in jax.tree_util.tree_leaves_with_path(scheduled)
            if "count" in jax.tree_util.keystr(k)]
  assert len(counts) == 2  # the moments' and the schedule's

def test_flip_sign_false_ascends():
  tx = gt.scale_by_learning_rate(0.1, flip_sign=False)
  updates, _ = tx.update(G, tx.init(G))
  np.testing.assert_allclose(updates, 0.1 * G, rtol=1e-6)


def test_schedule_is_evaluated_at_the_step_count():
  """The first update uses η(0), the t-th (0-based) η(t)."""
  tx = gt.scale_by_learning_rate(lambda count: 0.5 ** count)
  state = tx.init(G)
  step = jax.jit(tx.update)
  for t in range(5):
    updates, state = step(G, state)
    np.testing.assert_allclose(updates, -(0.5**t) * G, rtol=1e-6)
  assert int(state.count) == 5


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda lr: go.sgd(lr, momentum=0.9),
        lambda lr: go.adam(lr),
        lambda lr: go.adamw(lr, weight_decay=0.1),
        lambda lr: go.rmsprop(lr, momentum=0.5),
        lambda lr: go.lion(lr, weight_decay=0.1),
    ],
    ids=["sgd", "adam", "adamw", "rmsprop", "lion"],
)
def test_optimizer_chains_read_the_schedule_at_the_same_count(optimizer):
  """η(0) = 0: the first step must not move; η(1) > 0: the second must."""
  tx = optimizer(lambda count: jnp.where(count == 0, 0.0, 0.1))
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates, state = step(jnp.array([0.3, 0.4]), state, params)
  np.testing.assert_array_equal(updates, [0.0, 0.0])
  updates, state = step(jnp.array([0.3, 0.4]), state, params)
  assert np.all(np.abs(updates) > 1e-3)


def test_injected_learning_rate_can_change_between_steps():
  tx = optax.inject_hyperparams(gt.scale_by_learning_rate)(learning_rate=0.1)
  state = tx.init(G)
  step = jax.jit(tx.update)
  updates, state = step(G, state)
  np.testing.assert_allclose(updates, -0.1 * G, rtol=1e-6)
  state.hyperparams["learning_rate"] = jnp.asarray(0.3)
  updates, state = step(G, state)
  np.testing.assert_allclose(updates, -0.3 * G, rtol=1e-6)
