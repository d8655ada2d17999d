"""gt.scale_by_acprop: the gradient over the previous centered second moment.

The reference is ``transcriptions.acprop_official``, ``ACProp.step`` of the
authors' code line by line (checked against that class, run in float64 with
its imports stubbed, to 4e-15).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.oracles import problems, runners, transcriptions

STEPS = 60
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=5, steps=STEPS)


def _steps(tx, grads, dtype=jnp.float64):
  """The updates of ``tx`` on a sequence of gradients (float64)."""
  with jax.enable_x64(True):
    state = tx.init(jnp.zeros_like(jnp.asarray(grads[0], dtype)))
    out = []
    for g in grads:
      u, state = tx.update(jnp.asarray(g, dtype), state)
      out.append(np.asarray(u))
  return out, state


def test_first_two_steps_by_hand():
  """u₁ = g₁; u₂ = g₂/(√(s₁/(1−β₂)) + ε) with s₁ = (1−β₂)(g₁ − m₁)² + ε."""
  b1, b2, eps = 0.8, 0.9, 1e-3
  g1, g2 = np.array([2.0, -1.0, 0.5]), np.array([1.0, 3.0, -2.0])
  (u1, u2), state = _steps(gt.scale_by_acprop(b1, b2, eps), [g1, g2])
  m1 = (1 - b1) * g1
  s1 = (1 - b2) * (g1 - m1) ** 2 + eps
  m2 = b1 * m1 + (1 - b1) * g2
  np.testing.assert_allclose(u1, g1, rtol=1e-15)
  np.testing.assert_allclose(u2, g2 / (np.sqrt(s1 / (1 - b2)) + eps), rtol=1e-14)
  np.testing.assert_allclose(state.mu, m2, rtol=1e-15)
  np.testing.assert_allclose(state.nu, b2 * s1 + (1 - b2) * (g2 - m2) ** 2 + eps, rtol=1e-15)


def test_the_step_is_linear_in_the_current_gradient():
  """Asynchronous: s_{t−1} does not hold g_t, so u_t(c·g_t) = c·u_t(g_t)
  (a synchronous AdaBelief step is not; it saturates towards sign(g))."""
  rng = np.random.default_rng(0)
  history = list(rng.normal(size=(5, 4)))
  g = rng.normal(size=4)
  (*_, u), _ = _steps(gt.scale_by_acprop(), history + [g])
  (*_, u10), _ = _steps(gt.scale_by_acprop(), history + [10 * g])
  np.testing.assert_allclose(u10, 10 * u, rtol=1e-13)
  (*_, b), _ = _steps(gt.scale_by_belief(), history + [g])
  (*_, b10), _ = _steps(gt.scale_by_belief(), history + [10 * g])
  assert np.abs(b10 - 10 * b).max() > 0.1 * np.abs(10 * b).max()


def _official_chain(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False):
  """The official experiments' setting (main.py): coupled L2 decay."""
  return optax.chain(gt.coupled_weight_decay(weight_decay),
                     gt.scale_by_acprop(b1, b2, eps, amsgrad=amsgrad),
                     gt.scale_by_learning_rate(lr))


SETTINGS = [
    dict(),
    dict(b1=0.8, b2=0.99, eps=1e-6, weight_decay=5e-2),
    dict(b1=0.5, b2=0.9, eps=1e-8, amsgrad=True),
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=["defaults", "betas_eps_l2", "amsgrad"])
def test_matches_the_official_step_with_coupled_decay(kwargs):
  """main.py's ``weight_decouple=False``: g ← g + λp before the moments.
  Measured: 3e-15 relative on the parameters, 2e-14 on the steps."""
  k = dict(dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False), **kwargs)
  ours = runners.run_gradtx(_official_chain(0.05, **k), PROBLEM.params0, PROBLEM.grad, STEPS)
  ref = transcriptions.acprop_official(
      PROBLEM.params0, PROBLEM.grad, STEPS, 0.05, betas=(k["b1"], k["b2"]), eps=k["eps"],
      weight_decay=k["weight_decay"], amsgrad=k["amsgrad"], weight_decouple=False)
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


def test_amsgrad_starts_s_at_eps_as_the_official_branch():
  """Its AMSGrad branch adds ε to s before the first step too: s₁ holds
  β₂ε more than without amsgrad."""
  b2, eps = 0.9, 1e-3
  tx = gt.scale_by_acprop(b2=b2, eps=eps, amsgrad=True)
  state = tx.init(jnp.zeros(2))
  np.testing.assert_allclose(state.nu, eps)
  _, with_max = tx.update(jnp.ones(2), state)
  plain = gt.scale_by_acprop(b2=b2, eps=eps)
  _, without = plain.update(jnp.ones(2), plain.init(jnp.zeros(2)))
  np.testing.assert_allclose(with_max.nu - without.nu, b2 * eps, rtol=1e-5)
  np.testing.assert_allclose(with_max.nu_max, with_max.nu)


def test_amsgrad_divides_by_the_running_maximum():
  """After a large gradient, s decays but the AMSGrad denominator does not."""
  grads = [np.array([1.0]), np.array([10.0]), np.array([0.1]), np.array([0.1]),
           np.array([0.1]), np.array([1.0])]
  plain, _ = _steps(gt.scale_by_acprop(b2=0.5), grads)
  kept, state = _steps(gt.scale_by_acprop(b2=0.5, amsgrad=True), grads)
  assert abs(kept[-1][0]) < 0.5 * abs(plain[-1][0])
  assert float(state.nu_max[0]) > float(state.nu[0])


def test_optax_contrib_centers_by_the_previous_momentum():
  """optax.contrib.scale_by_acprop's residual is g_t − m_{t−1} = (g_t − m_t)/β₁:
  with ε = 0 its steps are β₁ times these from the second step on."""
  b1 = 0.7
  grads = list(np.random.default_rng(1).normal(size=(8, 5)))
  ours, _ = _steps(gt.scale_by_acprop(b1, 0.99, 0.0), grads)
  theirs, _ = _steps(optax.contrib.scale_by_acprop(b1, 0.99, 0.0, 0.0), grads)
  np.testing.assert_allclose(theirs[0], ours[0], rtol=1e-14)
  for a, b in zip(theirs[1:], ours[1:]):
    np.testing.assert_allclose(a, b1 * b, rtol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, dict(amsgrad=True), dict(eps=0.0)],
                         ids=["default", "amsgrad", "eps0"])
def test_zero_gradients_give_zero_steps(kwargs):
  """eps = 0 and no residual: s = 0, and the zero gradient steps 0, not 0/0."""
  tx = gt.scale_by_acprop(**kwargs)
  state = tx.init(jnp.ones(3))
  for _ in range(4):
    u, state = tx.update(jnp.zeros(3), state)
    assert bool(jnp.all(u == 0))
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))


def test_complex_leaves_use_the_modulus_of_the_residual():
  b1, b2, eps = 0.5, 0.9, 1e-6
  g1, g2 = np.array([3.0 + 4.0j, 1.0j]), np.array([1.0 - 1.0j, 2.0])
  (u1, u2), state = _steps(gt.scale_by_acprop(b1, b2, eps), [g1, g2], jnp.complex128)
  s1 = (1 - b2) * np.abs(g1 - (1 - b1) * g1) ** 2 + eps
  np.testing.assert_allclose(u1, g1, rtol=1e-15)
  np.testing.assert_allclose(u2, g2 / (np.sqrt(s1 / (1 - b2)) + eps), rtol=1e-14)
  assert state.nu.dtype == jnp.float64


def test_bf16_params_keep_bf16_with_float32_arithmetic():
  tx = gt.scale_by_acprop(nu_dtype=jnp.float32)
  params = jnp.zeros(4, jnp.bfloat16)
  state = tx.init(params)
  for g in (jnp.full(4, 0.5, jnp.bfloat16), jnp.full(4, -0.25, jnp.bfloat16)):
    u, state = tx.update(g, state)
  assert u.dtype == jnp.bfloat16 and state.mu.dtype == jnp.bfloat16
  assert state.nu.dtype == jnp.float32
  # s₁ = 0.001·(0.45)² + ε: u₂ = −0.25/(√(s₁/0.001) + ε) ≈ −0.25/0.45
  np.testing.assert_allclose(np.asarray(u, np.float32), -0.25 / 0.45, rtol=1e-2)


def test_int8_moments_skip_a_non_finite_coordinate_and_keep_its_moments():
  """Reset to 0, s would make that coordinate's next step g/ε (1e8·g)."""
  tx = gt.scale_by_acprop(mu_dtype="int8", nu_dtype="int8")
  params = jnp.zeros(4096)  # one quantization block and more
  g = jnp.cos(jnp.arange(4096.0))
  state = tx.init(params)
  _, state = tx.update(g, state)
  u, after_nan = tx.update(g.at[7].set(jnp.nan), state)
  assert bool(jnp.isfinite(u).all()) and float(u[7]) == 0.0
  for before, after in ((state.mu, after_nan.mu), (state.nu, after_nan.nu)):
    np.testing.assert_allclose(gt.dequantize_blockwise(after, jnp.float32)[7],
                               gt.dequantize_blockwise(before, jnp.float32)[7], rtol=0.05)
  u, _ = tx.update(g, after_nan)
  assert bool(jnp.isfinite(u).all()) and float(jnp.abs(u).max()) < 10.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(b1=1.0), r"b1 must be in \[0, 1\), got 1.0"),
    (dict(b2=-0.1), r"b2 must be in \[0, 1\), got -0.1"),
    (dict(eps=-1e-8), r"eps must be in \[0, inf\)"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gt.scale_by_acprop(**kwargs)
