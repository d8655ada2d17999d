"""Adaptive optimizers against torch.optim (float64, 60 steps) and the papers.

Adagrad, RMSprop, Adam and AdamW must follow their ``torch.optim`` namesakes
to float64 round-off over a whole trajectory; AdaBelief follows Algorithm 2 of
its paper (NumPy transcription in ``tests/oracles.py``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from gradtx import optimizers as go
from tests import oracles

STEPS = 60
TOLERANCE = 1e-8
PROBLEM = oracles.LogisticProblem(seed=2, steps=STEPS)


def _assert_close(ours, ref, tolerance=TOLERANCE):
  oracles.assert_trajectories_close(ours, ref, tolerance)


def _run_both(ours_tx, make_torch, **torch_kwargs):
  ours = oracles.run_gradtx(ours_tx, PROBLEM.params0, PROBLEM.grad, STEPS)
  ref = oracles.run_torch(
      make_torch, PROBLEM.params0, PROBLEM.grad, STEPS, **torch_kwargs
  )
  return ours, ref


# name: (gradtx factory, torch factory)
TORCH_CASES = {
    "adagrad": (
        lambda: go.adagrad(0.1),
        lambda p: torch.optim.Adagrad(p.values(), lr=0.1),
    ),
    "adagrad_initial_accumulator": (
        lambda: go.adagrad(0.1, initial_accumulator_value=0.5),
        lambda p: torch.optim.Adagrad(
            p.values(), lr=0.1, initial_accumulator_value=0.5
        ),
    ),
    "adagrad_weight_decay": (
        lambda: go.adagrad(0.1, initial_accumulator_value=0.1, weight_decay=0.05),
        lambda p: torch.optim.Adagrad(
            p.values(), lr=0.1, initial_accumulator_value=0.1, weight_decay=0.05
        ),
    ),
    "rmsprop": (
        lambda: go.rmsprop(0.01),
        lambda p: torch.optim.RMSprop(p.values(), lr=0.01),
    ),
    "rmsprop_momentum": (
        lambda: go.rmsprop(0.01, decay=0.9, momentum=0.8),
        lambda p: torch.optim.RMSprop(p.values(), lr=0.01, alpha=0.9, momentum=0.8),
    ),
    "rmsprop_centered_momentum": (
        lambda: go.rmsprop(0.01, decay=0.95, momentum=0.9, centered=True),
        lambda p: torch.optim.RMSprop(
            p.values(), lr=0.01, alpha=0.95, momentum=0.9, centered=True
        ),
    ),
    "rmsprop_centered_weight_decay": (
        lambda: go.rmsprop(0.01, eps=1e-6, centered=True, weight_decay=0.1),
        lambda p: torch.optim.RMSprop(
            p.values(), lr=0.01, eps=1e-6, centered=True, weight_decay=0.1
        ),
    ),
    "adam": (
        lambda: go.adam(0.05),
        lambda p: torch.optim.Adam(p.values(), lr=0.05),
    ),
    "adam_betas_eps": (
        lambda: go.adam(0.05, b1=0.8, b2=0.95, eps=1e-3),
        lambda p: torch.optim.Adam(p.values(), lr=0.05, betas=(0.8, 0.95), eps=1e-3),
    ),
    "adam_weight_decay": (
        lambda: go.adam(0.05, weight_decay=0.1),
        lambda p: torch.optim.Adam(p.values(), lr=0.05, weight_decay=0.1),
    ),
    "adam_amsgrad": (
        lambda: go.adam(0.05, b2=0.9, amsgrad=True),
        lambda p: torch.optim.Adam(
            p.values(), lr=0.05, betas=(0.9, 0.9), amsgrad=True
        ),
    ),
    "adam_amsgrad_weight_decay": (
        lambda: go.adam(0.05, b2=0.9, weight_decay=0.1, amsgrad=True),
        lambda p: torch.optim.Adam(
            p.values(), lr=0.05, betas=(0.9, 0.9), weight_decay=0.1, amsgrad=True
        ),
    ),
    "adamw_default_decay": (
        lambda: go.adamw(0.05),
        lambda p: torch.optim.AdamW(p.values(), lr=0.05),
    ),
    "adamw_weight_decay": (
        lambda: go.adamw(0.05, b1=0.85, b2=0.98, weight_decay=0.5),
        lambda p: torch.optim.AdamW(
            p.values(), lr=0.05, betas=(0.85, 0.98), weight_decay=0.5
        ),
    ),
    "adamw_amsgrad": (
        lambda: go.adamw(0.05, b2=0.9, weight_decay=0.3, amsgrad=True),
        lambda p: torch.optim.AdamW(
            p.values(), lr=0.05, betas=(0.9, 0.9), weight_decay=0.3, amsgrad=True
        ),
    ),
    "adamw_no_decay": (
        lambda: go.adamw(0.05, weight_decay=0.0),
        lambda p: torch.optim.AdamW(p.values(), lr=0.05, weight_decay=0.0),
    ),
    "adamw_mask_vs_param_groups": (
        lambda: go.adamw(0.05, weight_decay=0.5, mask={"w": True, "b": False}),
        lambda p: torch.optim.AdamW(
            [
                {"params": [p["w"]], "weight_decay": 0.5},
                {"params": [p["b"]], "weight_decay": 0.0},
            ],
            lr=0.05,
        ),
    ),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(name):
  make_ours, make_torch = TORCH_CASES[name]
  _assert_close(*_run_both(make_ours(), make_torch))


def _lr_factor(t):
  # Changes at every step, so that an off-by-one in the step count shows.
  return (1 + t % 3) / (1 + 0.05 * t)


def _wd_value(t):
  return 0.1 + 0.2 * (t % 2)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_lambda_lr_matches_torch(amsgrad):
  base_lr = 0.05
  schedule = lambda count: base_lr * _lr_factor(count.astype(jnp.float64))
  _assert_close(*_run_both(
      go.adam(schedule, weight_decay=0.05, amsgrad=amsgrad),
      lambda p: torch.optim.Adam(
          p.values(), lr=base_lr, weight_decay=0.05, amsgrad=amsgrad
      ),
      lr_lambda=_lr_factor,
  ))


def test_adamw_lr_and_weight_decay_schedules_match_torch_param_groups():
  """lr and λ both scheduled; torch's param_groups are set by hand per step.

  torch.optim.AdamW decays by p ← p(1 − lr_t λ_t) with the current group
  values, so this checks both schedules are read at the same step count.
  """
  base_lr = 0.05

  def before_step(optimizer, t):
    for group in optimizer.param_groups:
      group["lr"] = base_lr * _lr_factor(t)
      group["weight_decay"] = _wd_value(t)

  _assert_close(*_run_both(
      go.adamw(
          lambda c: base_lr * _lr_factor(c.astype(jnp.float64)),
          weight_decay=lambda c: _wd_value(c.astype(jnp.float64)),
      ),
      lambda p: torch.optim.AdamW(p.values(), lr=base_lr),
      before_step=before_step,
  ))


def test_optax_amsgrad_differs_from_torch():
  """optax.amsgrad maximises the bias-corrected v̂; torch the raw v.

  go.adam(amsgrad=True) follows torch (test_matches_torch[adam_amsgrad]);
  this documents that optax's variant is a different optimizer, so it could
  not have served as the reference.
  """
  ours, ref = _run_both(
      optax.amsgrad(0.05, b2=0.9),
      lambda p: torch.optim.Adam(p.values(), lr=0.05, betas=(0.9, 0.9), amsgrad=True),
  )
  assert oracles.trajectory_errors(ours, ref)["updates"] > 1e-2


def test_adabelief_matches_paper_algorithm_2():
  for kwargs in [dict(eps=1e-16), dict(b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.2)]:
    ours = oracles.run_gradtx(
        go.adabelief(0.02, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS
    )
    ref = oracles.adabelief_numpy(
        PROBLEM.params0, PROBLEM.grad, STEPS, 0.02,
        kwargs.get("b1", 0.9), kwargs.get("b2", 0.999), kwargs["eps"],
        kwargs.get("weight_decay", 0.0),
    )
    _assert_close(ours, ref, tolerance=1e-10)


def test_adabelief_eps_sits_inside_the_second_moment():
  """With b1 = 0 the first belief residual g − m_1 is 0, so s_1 = ε exactly.

  Then ŝ_1 = ε/(1 − β2) and u = g/(√ŝ_1 + ε); with ε only outside the root
  (optax's default form) it would be g/ε, 30x larger here.
  """
  eps, b2, g = 1e-2, 0.9, 0.05
  tx = go.adabelief(1.0, b1=0.0, b2=b2, eps=eps)
  params = jnp.zeros(1)
  updates, state = tx.update(jnp.full(1, g), tx.init(params), params)
  np.testing.assert_allclose(state[0].nu, [eps], rtol=1e-6)
  np.testing.assert_allclose(
      updates, [-g / (np.sqrt(eps / (1 - b2)) + eps)], rtol=1e-6
  )


# Seed 002: with a zero data gradient, AdamW shrinks multiplicatively while
# Adam + L2 moves every weight by about lr·sign(w) whatever its size.

SEED_WEIGHTS = np.array([3e-2, -0.4, 5.0, -60.0, 700.0])
SEED_LR, SEED_DECAY, SEED_STEPS = 1e-3, 0.1, 10


def _zero_gradient_deltas(tx):
  with jax.enable_x64(True):
    params = jnp.asarray(SEED_WEIGHTS)
    state = tx.init(params)
    step = jax.jit(lambda p, s: _apply(tx, p, s))
    history = [np.asarray(params)]
    for _ in range(SEED_STEPS):
      params, state = step(params, state)
      history.append(np.asarray(params))
  history = np.stack(history)
  return history[:-1], np.diff(history, axis=0)


def _apply(tx, params, state):
  updates, state = tx.update(jnp.zeros_like(params), state, params)
  return optax.apply_updates(params, updates), state


def test_seed_002_adamw_shrinks_weights_multiplicatively():
  weights, deltas = _zero_gradient_deltas(
      go.adamw(SEED_LR, weight_decay=SEED_DECAY)
  )
  # Δw = −ηλw at every step, for weights over five orders of magnitude.
  np.testing.assert_allclose(deltas, -SEED_LR * SEED_DECAY * weights, rtol=1e-9)
  np.testing.assert_allclose(
      weights[-1] / SEED_WEIGHTS, (1 - SEED_LR * SEED_DECAY) ** (SEED_STEPS - 1),
      rtol=1e-12,
  )


def test_seed_002_adam_l2_moves_every_weight_by_about_lr():
  weights, deltas = _zero_gradient_deltas(
      go.adam(SEED_LR, weight_decay=SEED_DECAY)
  )
  # Δw ≈ −η·sign(w) whatever |w|: the decay is normalised away. (Only about:
  # the smallest weight loses 3% per step, so the moments lag behind λw.)
  decay_grad = SEED_DECAY * weights[0]  # the first step, in closed form
  np.testing.assert_allclose(
      deltas[0], -SEED_LR * decay_grad / (np.abs(decay_grad) + 1e-8), rtol=1e-9
  )
  np.testing.assert_allclose(deltas, -SEED_LR * np.sign(weights), rtol=5e-2)
  relative_shrink = np.abs(deltas / weights)
  assert relative_shrink.max() / relative_shrink.min() > 1e4


def test_adamw_bf16_moments_store_bf16_and_track_float32():
  params0 = {k: jnp.asarray(v, jnp.float32) for k, v in PROBLEM.params0.items()}

  def run(tx, steps=20):
    params, state = params0, tx.init(params0)
    step = jax.jit(lambda p, s, g: _apply_grads(tx, p, s, g))
    trajectory = []
    for t in range(steps):
      grads = PROBLEM.grad({k: np.asarray(v, np.float64) for k, v in params.items()}, t)
      grads = {k: jnp.asarray(v, jnp.float32) for k, v in grads.items()}
      params, state = step(params, state, grads)
      trajectory.append(params)
    return trajectory, state

  ref, _ = run(go.adamw(0.01, weight_decay=0.1))
  low, state = run(
      go.adamw(0.01, weight_decay=0.1, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  )
  adam_state = state[0]
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam_state.mu))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam_state.nu))
  for a, r in zip(low, ref):
    for k in r:
      assert a[k].dtype == jnp.float32
      moved = np.abs(np.asarray(r[k]) - PROBLEM.params0[k]).max()
      # bf16 keeps 8 bits: a per-step relative error of ~2^-8 on the update.
      assert np.abs(np.asarray(a[k]) - np.asarray(r[k])).max() <= 2e-2 * moved


def _apply_grads(tx, params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state
