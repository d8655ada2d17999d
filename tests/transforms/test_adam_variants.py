"""AdaMax, RAdam, Yogi and ADOPT transforms on hand-computable inputs.

Whole trajectories against torch, the official ADOPT and pytorch-optimizer:
tests/optimizers/test_adam_variants.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from gradtx import transforms as gt
from tests.support import helpers

TRANSFORMS = {
    "adamax": gt.scale_by_adamax, "radam": gt.scale_by_radam,
    "yogi": gt.scale_by_yogi, "adopt": gt.scale_by_adopt,
}


def _run(tx, grads, params=None):
  updates, state = helpers.jit_updates(tx, [jnp.asarray(g) for g in grads], params)
  return [np.asarray(u) for u in updates], state


def _grads(shape=(3, 4), steps=12, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return [scale * rng.normal(size=shape) for _ in range(steps)]


# AdaMax ----------------------------------------------------------------------


def test_adamax_by_hand_with_eps_inside_the_maximum():
  b1, b2, eps = 0.5, 0.75, 0.1
  gs = [np.array([1.0, -2.0, 0.0]), np.array([0.25, 3.0, 0.0])]
  updates, state = _run(gt.scale_by_adamax(b1=b1, b2=b2, eps=eps),
                        [jnp.asarray(g, jnp.float32) for g in gs])
  m, u = np.zeros(3), np.zeros(3)
  for t, (g, got) in enumerate(zip(gs, updates), start=1):
    m = b1 * m + (1 - b1) * g
    u = np.maximum(b2 * u, np.abs(g) + eps)
    np.testing.assert_allclose(got, m / ((1 - b1**t) * u), rtol=1e-6)
  np.testing.assert_allclose(state.nu, [0.825, 3.1, 0.1 * 1.0], rtol=1e-6)


def test_adamax_without_eps_steps_zero_where_every_gradient_was_zero():
  """eps = 0 is the paper's rule; 0/0 would be NaN, the step is 0."""
  updates, _ = _run(gt.scale_by_adamax(eps=0.0), [jnp.array([0.0, 2.0])] * 3)
  np.testing.assert_array_equal(updates[-1][0], 0.0)
  assert np.all(np.isfinite(updates[-1]))


def test_adamax_complex_uses_the_modulus():
  g = jnp.array([3.0 + 4.0j])
  (u,), state = _run(gt.scale_by_adamax(b1=0.0, eps=0.0), [g])
  np.testing.assert_allclose(state.nu, [5.0], rtol=1e-6)
  np.testing.assert_allclose(u, [(3.0 + 4.0j) / 5.0], rtol=1e-6)


# RAdam -----------------------------------------------------------------------


def _rho(t, b2):
  rho_inf = 2 / (1 - b2) - 1
  return rho_inf, rho_inf - 2 * t * b2**t / (1 - b2**t)


@pytest.mark.parametrize("b2", [0.999, 0.95])
def test_radam_rectifies_only_once_rho_exceeds_5(b2):
  b1, eps = 0.8, 1e-8
  grads = _grads(steps=10, seed=1)
  with jax.enable_x64(True):
    updates, _ = _run(gt.scale_by_radam(b1=b1, b2=b2, eps=eps), grads)
  m, v, rectified = 0.0, 0.0, []
  for t, (g, got) in enumerate(zip(grads, updates), start=1):
    g = np.asarray(g)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
    m_hat = m / (1 - b1**t)
    rho_inf, rho = _rho(t, b2)
    expected = m_hat
    if rho > 5:
      r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
      expected = m_hat * r * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
    rectified.append(rho > 5)
    # ρ_t = ρ_∞ − (ρ_∞ − ρ_t) cancels 2000-fold at β₂ = 0.999.
    np.testing.assert_allclose(got, expected, rtol=1e-10)
  # β₂ = 0.999 rectifies from step 6 (ρ₅ = 4.99, ρ₆ = 6.0); 0.95 from step 6 too.
  assert rectified == [False] * 5 + [True] * 5


def test_radam_float32_waits_for_step_6_as_torch_float32():
  """In float32 at β₂ = 0.999, ρ_5 = 4.996 is within 0.004 of 5: ρ_∞ formed
  from a float32 1 − β₂ was 0.026 high and rectified step 5 (a step 5x too
  small, then 0.7% off). Step 5 is the bias-corrected momentum, as torch's
  float32 RAdam, and 20 steps stay within float32 round-off of it: ρ_t =
  ρ_∞ − 2tβ₂ᵗ/(1 − β₂ᵗ) cancels 2000-fold, which torch forms from Python
  doubles and this (as optax) in float32, so the first rectified steps agree
  to ~2e-4."""
  grads = [np.full(3, 0.1, np.float32) * (1 + 0.1 * t) for t in range(20)]
  updates, _ = _run(gt.scale_by_radam(), [jnp.asarray(g) for g in grads])
  param = torch.zeros(3, dtype=torch.float32, requires_grad=True)
  reference = torch.optim.RAdam([param], lr=1.0)
  for g, got in zip(grads, updates):
    before = param.detach().clone()
    param.grad = torch.tensor(g)
    reference.step()
    np.testing.assert_allclose(got, (before - param.detach()).numpy(), rtol=5e-4)
  b1 = 0.9
  m_hat_5 = sum((1 - b1) * b1 ** (4 - i) * grads[i] for i in range(5)) / (1 - b1**5)
  np.testing.assert_allclose(updates[4], m_hat_5, rtol=1e-6)


def test_radam_small_b2_never_rectifies():
  """β₂ < 2/3: ρ_∞ <= 5, so every step is the bias-corrected momentum (and
  ρ_∞ = 4 or 2, where r has a 0 denominator, gives no NaN)."""
  for b2 in (0.0, 0.5, 0.6):
    updates, _ = _run(gt.scale_by_radam(b1=0.0, b2=b2), _grads(steps=8, seed=2))
    for g, u in zip(_grads(steps=8, seed=2), updates):
      np.testing.assert_allclose(u, g, rtol=1e-6)


def test_radam_eps_is_added_to_the_raw_root_as_in_torch():
  """At step 6 (first rectified step, β₂ = 0.999) with ε comparable to √v:
  torch's √(1−β₂ᵗ)/(√v + ε) differs from optax's 1/(√v̂ + ε) by 2x here."""
  b2, eps = 0.999, 0.1
  with jax.enable_x64(True):
    updates, _ = _run(gt.scale_by_radam(b1=0.0, b2=b2, eps=eps), [jnp.ones(1)] * 6)
    theirs, _ = _run(optax.scale_by_radam(b1=0.0, b2=b2, eps=eps), [jnp.ones(1)] * 6)
  t = 6
  rho_inf, rho = _rho(t, b2)
  r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
  v = 1 - b2**t
  np.testing.assert_allclose(updates[-1], r * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps), rtol=1e-12)
  np.testing.assert_allclose(theirs[-1], r / (np.sqrt(v / (1 - b2**t)) + eps), rtol=1e-12)
  assert updates[-1][0] < 0.5 * theirs[-1][0]


def _radam_reference(grads, b1, b2, eps, threshold, nesterov):
  """RAdam's steps from the closed form (torch's ε on √v), in float64; with
  ``nesterov`` Dozat's look-ahead m̂ in place of m/(1 − β₁ᵗ)."""
  m, v, steps = 0.0, 0.0, []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
    m_hat = (b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t) if nesterov
             else m / (1 - b1**t))
    rho_inf, rho = _rho(t, b2)
    step = m_hat
    if rho > threshold:
      r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
      step = m_hat * r * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
    steps.append(step)
  return steps


@pytest.mark.parametrize("threshold, nesterov", [(5.0, True), (8.5, False), (12.0, True)])
def test_radam_threshold_and_nesterov_match_the_closed_form_and_optax(threshold, nesterov):
  """40 float64 steps: the closed form; optax.scale_by_radam (eps = 0, where its
  ε placement is the same; it rectifies from ρ_t >= threshold, equal off ties)."""
  b1, b2 = 0.9, 0.99
  grads = _grads(steps=40, seed=7)
  with jax.enable_x64(True):
    ours, _ = _run(gt.scale_by_radam(b1=b1, b2=b2, eps=1e-8, threshold=threshold,
                                     nesterov=nesterov), grads)
    ours_0, _ = _run(gt.scale_by_radam(b1=b1, b2=b2, eps=0.0, threshold=threshold,
                                       nesterov=nesterov), grads)
    theirs, _ = _run(optax.scale_by_radam(b1=b1, b2=b2, eps=0.0, threshold=threshold,
                                          nesterov=nesterov), grads)
  expected = _radam_reference(grads, b1, b2, 1e-8, threshold, nesterov)
  waited = [_rho(t, b2)[1] <= threshold for t in range(1, 41)]
  assert 2 < sum(waited) < 40  # both branches taken (ρ_∞ = 199 at β₂ = 0.99)
  for got, want, got_0, other in zip(ours, expected, ours_0, theirs):
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(got_0, other, rtol=1e-10)


def test_radam_nesterov_changes_the_steps_and_a_threshold_below_4_is_refused():
  grads = _grads(steps=8, seed=3)
  plain, _ = _run(gt.scale_by_radam(), grads)
  ahead, _ = _run(gt.scale_by_radam(nesterov=True), grads)
  assert np.abs(plain[-1] - ahead[-1]).max() > 1e-3
  with pytest.raises(ValueError, match=r"threshold must be in \[4, inf\]"):
    gt.scale_by_radam(threshold=3.0)
  with pytest.raises(ValueError, match="nesterov must be True or False"):
    gt.scale_by_radam(nesterov="True")


# Yogi ------------------------------------------------------------------------


def test_yogi_second_moment_moves_by_a_fraction_of_g_squared():
  """v > g²: v decreases by (1−β₂)g²; v < g²: it grows by (1−β₂)g² (Adam's
  would move by (1−β₂)(g² − v), 30x more for the large gradient here)."""
  b2, v0 = 0.9, 1.0
  g = jnp.array([0.5, 6.0, 1.0])
  (_,), state = _run(gt.scale_by_yogi(b2=b2, initial_accumulator_value=v0), [g])
  np.testing.assert_allclose(state.nu, [v0 - 0.1 * 0.25, v0 + 0.1 * 36.0, v0], rtol=1e-6)
  np.testing.assert_array_equal(state.mu, 0.1 * g)  # m_0 = 0


def test_yogi_by_hand():
  b1, b2, eps, eps_root, v0 = 0.5, 0.75, 0.1, 0.01, 0.3
  grads = _grads(shape=(5,), steps=6, seed=3)
  with jax.enable_x64(True):
    updates, _ = _run(gt.scale_by_yogi(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                       initial_accumulator_value=v0), grads)
  m, v = 0.0, v0
  for t, (g, got) in enumerate(zip(grads, updates), start=1):
    g = np.asarray(g)
    m = b1 * m + (1 - b1) * g
    v = v - (1 - b2) * np.sign(v - g**2) * g**2
    expected = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_optax_yogi_starts_the_first_moment_at_the_accumulator_value():
  """optax's m₀ = 1e-6 (its initial_accumulator_value) against the paper's
  m₀ = 0: m̂_t is off by 1e-6·β₁ᵗ/(1−β₁ᵗ), 9e-6 at step 1, 0.4% of the step
  on gradients of 1e-3 here, fading with β₁ᵗ (2e-5 relative at step 40)."""
  grads = _grads(shape=(50,), steps=40, seed=4, scale=1e-3)
  with jax.enable_x64(True):
    ours, _ = _run(gt.scale_by_yogi(), grads)
    theirs, _ = _run(optax.scale_by_yogi(), grads)
  gap = [np.max(np.abs(a - b)) / np.max(np.abs(b)) for a, b in zip(ours, theirs)]
  assert 1e-3 < gap[0] < 1e-2 and gap[-1] < gap[0] / 50, gap


# ADOPT -----------------------------------------------------------------------


def test_adopt_first_step_only_sets_the_second_moment():
  g = jnp.array([2.0, -3.0, 0.0])
  (u,), state = _run(gt.scale_by_adopt(), [g])
  np.testing.assert_array_equal(u, 0.0)
  np.testing.assert_array_equal(state.mu, 0.0)
  np.testing.assert_allclose(state.nu, g**2)


def test_adopt_normalizes_by_the_previous_moment_and_clips_at_the_step_count():
  """Step 2 divides g₂ by √v₁ = |g₁| and clips at 1; step t at (t−1)^¼."""
  b1, b2, eps = 0.5, 0.75, 1e-6
  gs = [np.array([1.0, 1.0, 1e-3]), np.array([0.5, 4.0, 1.0]), np.array([2.0, -9.0, 1.0])]
  with jax.enable_x64(True):
    updates, state = _run(gt.scale_by_adopt(b1=b1, b2=b2, eps=eps),
                          [jnp.asarray(g) for g in gs])
  v, m = gs[0] ** 2, np.zeros(3)
  for t, g in enumerate(gs[1:], start=2):
    n = np.clip(g / np.maximum(np.sqrt(v), eps), -(t - 1) ** 0.25, (t - 1) ** 0.25)
    m = b1 * m + (1 - b1) * n
    v = b2 * v + (1 - b2) * g**2
    np.testing.assert_allclose(updates[t - 1], m, rtol=1e-12)
  np.testing.assert_allclose(updates[1], [0.25, 0.5, 0.5], rtol=1e-12)  # 0.5, then clipped at 1


def test_adopt_clips_a_complex_normalized_gradient_in_modulus():
  g1, g2 = jnp.array([1.0 + 0j]), jnp.array([3.0 + 4.0j])
  updates, _ = _run(gt.scale_by_adopt(b1=0.0), [g1, g2])
  np.testing.assert_allclose(updates[1], [(3.0 + 4.0j) / 5.0], rtol=1e-6)


# Shared ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_zero_gradients_give_finite_zero_updates(name):
  zeros = [jnp.zeros((3, 4))] * 8
  updates, state = _run(TRANSFORMS[name](), zeros)
  for u in updates:
    np.testing.assert_array_equal(u, 0.0)
  assert helpers.all_finite(state)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_nan_gradient_propagates_with_float_moments_and_resets_int8(name):
  g = jnp.ones((64, 80)).at[0, 0].set(jnp.nan)
  grads = [jnp.ones((64, 80))] * 2 + [g]
  updates, state = _run(TRANSFORMS[name](), grads)
  assert np.isnan(updates[-1][0, 0]) and np.all(np.isfinite(updates[-1].ravel()[1:]))
  fmt = gt.Int8Blocks(64, 0)
  updates, state = _run(TRANSFORMS[name](mu_dtype=fmt, nu_dtype=fmt), grads)
  assert updates[-1][0, 0] == 0 and np.all(np.isfinite(updates[-1]))
  assert helpers.all_finite(gt.dequantize_blockwise(state.nu))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_int8_and_bf16_moments_track_float32(name):
  grads = _grads(shape=(64, 80), steps=10, seed=5)
  reference, _ = _run(TRANSFORMS[name](), grads)
  for fmt, tol in ((jnp.bfloat16, 0.05), (gt.Int8Blocks(64, 0), 0.1)):
    updates, state = _run(TRANSFORMS[name](mu_dtype=fmt, nu_dtype=fmt), grads)
    err = np.linalg.norm(updates[-1] - reference[-1]) / np.linalg.norm(reference[-1])
    assert err < tol, (fmt, err)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_vmap_over_a_batch_of_runs_matches_each_run(name):
  tx = TRANSFORMS[name]()
  grads = jnp.asarray(np.stack([_grads(shape=(4,), steps=7, seed=s) for s in range(3)]),
                      jnp.float32)

  def run(gs):
    state = tx.init(jnp.zeros(4))
    def step(state, g):
      u, state = tx.update(g, state)
      return state, u
    return jax.lax.scan(step, state, gs)[1]

  batched = jax.jit(jax.vmap(run))(grads)
  for i in range(3):
    np.testing.assert_allclose(batched[i], run(grads[i]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("options", [
    dict(nesterov=True), dict(use_clipping=False), dict(nesterov=True, use_clipping=False),
    dict(clip_value_fn=lambda c: 0.5 * c**0.5), dict(nesterov=True, clip_value_fn=lambda c: c)])
def test_adopt_options_match_optax_and_the_closed_form(options):
  """30 float64 steps against optax.contrib.scale_by_adopt with the same options
  and against the rule written out (the look-ahead β₁ m_t + (1 − β₁) n_t)."""
  b1, b2, eps = 0.9, 0.99, 1e-6
  grads = _grads(steps=30, seed=11, scale=0.3)
  with jax.enable_x64(True):
    ours, _ = _run(gt.scale_by_adopt(b1=b1, b2=b2, eps=eps, **options), grads)
    theirs, _ = _run(optax.contrib.scale_by_adopt(b1=b1, b2=b2, eps=eps, **options), grads)
  bound = options.get("clip_value_fn", lambda c: c**0.25)
  m, v = 0.0, np.asarray(grads[0]) ** 2
  np.testing.assert_array_equal(ours[0], 0.0)
  for t in range(2, 31):
    g = np.asarray(grads[t - 1])
    n = g / np.maximum(np.sqrt(v), eps)
    if options.get("use_clipping", True):
      n = np.clip(n, -bound(t - 1.0), bound(t - 1.0))
    m = b1 * m + (1 - b1) * n
    v = b2 * v + (1 - b2) * g**2
    step = b1 * m + (1 - b1) * n if options.get("nesterov") else m
    np.testing.assert_allclose(ours[t - 1], step, rtol=1e-10)
    np.testing.assert_allclose(ours[t - 1], theirs[t - 1], rtol=1e-10)


def test_adopt_clip_value_fn_gets_optaxs_integer_count():
  """optax passes the int32 count before the step: integer operations work."""
  bound = lambda count: jnp.left_shift(1, count)  # 2^(t−1): an int32 op
  grads = _grads(steps=8, seed=6, scale=3.0)
  ours, _ = _run(gt.scale_by_adopt(clip_value_fn=bound), grads)
  theirs, _ = _run(optax.contrib.scale_by_adopt(clip_value_fn=bound), grads)
  for a, b in zip(ours, theirs):  # float32: optax's moments round differently
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_adopt_without_clipping_differs_where_the_bound_binds():
  grads = _grads(steps=6, seed=5, scale=1.0) + [100.0 * np.ones((3, 4))]
  clipped, _ = _run(gt.scale_by_adopt(), grads)
  free, _ = _run(gt.scale_by_adopt(use_clipping=False), grads)
  assert np.abs(free[-1]).max() > 2 * np.abs(clipped[-1]).max()
  with pytest.raises(ValueError, match="clip_value_fn must be a function of the step count"):
    gt.scale_by_adopt(clip_value_fn=0.25)


@pytest.mark.parametrize("name, kwargs, match", [
    ("adamax", dict(b1=1.0), r"b1 must be in \[0, 1\), got 1.0"),
    ("adamax", dict(eps=-1e-8), r"eps must be in \[0, inf\)"),
    ("radam", dict(b2=-0.1), r"b2 must be in \[0, 1\)"),
    ("yogi", dict(initial_accumulator_value=-1.0), "initial_accumulator_value must be"),
    ("yogi", dict(eps_root=-1.0), "eps_root must be"),
    ("adopt", dict(b2=1.5), r"b2 must be in \[0, 1\), got 1.5"),
    ("adopt", dict(nu_dtype=jnp.int32), "nu_dtype must be"),
])
def test_bad_arguments_are_refused_at_construction(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    TRANSFORMS[name](**kwargs)
