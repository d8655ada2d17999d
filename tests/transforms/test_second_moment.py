"""Update rules of the second-moment transforms on hand-computable inputs.

(Argument checks, zero gradients, jit and dtypes: tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.support import helpers


def _run(tx, grads, params=None):
  """Feeds a list of gradients through ``tx``; returns updates and last state."""
  updates, state = helpers.jit_updates(tx, grads, params)
  return [np.asarray(u) for u in updates], state


# Adam ------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_adam_without_first_moment_keeps_none(nesterov):
  """b1 = 0: u_t = g_t / (sqrt(v_t / (1 - b2^t)) + eps), the grafting of
  Shampoo; nothing of the first moment is stored."""
  rng = np.random.default_rng(4)
  grads = [rng.normal(size=(3, 5)) for _ in range(12)]
  b2, eps = 0.9, 1e-3
  with jax.enable_x64(True):
    updates, state = _run(gt.scale_by_adam(0.0, b2, eps, nesterov=nesterov),
                          [jnp.asarray(g) for g in grads])
  v = np.zeros((3, 5))
  for t, (g, u) in enumerate(zip(grads, updates), start=1):
    v = b2 * v + (1 - b2) * g**2
    np.testing.assert_allclose(u, g / (np.sqrt(v / (1 - b2**t)) + eps), rtol=1e-12)
  assert state.mu is None and state.nu.shape == (3, 5)


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.5, 0.75), (0.0, 0.0)])
def test_adam_first_step_is_sign_up_to_eps(b1, b2):
  g = jnp.array([2.0, -3.0, 1e-3, -1e-6])
  eps = 1e-8
  (u,), _ = _run(gt.scale_by_adam(b1, b2, eps), [g])
  # m̂_1 = g and v̂_1 = g²: u = g/(|g| + ε) exactly.
  np.testing.assert_allclose(u, g / (jnp.abs(g) + eps), rtol=1e-6)
  np.testing.assert_allclose(u[:3], np.sign(g[:3]), rtol=1e-4)


def test_adam_two_steps_by_hand():
  b1, b2, eps, eps_root = 0.5, 0.75, 0.1, 0.01
  g1, g2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
  m1, v1 = 0.5 * g1, 0.25 * g1**2
  m2, v2 = 0.5 * m1 + 0.5 * g2, 0.75 * v1 + 0.25 * g2**2
  expected = [
      (m1 / 0.5) / (np.sqrt(v1 / 0.25 + eps_root) + eps),
      (m2 / 0.75) / (np.sqrt(v2 / (1 - 0.75**2) + eps_root) + eps),
  ]
  updates, state = _run(
      gt.scale_by_adam(b1, b2, eps, eps_root), [jnp.asarray(g1), jnp.asarray(g2)]
  )
  np.testing.assert_allclose(updates, expected, rtol=1e-6)
  np.testing.assert_allclose(state.mu, m2, rtol=1e-6)
  np.testing.assert_allclose(state.nu, v2, rtol=1e-6)
  assert int(state.count) == 2 and state.nu_max is None


def test_adam_nesterov_matches_optax():
  """optax.scale_by_adam(nesterov=True) serves as an independent NAdam."""
  grads = list(np.random.default_rng(0).normal(size=(12, 7)))
  with jax.enable_x64(True):
    grads = [jnp.asarray(g, jnp.float64) for g in grads]
    ours, _ = _run(gt.scale_by_adam(0.8, 0.95, 1e-6, nesterov=True), grads)
    ref, _ = _run(optax.scale_by_adam(0.8, 0.95, 1e-6, nesterov=True), grads)
    plain, _ = _run(gt.scale_by_adam(0.8, 0.95, 1e-6), grads)
  np.testing.assert_allclose(ours, ref, rtol=1e-12)
  assert np.abs(np.asarray(plain) - np.asarray(ours)).max() > 1e-2


def test_amsgrad_takes_the_max_of_the_raw_second_moment():
  """torch.optim.Adam(amsgrad=True): max of raw v, bias-corrected afterwards.

  For g = (1, 0.01) the raw v_2 = β2(1−β2) + (1−β2)10⁻⁴ is below v_1 = 1−β2,
  so ṽ_2 = v_1 and v̂_2 = v_1/(1−β2²) ≈ 1/2; optax.scale_by_amsgrad instead
  keeps max(v̂_1, v̂_2) = 1: the second updates differ by about √2.
  """
  b1, b2, eps = 0.9, 0.999, 1e-8
  with jax.enable_x64(True):
    grads = [jnp.array([1.0], jnp.float64), jnp.array([0.01], jnp.float64)]
    ours, state = _run(gt.scale_by_adam(b1, b2, eps, amsgrad=True), grads)
    theirs, _ = _run(optax.scale_by_amsgrad(b1, b2, eps), grads)
  m2 = b1 * (1 - b1) * 1.0 + (1 - b1) * 0.01
  v1 = 1 - b2
  expected = (m2 / (1 - b1**2)) / (np.sqrt(v1 / (1 - b2**2)) + eps)
  np.testing.assert_allclose(ours[1], [expected], rtol=1e-12)
  np.testing.assert_allclose(state.nu_max, [v1], rtol=1e-12)
  v2 = b2 * v1 + (1 - b2) * 0.01**2
  optax_nu_max = max(v1 / (1 - b2), v2 / (1 - b2**2))  # = 1
  np.testing.assert_allclose(
      theirs[1], [(m2 / (1 - b1**2)) / (np.sqrt(optax_nu_max) + eps)], rtol=1e-12
  )
  assert ours[1][0] / theirs[1][0] > 1.4


def test_amsgrad_state_is_a_running_max():
  grads = [jnp.array([3.0, 0.0]), jnp.array([0.1, 2.0]), jnp.array([0.0, 0.1])]
  _, state = _run(gt.scale_by_adam(0.9, 0.5, amsgrad=True), grads)
  v = np.zeros(2)
  v_max = np.zeros(2)
  for g in grads:
    v = 0.5 * v + 0.5 * np.asarray(g) ** 2
    v_max = np.maximum(v_max, v)
  np.testing.assert_allclose(state.nu, v, rtol=1e-6)
  np.testing.assert_allclose(state.nu_max, v_max, rtol=1e-6)
  assert not np.allclose(v, v_max)


def test_adam_bfloat16_moments():
  grads = [jnp.asarray(g, jnp.float32)
           for g in np.random.default_rng(1).normal(size=(15, 16))]
  ref, _ = _run(gt.scale_by_adam(), grads)
  low, state = _run(
      gt.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16), grads
  )
  assert state.mu.dtype == jnp.bfloat16 and state.nu.dtype == jnp.bfloat16
  assert all(u.dtype == np.float32 for u in low)
  # |u| ≲ 1; bf16 has 8 bits of mantissa, so a few 2⁻⁸ at most.
  np.testing.assert_allclose(low, ref, atol=2e-2)
  _, mixed = _run(gt.scale_by_adam(nu_dtype=jnp.bfloat16), grads)
  assert mixed.mu.dtype == jnp.float32 and mixed.nu.dtype == jnp.bfloat16


def test_bfloat16_params_keep_bfloat16_states():
  g = jnp.array([1.0, -2.0], jnp.bfloat16)
  for tx in [gt.scale_by_adam(), gt.scale_by_belief(), gt.scale_by_rms(),
             gt.scale_by_adagrad()]:
    _, state = _run(tx, [g])
    assert all(
        x.dtype in (jnp.bfloat16, jnp.int32) for x in jax.tree.leaves(state)
    )


# AdaBelief -------------------------------------------------------------------


def test_belief_two_steps_by_hand():
  b1, b2, eps = 0.5, 0.75, 0.01
  g1, g2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
  m1 = 0.5 * g1
  s1 = 0.25 * (g1 - m1) ** 2 + eps
  m2 = 0.5 * m1 + 0.5 * g2
  s2 = 0.75 * s1 + 0.25 * (g2 - m2) ** 2 + eps
  expected = [
      (m1 / 0.5) / (np.sqrt(s1 / 0.25) + eps),
      (m2 / 0.75) / (np.sqrt(s2 / (1 - 0.75**2)) + eps),
  ]
  updates, state = _run(
      gt.scale_by_belief(b1, b2, eps), [jnp.asarray(g1), jnp.asarray(g2)]
  )
  np.testing.assert_allclose(updates, expected, rtol=1e-6)
  np.testing.assert_allclose(state.nu, s2, rtol=1e-6)


def test_belief_accumulates_eps_in_the_state():
  """A zero gradient still adds ε to s at every step (Algorithm 2)."""
  b2, eps = 0.9, 1e-3
  _, state = _run(gt.scale_by_belief(0.9, b2, eps), [jnp.zeros(2)] * 3)
  np.testing.assert_allclose(state.nu, eps * (1 + b2 + b2**2), rtol=1e-6)


def test_belief_nesterov_matches_the_closed_form_and_optax():
  """30 float64 steps: Dozat's look-ahead m̂ in the belief step, as written
  out here and as ``optax.scale_by_belief(nesterov=True)`` with its eps_root
  at the paper's ε (this rule adds ε into s and to the denominator)."""
  b1, b2, eps = 0.9, 0.99, 1e-6
  rng = np.random.default_rng(4)
  grads = [rng.normal(size=(3, 4)) for _ in range(30)]
  with jax.enable_x64(True):
    ours, _ = _run(gt.scale_by_belief(b1, b2, eps, nesterov=True),
                   [jnp.asarray(g) for g in grads])
    theirs, _ = _run(optax.scale_by_belief(b1, b2, eps, eps_root=eps, nesterov=True),
                     [jnp.asarray(g) for g in grads])
    plain, _ = _run(gt.scale_by_belief(b1, b2, eps), [jnp.asarray(g) for g in grads])
  m, s = 0.0, 0.0
  for t, (g, got, other) in enumerate(zip(grads, ours, theirs), start=1):
    m = b1 * m + (1 - b1) * g
    s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
    m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    np.testing.assert_allclose(got, m_hat / (np.sqrt(s / (1 - b2**t)) + eps), rtol=1e-10)
    np.testing.assert_allclose(got, other, rtol=1e-10)
  assert np.abs(np.asarray(plain[-1]) - np.asarray(ours[-1])).max() > 1e-3


# RMSProp ---------------------------------------------------------------------


def test_rms_by_hand():
  g1, g2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
  rho, eps = 0.5, 0.1
  v1 = 0.5 * 0.2 + 0.5 * g1**2
  v2 = 0.5 * v1 + 0.5 * g2**2
  updates, state = _run(
      gt.scale_by_rms(rho, eps, initial_scale=0.2),
      [jnp.asarray(g1), jnp.asarray(g2)],
  )
  np.testing.assert_allclose(updates[0], g1 / (np.sqrt(v1) + eps), rtol=1e-6)
  np.testing.assert_allclose(updates[1], g2 / (np.sqrt(v2) + eps), rtol=1e-6)
  np.testing.assert_allclose(state.nu, v2, rtol=1e-6)
  assert state.mu is None


def test_rms_centered_and_eps_root_by_hand():
  g1, g2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
  rho, eps, eps_root = 0.75, 0.1, 0.05
  v1, m1 = 0.25 * g1**2, 0.25 * g1
  v2, m2 = 0.75 * v1 + 0.25 * g2**2, 0.75 * m1 + 0.25 * g2
  updates, state = _run(
      gt.scale_by_rms(rho, eps, eps_root=eps_root, centered=True),
      [jnp.asarray(g1), jnp.asarray(g2)],
  )
  np.testing.assert_allclose(
      updates[0], g1 / (np.sqrt(v1 - m1**2 + eps_root) + eps), rtol=1e-6
  )
  np.testing.assert_allclose(
      updates[1], g2 / (np.sqrt(v2 - m2**2 + eps_root) + eps), rtol=1e-6
  )
  np.testing.assert_allclose(state.mu, m2, rtol=1e-6)


# AdaGrad ---------------------------------------------------------------------


def test_adagrad_by_hand():
  g1, g2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
  s1 = 0.5 + g1**2
  s2 = s1 + g2**2
  updates, state = _run(
      gt.scale_by_adagrad(initial_accumulator_value=0.5, eps=0.1),
      [jnp.asarray(g1), jnp.asarray(g2)],
  )
  np.testing.assert_allclose(updates[0], g1 / (np.sqrt(s1) + 0.1), rtol=1e-6)
  np.testing.assert_allclose(updates[1], g2 / (np.sqrt(s2) + 0.1), rtol=1e-6)
  np.testing.assert_allclose(state.sum_of_squares, s2, rtol=1e-6)


def test_adam_int8_moments_track_float32():
  """API contract: mu_dtype/nu_dtype accept "int8" (block-wise quantised).

  The leaf is above bitsandbytes' 4096-element threshold, so it really is
  quantised. A plain ``astype(int8)`` would truncate every moment to an
  integer (0 here); a block-wise 8-bit Adam stays near the float32 updates
  and stores about a quarter of the bytes.
  """
  grads = [jnp.asarray(g, jnp.float32)
           for g in np.random.default_rng(2).normal(scale=0.1, size=(10, 8192))]
  ref, _ = _run(gt.scale_by_adam(), grads)
  low, state = _run(gt.scale_by_adam(mu_dtype="int8", nu_dtype="int8"), grads)
  for moment in (state.mu, state.nu):
    assert sum(x.nbytes for x in jax.tree.leaves(moment)) < 0.3 * 4 * 8192
  errors = np.abs(np.asarray(low) - np.asarray(ref))
  assert errors.mean() < 0.02 and errors.max() < 0.25, (errors.mean(), errors.max())


def test_optax_scale_by_rms_is_eps_inside_the_root():
  """``optax.scale_by_rms(ρ, ε)`` is ``gt.scale_by_rms(ρ, 0, eps_root=ε)``
  (the docstring's translation); with ε outside (gradtx's default) it differs."""
  grads = [jnp.asarray(g, jnp.float32) for g in ([1e-4, -2.0], [3e-4, 0.5], [-1e-4, 4.0])]
  theirs = [np.asarray(u) for u in helpers.jit_updates(optax.scale_by_rms(0.9, 1e-6), grads)[0]]
  ours = _run(gt.scale_by_rms(0.9, 0.0, eps_root=1e-6), grads)[0]
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  assert not np.allclose(_run(gt.scale_by_rms(0.9, 1e-6), grads)[0], theirs, rtol=1e-3)


def test_a_bf16_second_moment_rounded_to_nearest_cannot_decay_at_b2_0999():
  """As the nu_dtype docstring says: (1 - b2) v is under half a bf16 ulp of v,
  so after the gradients shrink 100x a round-to-nearest bf16 v stays where it
  was, while a stochastically rounded one follows float32's."""
  g = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
  at_drop, final = {}, {}
  for name, fmt in [("f32", None), ("bf16", jnp.bfloat16), ("sr", gt.StochasticBfloat16())]:
    tx = gt.scale_by_adam(b2=0.999, nu_dtype=fmt)
    step = jax.jit(lambda u, s, tx=tx: tx.update(u, s)[1])
    state = tx.init(jnp.zeros(2048))
    for t in range(1500):
      state = step(jnp.asarray(g if t < 500 else 0.01 * g), state)
      if t == 499:
        at_drop[name] = float(jnp.mean(state.nu.astype(jnp.float32)))
    final[name] = float(jnp.mean(state.nu.astype(jnp.float32)))
  assert final["f32"] < 0.4 * at_drop["f32"]
  assert final["bf16"] > 0.95 * at_drop["bf16"]
  np.testing.assert_allclose(final["sr"], final["f32"], rtol=0.05)


def test_an_element_whose_square_overflows_float32_steps_zero_for_good_as_in_optax():
  """README (Non-finite gradients): a finite g above ~1.8e19 overflows g², so
  v is inf from then on and the element steps 0 for good, as optax's Adam;
  the other elements step as usual."""
  params = jnp.ones(3)
  huge = jnp.array([1e20, 1.0, 2.0])
  for tx in (gt.scale_by_adam(), optax.scale_by_adam()):
    state = tx.init(params)
    steps = []
    for t in range(4):
      updates, state = tx.update(huge if t == 0 else jnp.ones(3), state, params)
      steps.append(np.asarray(updates))
    steps = np.stack(steps)
    assert np.all(steps[:, 0] == 0.0) and np.all(np.isfinite(steps))
    assert np.all(steps[:, 1:] > 0.5)
  nu = jax.tree.leaves(gt.scale_by_adam().update(huge, gt.scale_by_adam().init(params))[1])
  assert any(np.isposinf(np.asarray(leaf)).any() for leaf in nu)


@pytest.mark.parametrize("ours, theirs", [
    (lambda: gt.scale_by_adam(nesterov=True), lambda: optax.scale_by_adam(nesterov=True)),
    (lambda: gt.scale_by_belief(eps=1e-8, nesterov=True),
     lambda: optax.scale_by_belief(eps=1e-8, eps_root=1e-8, nesterov=True)),
], ids=["adam", "belief"])
def test_nesterov_look_ahead_at_a_saturated_count_is_optaxs(ours, theirs):
  """The count saturates at 2³¹ − 1: the look-ahead's next count saturates
  too (it wrapped to −2³¹ and dropped β₁m, a review found), as optax's."""
  params = jnp.zeros(2)
  grads = jnp.array([1.0, -1.0])
  late = jnp.asarray(2**31 - 2, jnp.int32)
  updates = []
  for make in (ours, theirs):
    tx = make()
    state = tx.init(params)
    state = state._replace(count=late, mu=jnp.array([0.5, -0.5]), nu=jnp.array([0.2, 0.2]))
    updates.append(tx.update(grads, state)[0])
  np.testing.assert_allclose(updates[0], updates[1], rtol=1e-5)
