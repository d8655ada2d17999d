"""The batch-size learning-rate rule and the weight-decay schedules against their closed forms,
and a scheduled decay through AdamW against a NumPy AdamW with the same λ_t."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions

T = 40
WARMUP_COSINE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 8, T, end_value=1e-3)


@pytest.mark.parametrize("rule, exponent", [("linear", 1.0), ("sqrt", 0.5)])
@pytest.mark.parametrize("reference, batch", [(256, 1024), (128, 32), (64, 64), (3, 7)])
def test_learning_rate_rule_is_the_power_law(rule, exponent, reference, batch):
  expected = 3e-4 * (batch / reference) ** exponent
  got = go.learning_rate_for_batch_size(
      3e-4, reference_batch_size=reference, batch_size=batch, rule=rule)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-15)
  scaled = go.learning_rate_for_batch_size(
      WARMUP_COSINE, reference_batch_size=reference, batch_size=batch, rule=rule)
  counts = jnp.arange(T)
  np.testing.assert_allclose(
      scaled(counts), (batch / reference) ** exponent * WARMUP_COSINE(counts), rtol=1e-6)


def test_learning_rate_rule_defaults_to_linear():
  assert go.learning_rate_for_batch_size(
      0.1, reference_batch_size=32, batch_size=96) == pytest.approx(0.3, rel=1e-15)


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(reference_learning_rate=-1e-3), "reference_learning_rate"),
     (dict(reference_learning_rate="fast"), "reference_learning_rate"),
     (dict(batch_size=0), "batch_size"),
     (dict(batch_size=12.5), "batch_size"),
     (dict(reference_batch_size=-4), "reference_batch_size"),
     (dict(rule="cubic"), "rule")],
)
def test_learning_rate_rule_rejects_bad_arguments(kwargs, name):
  call = {**dict(reference_learning_rate=1e-3, reference_batch_size=32, batch_size=64), **kwargs}
  with pytest.raises(ValueError, match=rf"^{name} "):
    go.learning_rate_for_batch_size(call.pop("reference_learning_rate"), **call)


def test_cosine_growth_closed_form():
  wd = go.weight_decay_schedule(0.3, rule="cosine_growth", total_steps=T)
  t = np.arange(2 * T)
  expected = 0.3 * (1 - np.cos(np.pi * np.minimum(t, T) / T)) / 2
  np.testing.assert_allclose(wd(jnp.asarray(t)), expected, rtol=1e-6, atol=1e-9)
  assert float(wd(0)) == 0.0 and float(wd(T)) == pytest.approx(0.3)


def test_following_the_learning_rate_closed_form():
  wd = go.weight_decay_schedule(
      0.1, rule="learning_rate", total_steps=T, learning_rate=WARMUP_COSINE)
  t = jnp.arange(T)
  np.testing.assert_allclose(wd(t), 0.1 * WARMUP_COSINE(t) / 1e-2, rtol=1e-6, atol=1e-9)
  assert float(wd(8)) == pytest.approx(0.1)  # the peak learning rate
  constant = go.weight_decay_schedule(
      0.1, rule="learning_rate", total_steps=T, learning_rate=3e-4)
  assert float(constant(17)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(weight_decay=-0.1), "weight_decay"),
     (dict(rule="linear"), "rule"),
     (dict(total_steps=0), "total_steps"),
     (dict(total_steps=10.0), "total_steps"),
     (dict(learning_rate=1e-3), "learning_rate"),  # refused by cosine_growth
     (dict(rule="learning_rate"), "learning_rate"),  # required by it
     (dict(rule="learning_rate", learning_rate=-1.0), "learning_rate"),
     (dict(rule="learning_rate", learning_rate=lambda c: 0.0 * c), "learning_rate")],
)
def test_weight_decay_schedule_rejects_bad_arguments(kwargs, name):
  call = {**dict(weight_decay=0.1, rule="cosine_growth", total_steps=T), **kwargs}
  with pytest.raises(ValueError, match=rf"^{name} "):
    go.weight_decay_schedule(call.pop("weight_decay"), **call)


@pytest.mark.parametrize("rule", ["cosine_growth", "learning_rate"])
def test_adamw_with_scheduled_decay_matches_numpy(rule):
  problem = problems.LogisticProblem(seed=3, steps=T)
  lr = lambda t: 1e-2 * (0.2 + 0.8 * np.cos(0.5 * np.pi * t / T))  # for NumPy, t an int
  lr_jax = lambda c: 1e-2 * (0.2 + 0.8 * jnp.cos(0.5 * jnp.pi * c / T))
  extra = {} if rule == "cosine_growth" else {"learning_rate": lr_jax}
  with jax.enable_x64(True):
    wd = go.weight_decay_schedule(0.5, rule=rule, total_steps=T, **extra)
    ours = runners.run_gradtx(
        go.adamw(lr_jax, b2=0.99, weight_decay=wd), problem.params0, problem.grad, T)
  if rule == "cosine_growth":
    wd_numpy = lambda t: 0.5 * (1 - np.cos(np.pi * min(t, T) / T)) / 2
  else:
    wd_numpy = lambda t: 0.5 * lr(t) / lr(0)
  reference = transcriptions.adamw_numpy(
      problem.params0, problem.grad, T, lr, wd_numpy, b2=0.99)
  runners.assert_trajectories_close(ours, reference, 1e-10)
  # It discriminates: the constant final λ goes elsewhere.
  constant = transcriptions.adamw_numpy(
      problem.params0, problem.grad, T, lr, lambda t: 0.5, b2=0.99)
  assert runners.trajectory_errors(ours, constant)["params"] > 1e-4


FACTORIES = {
    "sgd": go.sgd, "adagrad": go.adagrad, "rmsprop": go.rmsprop, "adam": go.adam,
    "adamw": go.adamw, "adabelief": go.adabelief, "lion": go.lion, "tiger": go.tiger,
    "muon": go.muon, "shampoo": go.shampoo, "soap": go.soap, "adafactor": go.adafactor,
    "adam_mini": go.adam_mini, "adamw_8bit": go.adamw_8bit, "lamb": go.lamb,
    "lars": go.lars,
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_factory_takes_the_schedule_at_the_right_step(name):
  """λ_0 = 0: the first step is the undecayed one; λ_1 > 0: the second is not."""
  wd = go.weight_decay_schedule(0.5, rule="cosine_growth", total_steps=2)
  params = {"w": jnp.linspace(-1.0, 1.0, 24).reshape(4, 6), "b": jnp.linspace(0.5, 1.0, 6)}
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)

  def two_steps(weight_decay):
    tx = FACTORIES[name](1e-2, weight_decay=weight_decay)
    state, p, out = tx.init(params), params, []
    for _ in range(2):
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
      out.append(p)
    return out

  scheduled, undecayed = two_steps(wd), two_steps(0.0)
  for a, b in zip(jax.tree.leaves(scheduled[0]), jax.tree.leaves(undecayed[0])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # Relative to the second step's size (LARS's trust coefficient makes it small).
  moved = [np.abs(a - b).max() / np.abs(b - b0).max() for a, b, b0 in zip(
      jax.tree.leaves(scheduled[1]), jax.tree.leaves(undecayed[1]),
      jax.tree.leaves(undecayed[0]))]
  assert max(moved) > 1e-2, moved
