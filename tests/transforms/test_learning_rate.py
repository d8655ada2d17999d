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


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "lamb"])
def test_a_schedule_follows_torchs_scheduler_to_float64_round_off(optimizer):
  """30 float64 steps of a least-squares problem with an exponentially decaying
  learning rate and weight decay, against torch.optim with ExponentialLR. The
  schedules were read at the int32 step count, so optax gave float32 rates
  (1e-7 off torch's trajectory)."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  a, b, w0 = rng.normal(size=(8, 5)), rng.normal(size=8), rng.normal(size=5)
  decay = lambda lr: optax.exponential_decay(lr, 1, 0.9)
  with jax.enable_x64(True):
    factories = {"sgd": lambda: go.sgd(decay(0.05), momentum=0.9, weight_decay=decay(0.1)),
                 "adamw": lambda: go.adamw(decay(0.05), weight_decay=decay(0.1)),
                 "lamb": lambda: go.lamb(decay(0.05), weight_decay=decay(0.1))}
    tx = factories[optimizer]()
    w = jnp.asarray(w0)
    state = tx.init(w)
    ours = []
    for _ in range(30):
      updates, state = tx.update(jnp.asarray(a.T @ (a @ np.asarray(w) - b)), state, w)
      w = optax.apply_updates(w, updates)
      ours.append(np.asarray(w))
  if optimizer == "lamb":  # torch has no LAMB: the rate and the decay a float64 closed form
    rates = [0.05 * 0.9 ** t for t in range(30)]
    reference = _lamb_reference(a, b, w0, rates, [0.1 * 0.9 ** t for t in range(30)])
  else:
    tw = torch.tensor(w0, requires_grad=True)
    opt = (torch.optim.SGD([tw], lr=0.05, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW([tw], lr=0.05, weight_decay=0.1))
    schedule = torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)
    reference = []
    for t in range(30):
      if optimizer == "sgd":  # torch's decay is coupled; gradtx's sgd adds wd·p to the gradient
        tw.grad = torch.tensor(a.T @ (a @ tw.detach().numpy() - b)) + 0.1 * 0.9 ** t * tw.detach()
      else:  # torch's AdamW decays by lr·wd, with a constant wd: scale it by hand
        opt.param_groups[0]["weight_decay"] = 0.1 * 0.9 ** t
        tw.grad = torch.tensor(a.T @ (a @ tw.detach().numpy() - b))
      opt.step()
      schedule.step()
      reference.append(tw.detach().numpy().copy())
  np.testing.assert_allclose(np.stack(ours), np.stack(reference), rtol=1e-12, atol=1e-13)


def _lamb_reference(a, b, w, rates, decays, b1=0.9, b2=0.999, eps=1e-6):
  """LAMB (You et al. 2020, Algorithm 2), in float64 NumPy."""
  m, v, out = np.zeros_like(w), np.zeros_like(w), []
  for t, (lr, wd) in enumerate(zip(rates, decays), start=1):
    g = a.T @ (a @ w - b)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    r = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * w
    w = w - lr * np.linalg.norm(w) / np.linalg.norm(r) * r
    out.append(w.copy())
  return out
