"""Adam, AdamW against torch.optim (float64, 60 steps), and AdamW's storage formats.

Adam and AdamW must follow their ``torch.optim`` namesakes to float64
round-off over a whole trajectory, with schedules of the learning rate and
the weight decay; 8-bit AdamW (``adamw_8bit``) is AdamW with int8 moments,
and takes bitsandbytes' ``AdamW8bit`` steps from bitsandbytes' own state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners, torch_runners, transcriptions
from tests.support import helpers

STEPS = 60
TOLERANCE = 1e-8
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)


# name: (gradtx factory, torch factory)
TORCH_CASES = {
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
  runners.assert_trajectories_close(
      *torch_runners.run_gradtx_and_torch(make_ours(), make_torch, PROBLEM, STEPS), TOLERANCE)


def _lr_factor(t):
  # Changes at every step, so that an off-by-one in the step count shows.
  return (1 + t % 3) / (1 + 0.05 * t)


def _wd_value(t):
  return 0.1 + 0.2 * (t % 2)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_lambda_lr_matches_torch(amsgrad):
  base_lr = 0.05
  schedule = lambda count: base_lr * _lr_factor(count.astype(jnp.float64))
  runners.assert_trajectories_close(*torch_runners.run_gradtx_and_torch(
      go.adam(schedule, weight_decay=0.05, amsgrad=amsgrad),
      lambda p: torch.optim.Adam(
          p.values(), lr=base_lr, weight_decay=0.05, amsgrad=amsgrad
      ),
      PROBLEM, STEPS, lr_lambda=_lr_factor,
  ), TOLERANCE)


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

  runners.assert_trajectories_close(*torch_runners.run_gradtx_and_torch(
      go.adamw(
          lambda c: base_lr * _lr_factor(c.astype(jnp.float64)),
          weight_decay=lambda c: _wd_value(c.astype(jnp.float64)),
      ),
      lambda p: torch.optim.AdamW(p.values(), lr=base_lr),
      PROBLEM, STEPS, before_step=before_step,
  ), TOLERANCE)


def test_optax_amsgrad_differs_from_torch():
  """optax.amsgrad maximises the bias-corrected v̂; torch the raw v.

  go.adam(amsgrad=True) follows torch (test_matches_torch[adam_amsgrad]);
  this documents that optax's variant is a different optimizer, so it could
  not have served as the reference.
  """
  ours, ref = torch_runners.run_gradtx_and_torch(
      optax.amsgrad(0.05, b2=0.9),
      lambda p: torch.optim.Adam(p.values(), lr=0.05, betas=(0.9, 0.9), amsgrad=True),
      PROBLEM, STEPS,
  )
  assert runners.trajectory_errors(ours, ref)["updates"] > 1e-2


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


# 8-bit AdamW -----------------------------------------------------------------


def test_adamw_8bit_is_adamw_with_int8_moments():
  params = {"w": jnp.zeros((64, 128)), "b": jnp.zeros(128)}
  state = go.adamw_8bit(1e-3, block_size=512).init(params)[0]
  assert isinstance(state.mu["w"], gt.QuantizedArray) and state.mu["w"].block_size == 512
  assert state.mu["w"].signed and not state.nu["w"].signed
  assert state.mu["b"].dtype == jnp.float32


def test_adamw_8bit_tracks_adamw_on_a_regression():
  """Deterministic; the bounds hold with ~40% margin under 1e-4 changes of
  b1 and b2 (loss ratio 5.6%, parameter gap 2.3%)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 64))
  w_true = rng.normal(size=(64, 96)) * np.logspace(-1, 0, 96)
  y = x @ w_true + 0.1 * rng.normal(size=(256, 96))
  params0 = {"w": np.zeros((64, 96)), "b": np.zeros(96)}

  def grad(p, t):
    batch = np.random.default_rng(t).integers(0, 256, 32)
    residual = (x[batch] @ p["w"] + p["b"] - y[batch]) / 32
    return {"w": x[batch].T @ residual, "b": residual.sum(0)}

  def loss(p):
    return float(np.mean((x @ p["w"] + p["b"] - y) ** 2))

  schedule = optax.cosine_decay_schedule(3e-2, 300)
  full = runners.run_quadratic(
      go.adamw(schedule, weight_decay=1e-4), params0, grad, 300, jnp.float32)
  int8 = runners.run_quadratic(
      go.adamw_8bit(schedule, weight_decay=1e-4), params0, grad, 300, jnp.float32)
  # Both fit to within ~2x the noise floor (0.01); near it, 8-bit first
  # moments cost a few percent of the final loss (their rounding errors stay
  # correlated from step to step), bf16 round-to-nearest ~1%.
  assert loss(full[-1]) < 0.003 * loss(full[0])
  assert abs(loss(int8[-1]) / loss(full[-1]) - 1) < 0.08
  gap = max(np.abs(a["w"] - b["w"]).max() for a, b in zip(int8, full))
  assert gap < 0.03 * np.abs(full[-1]["w"]).max()



def test_adamw_8bit_steps_a_rarely_seen_coordinate_as_adamw_does():
  """A coordinate whose gradient is 1e-4 of its block's largest has v below
  the smallest unsigned code; where nearest rounding stores that v as 0
  (bitsandbytes' CUDA kernel) its next step with a zero gradient (an
  embedding row missing from the batch) is m/eps, 4e3 x lr here. Kept at the
  smallest code, the step stays at most float32 AdamW's."""
  lr, g1 = 1e-3, np.full(4096, 0.1, np.float32)
  g1[0] = 1e3
  g2 = g1.copy()
  g2[1] = 0.0
  runs = {}
  for name, tx in [("int8", go.adamw_8bit(lr, weight_decay=0.0)),
                   ("float32", optax.adamw(lr, weight_decay=0.0))]:
    p = jnp.zeros(4096)
    state = tx.init(p)
    for g in (g1, g2):
      u, state = tx.update(jnp.asarray(g), state, p)
      p = optax.apply_updates(p, u)
    runs[name] = np.asarray(p)
  assert isinstance(go.adamw_8bit(lr).init(p)[0].nu, gt.QuantizedArray)
  assert 0 < -runs["int8"][1] <= -runs["float32"][1] <= 2 * lr
  np.testing.assert_allclose(runs["int8"][2:], runs["float32"][2:], rtol=0.5)


def _regression_problem():
  """A noisy least-squares fit: x (256, 64) -> y (256, 96), batches of 32."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 64))
  w_true = rng.normal(size=(64, 96)) * np.logspace(-1, 0, 96)
  y = x @ w_true + 0.1 * rng.normal(size=(256, 96))

  def grad(p, t):
    batch = np.random.default_rng(t).integers(0, 256, 32)
    residual = (x[batch] @ p["w"] + p["b"] - y[batch]) / 32
    return {"w": x[batch].T @ residual, "b": residual.sum(0)}

  return grad


def _from_bitsandbytes(codes, absmax, shape, signed):
  """bitsandbytes' 8-bit state (uint8 codes shaped like the parameter, one
  absmax per 256 elements) as a ``QuantizedArray``: the same codes, bit for
  bit (the leaf is a whole number of blocks, so there is no padding)."""
  blocks = codes.numpy().reshape(-1, 256).view(np.int8)
  return gt.QuantizedArray(jnp.asarray(blocks), jnp.asarray(absmax.numpy()), shape, signed)


def _adam_state_of(reference, torch_params, count, adam_state):
  """bitsandbytes' state of the kernel "w" (8-bit) and bias "b" (float32)."""
  w, b = reference.state[torch_params["w"]], reference.state[torch_params["b"]]
  shape = tuple(torch_params["w"].shape)
  return adam_state._replace(
      count=jnp.asarray(count, jnp.int32),
      mu={"w": _from_bitsandbytes(w["state1"], w["absmax1"], shape, True),
          "b": jnp.asarray(b["state1"].numpy())},
      nu={"w": _from_bitsandbytes(w["state2"], w["absmax2"], shape, False),
          "b": jnp.asarray(b["state2"].numpy())})


def _codes_nearer_or_equal(ours, codes, absmax, value):
  """Asserts gradtx's codes of ``value`` are at least as near as
  bitsandbytes' (``codes``, ``absmax``), but where a positive second moment
  takes the smallest code for bitsandbytes' 0 (by design); returns how many
  differ."""
  np.testing.assert_allclose(np.asarray(ours.scales), absmax, rtol=1e-6)
  table, scale = gt.dynamic_code_map(ours.signed), np.repeat(absmax, 256)
  ours_codes = np.asarray(ours.codes).view(np.uint8).reshape(-1)
  error_ours = np.abs(table[ours_codes] * scale - value.reshape(-1))
  error_theirs = np.abs(table[codes.reshape(-1)] * scale - value.reshape(-1))
  floored = (not ours.signed) & (ours_codes == 1) & (codes.reshape(-1) == 0) & (
      value.reshape(-1) > 0)
  assert np.all((error_ours <= error_theirs + 1e-6 * scale) | floored)
  return np.count_nonzero(ours_codes != codes.reshape(-1))


def test_adamw_8bit_takes_bitsandbytes_adamw8bit_steps():
  """Against bitsandbytes' own ``AdamW8bit`` (0.50.2, CPU), one step at a
  time along its 60-step trajectory: from bitsandbytes' parameters and its
  8-bit state, read as gradtx's without conversion, gradtx's step gives
  bitsandbytes' parameters to float32 round-off and the same block scales.

  The codes differ where bitsandbytes' CPU backend rounds approximately: it
  looks the nearest code up in a 65,536-bin table over [-1, 1]
  (``csrc/cpu_ops.cpp``, ``build_quantize_lut``), coarser than the map's
  codes near zero, where its CUDA kernel (``dQuantize``) and gradtx take the
  nearest code. So wherever the two codes differ, gradtx's must be the
  nearer one."""
  import bitsandbytes as bnb  # the oracle (the test extra); imported here, as it loads slowly

  grad = _regression_problem()
  lr, wd, steps = 1e-2, 1e-2, 60
  # 6144 elements (8-bit in both) and 96 (float32 in both).
  torch_params = {"w": torch.nn.Parameter(torch.zeros(64, 96)),
                  "b": torch.nn.Parameter(torch.zeros(96))}
  reference = bnb.optim.AdamW8bit(list(torch_params.values()), lr=lr, weight_decay=wd)
  tx = go.adamw_8bit(lr, weight_decay=wd)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(g, s, p)))
  differing = 0
  for t in range(steps):
    params = {k: v.detach().numpy().copy() for k, v in torch_params.items()}
    g = {k: v.astype(np.float32) for k, v in grad(params, t).items()}
    state = tx.init(params)
    if t:
      state = (_adam_state_of(reference, torch_params, t, state[0]), *state[1:])
    mu, nu = (np.asarray(m["w"].dequantize()) for m in (state[0].mu, state[0].nu))
    ours, new_state = step(params, state, g)
    for k, p in torch_params.items():
      p.grad = torch.from_numpy(g[k])
    reference.step()
    for k, p in torch_params.items():
      np.testing.assert_allclose(ours[k], p.detach().numpy(), rtol=1e-5, atol=1e-7)
    theirs = reference.state[torch_params["w"]]
    differing += _codes_nearer_or_equal(
        new_state[0].mu["w"], theirs["state1"].numpy(), theirs["absmax1"].numpy(),
        np.float32(0.9) * mu + np.float32(0.1) * g["w"])
    differing += _codes_nearer_or_equal(
        new_state[0].nu["w"], theirs["state2"].numpy(), theirs["absmax2"].numpy(),
        np.float32(0.999) * nu + np.float32(1 - 0.999) * g["w"] ** 2)
  # bitsandbytes' table misses the nearest code for a few in a thousand.
  assert 0 < differing < 0.05 * 2 * steps * 64 * 96

def test_state_memory_on_a_gpt_tree():
  """Against AdamW's state: 8-bit moments about a quarter, a bf16 second
  moment three quarters."""
  assert helpers.state_ratio(go.adamw_8bit(1e-3)) <= 0.27
  assert helpers.state_ratio(go.adamw(1e-3, nu_dtype=jnp.bfloat16)) == pytest.approx(
      0.75, abs=1e-3)


def test_cautious_weight_decay_matches_heavyball():
  """20 float64 steps against AdamW stepped by heavyball's ``_compilable_update_``
  with ``cautious_weight_decay``; the logistic gradients are never zero, where
  the sign-bit rule could differ. (With heavyball's ``caution`` too, its
  masked coordinates are +0 and are decayed only where p >= 0; gradtx decays
  a zero update in full, as the record's ``(u * p) >= 0``: see
  tests/transforms/test_weight_decay.py.)"""
  steps, lr, wd = 20, 0.05, 2.0
  problem = problems.LogisticProblem(seed=4, steps=steps)
  tx = go.adamw(lr, weight_decay=wd, cautious_weight_decay=True)
  trajectory = runners.run_gradtx(tx, problem.params0, problem.grad, steps)
  ref = transcriptions.adamw_heavyball_numpy(
      problem.params0, problem.grad, steps, lr, wd, caution=False, cautious_decay=True)
  runners.assert_trajectories_close(trajectory, ref, 1e-10)
  plain = transcriptions.adamw_heavyball_numpy(
      problem.params0, problem.grad, steps, lr, wd, caution=False, cautious_decay=False)
  assert runners.trajectory_errors(plain, ref)["updates"] > 1e-3
