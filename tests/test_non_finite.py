"""Non-finite and zero gradients, for every optimizer of the case registry.

The contract (README, Conventions: Non-finite gradients): a NaN gradient
coordinate gives a NaN update coordinate (and NaN moments) for every
optimizer: nothing is masked silently, AMSGrad's running maximum included.
Skipping bad steps is opt-in, through ``optax.apply_if_finite``, which leaves
the inner state untouched. (``adamw_8bit`` zeroes such coordinates instead, as
bitsandbytes does, and says so in ``scale_by_adam``'s docstring; its test
records the exception.) An infinite gradient is checked where a rule could
hide it: sign-based rules (jnp.sign(±inf) = ±1), the soft sign and the
trust ratio give NaN. Zero gradients give finite updates, also after a
thousand steps of them, and leave only the decoupled weight decay where there
is one.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.support.cases import (
    CASES,
    LR,
    SCHEDULE,
    STRUCTURED,
    cases,
    every_case,
    run_shared,
    shared_step,
)
from tests.support.helpers import GRADS, PARAMS, bit_identical, floating_leaves


def _with_nan(grads):
  return {**grads, "w": grads["w"].at[1, 0].set(jnp.nan)}


@every_case
def test_nan_gradient_propagates_into_updates(case):
  scheduled = case in STRUCTURED  # the step test_integration compiles for it
  _, state, _ = run_shared(case.name, GRADS[:1], scheduled)
  _, state, (updates,) = run_shared(case.name, [_with_nan(GRADS[1])], scheduled, state)
  if case.name == "adamw_8bit":
    # Documented exception (scale_by_adam with int8 states, as bitsandbytes):
    # a NaN would spoil its whole quantization block, so the coordinate gets
    # a zero Adam step (only the weight decay moves it) and a reset moment.
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
    assert all(bool(jnp.isfinite(x).all()) for x in floating_leaves(state))
    return
  if case.name == "prodigy":
    # One step size D for the whole tree (one per group in the official code,
    # a Python float there): a NaN gradient makes D, and so every leaf's
    # update, NaN; README, Non-finite gradients.
    assert all(bool(jnp.isnan(u).all()) for u in jax.tree.leaves(updates))
    assert bool(jnp.isnan(state.d))
    return
  if case.name in ("dog", "dowg", "mechanize"):
    # One step size (Mechanic: one scale) from norms over the whole tree: a
    # NaN gradient makes it, and so every leaf's update, NaN (README,
    # Non-finite gradients).
    assert all(bool(jnp.isnan(u).all()) for u in jax.tree.leaves(updates))
    return
  if case.name == "ldog":  # LDoG: one step size per leaf, NaN on the NaN's leaf
    assert bool(jnp.isnan(updates["w"]).all())
    assert all(bool(jnp.isfinite(u).all()) for k, u in updates.items() if k != "w")
    return
  if case.name == "dadapt_adamw":
    # m holds λ_t·g at the step's old D: the NaN coordinate's step is NaN at
    # once, D is NaN, and from the next step on every leaf's is (README).
    assert bool(jnp.isnan(updates["w"][1, 0])) and bool(jnp.isnan(state.d))
    _, _, (later,) = run_shared(case.name, GRADS[2:3], scheduled, state)
    assert all(bool(jnp.isnan(u).all()) for u in jax.tree.leaves(later))
    return
  assert bool(jnp.isnan(updates["w"][1, 0])), updates["w"]
  # Element-wise rules poison only that coordinate; matrix and block rules
  # (orthogonalization, preconditioners, shared scales) may spread it within
  # the leaf. Other leaves are untouched.
  if case.elementwise:
    assert int(jnp.isnan(updates["w"]).sum()) == 1
  assert bool(jnp.all(jnp.isfinite(updates["b"])))
  # Stateful optimizers remember it: later updates stay NaN there.
  if floating_leaves(state):
    assert any(bool(jnp.isnan(x).any()) for x in floating_leaves(state))
    _, _, (updates,) = run_shared(case.name, GRADS[2:3], scheduled, state)
    assert bool(jnp.isnan(updates["w"][1, 0]))


def _with_inf(grads):
  return {**grads, "w": grads["w"].at[1, 0].set(jnp.inf)}


# Where an inf could vanish: a sign, or a trust ratio's division by its norm.
SIGN_OR_TRUST = [c for c in CASES if c.sign_based or c.factory in (go.lars, go.lamb)]


@pytest.mark.parametrize("case", SIGN_OR_TRUST, ids=[c.name for c in SIGN_OR_TRUST])
def test_inf_gradient_is_not_hidden_by_a_sign_or_a_trust_ratio(case):
  """jnp.sign(±inf) is ±1 and a trust ratio of an infinite norm 0: the step
  would look finite, and Lion's, Tiger's and Signum's inf momentum would then
  step ±1 for ever whatever the gradient. They give NaN instead."""
  tx = case.make()
  state = tx.init(PARAMS)
  updates, state = tx.update(_with_inf(GRADS[0]), state, PARAMS)
  assert bool(jnp.isnan(updates["w"][1, 0]))
  assert bool(jnp.all(jnp.isfinite(updates["b"])))
  if floating_leaves(state):  # the momentum remembers it
    updates, _ = tx.update(GRADS[1], state, PARAMS)
    assert not bool(jnp.isfinite(updates["w"][1, 0]))


def test_soft_sign_keeps_nan_and_inf_visible():
  updates, _ = gt.scale_by_sign(tau=0.1).update(
      jnp.array([0.5, jnp.nan, -2.0, jnp.inf]), optax.EmptyState())
  updates = np.asarray(updates)
  np.testing.assert_allclose(updates[[0, 2]], [0.5 / 0.6, -2.0 / 2.1], rtol=1e-6)
  assert np.isnan(updates[1]) and np.isnan(updates[3])


@pytest.mark.parametrize(
    "factory", [go.adam, go.adamw], ids=["adam", "adamw"]
)
def test_amsgrad_maximum_does_not_swallow_nan(factory):
  tx = factory(LR, amsgrad=True)
  big = jax.tree.map(lambda g: 100 * g, GRADS[0])
  _, state = tx.update(big, tx.init(PARAMS), PARAMS)
  _, state = tx.update(_with_nan(GRADS[1]), state, PARAMS)
  adam_state = state[0] if factory is go.adamw else state[1]
  assert bool(jnp.isnan(adam_state.nu_max["w"][1, 0]))
  updates, state = tx.update(GRADS[2], state, PARAMS)
  assert bool(jnp.isnan(updates["w"][1, 0]))



@pytest.mark.parametrize("factory, stays_zero", [
    (lambda: go.adafactor(LR, b1=0.9, mu_dtype="int8"), True),
    (lambda: go.lars(LR, mu_dtype="int8"), False),
], ids=["adafactor", "lars"])
def test_an_int8_momentum_after_a_per_leaf_reduction_zeroes_the_leaf(factory, stays_zero):
  """README, Non-finite gradients: a NaN spread over the whole leaf by a
  reduction before the int8 momentum (Adafactor's factored statistics, LARS's
  trust ratio) meets the int8 guard everywhere: the leaf's update is zero,
  not NaN. Adafactor's statistics stay NaN, so every later step of the leaf
  is zero too; LARS keeps no such statistic and steps again."""
  tx = factory()
  params = {"w": jnp.full((128, 64), 0.1)}
  grad = lambda t: {"w": jnp.linspace(-1, 1, 128 * 64).reshape(128, 64) * (t + 1)}
  state = tx.update(grad(0), tx.init(params), params)[1]
  assert any(isinstance(x, gt.QuantizedArray) for x in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, gt.QuantizedArray)))
  updates, state = tx.update({"w": grad(1)["w"].at[1, 0].set(jnp.nan)}, state, params)
  assert bool(jnp.all(updates["w"] == 0))
  for t in (2, 3):
    updates, state = tx.update(grad(t), state, params)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
    assert bool(jnp.all(updates["w"] == 0)) == stays_zero


@cases
def test_apply_if_finite_skips_step_and_keeps_state(case):
  max_errors = 2
  tx = optax.apply_if_finite(case.make(), max_consecutive_errors=max_errors)
  update = jax.jit(tx.update)
  updates, state = update(GRADS[0], tx.init(PARAMS), PARAMS)
  before = state.inner_state

  for i in range(max_errors):
    updates, state = update(_with_nan(GRADS[1]), state, PARAMS)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
    assert bit_identical(state.inner_state, before)
    assert int(state.notfinite_count) == i + 1

  # A finite step afterwards goes through and equals the step never skipped.
  _, ref_state, _ = run_shared(case.name, GRADS[:1])
  _, _, (ref_updates,) = run_shared(case.name, GRADS[2:3], state=ref_state)
  updates, state = update(GRADS[2], state, PARAMS)
  chex.assert_trees_all_close(updates, ref_updates, rtol=1e-6, atol=1e-7)
  assert int(state.notfinite_count) == 0

  # More than max_consecutive_errors in a row: the NaN is let through, loudly.
  for _ in range(max_errors + 1):
    updates, state = update(_with_nan(GRADS[3]), state, PARAMS)
  assert bool(jnp.isnan(updates["w"][1, 0]))
  assert update._cache_size() == 1


@every_case
def test_zero_gradients_give_finite_updates(case):
  scheduled = case in STRUCTURED
  tx, step = shared_step(case.name, scheduled)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)

  _, _, (fresh,) = run_shared(case.name, [zeros], scheduled)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(fresh))
  if not case.decays_weights:
    chex.assert_trees_all_equal(fresh, zeros)

  # One real step, then many zero ones: moments decay towards 0 (and
  # underflow, for b1 = 0.9, after ~900 steps) without producing 0/0.
  params, state, _ = run_shared(case.name, GRADS[:1], scheduled)
  for _ in range(1000):
    params, state, updates = step(params, state, zeros)
  for tree in (params, state, updates):
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in floating_leaves(tree))
  assert step._cache_size() == 1


@pytest.mark.parametrize(
    "case", [c for c in CASES + STRUCTURED if c.decoupled_decay], ids=lambda c: c.name)
def test_zero_gradients_leave_only_the_decoupled_weight_decay(case):
  """Four zero-gradient steps from a fresh state: u = −η_t λ p_t on the
  decayed leaves, 0 on the others (a 0/0 would show as NaN, a stray
  preconditioner or first-step quirk as another value)."""
  scheduled = case in STRUCTURED
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  mask = case.decay_mask(PARAMS)
  _, _, updates_seq = run_shared(case.name, [zeros] * 4, scheduled)
  params = PARAMS
  for t, updates in enumerate(updates_seq):
    eta = float(SCHEDULE(t)) if scheduled else LR
    for k, p in params.items():
      expected = -eta * case.weight_decay * p if mask[k] else jnp.zeros_like(p)
      np.testing.assert_allclose(updates[k], expected, rtol=1e-5, atol=1e-9, err_msg=k)
    params = optax.apply_updates(params, updates)
