"""gt.in_factored_geometry: the closed form with exact SVD, and steepest descent."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt

EXACT_MSIGN = gt.clip_singular_values(1.0, 1.0)  # U Vᵀ by SVD, for full-rank inputs


def _msign(x):
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  return u @ vt


def _metrics(us, b2, eps):
  r = c = 0.0
  for u in us:
    r = b2 * r + (1 - b2) * np.mean(u * u, axis=1, keepdims=True)
    c = b2 * c + (1 - b2) * np.mean(u * u, axis=0, keepdims=True)
  return np.sqrt(r / r.mean()) + eps, np.sqrt(c / c.mean()) + eps


def _closed_form(us, b2, eps):
  d_left, d_right = _metrics(us, b2, eps)
  o = _msign(us[-1] / np.sqrt(d_left * d_right))
  phi = o / np.sqrt(d_left * d_right)
  return phi * np.linalg.norm(o) / np.linalg.norm(phi)


@pytest.mark.parametrize("shapes", [[(6, 9)], [(6, 9), (6, 9), (4, 7), (6, 9)]])
def test_is_the_closed_form_in_the_learnt_metric(shapes):
  """Every leaf alone, also when same-shape leaves are stepped in one stack."""
  rng = np.random.default_rng(0)
  steps = [[rng.standard_normal(s) * rng.uniform(0.2, 2, (s[0], 1)) for s in shapes]
           for _ in range(4)]
  with jax.enable_x64(True):
    tx = gt.in_factored_geometry(EXACT_MSIGN, b2=0.9, eps=1e-3)
    state = tx.init([jnp.zeros(s) for s in shapes])
    update = jax.jit(tx.update)
    for us in steps:
      out, state = update([jnp.asarray(u) for u in us], state)
  for i in range(len(shapes)):
    np.testing.assert_allclose(out[i], _closed_form([us[i] for us in steps], 0.9, 1e-3),
                               rtol=1e-9, atol=1e-12)


def test_maximises_the_inner_product_over_the_metric_unit_ball():
  """⟨U, Φ⟩ over ‖D_L^{1/2} Φ D_R^{1/2}‖_op ≤ 1: Φ*'s direction beats random
  feasible directions and plain msign (rescaled to the ball)."""
  rng = np.random.default_rng(2)
  u = rng.standard_normal((5, 8)) * rng.uniform(0.1, 3, (5, 1)) * rng.uniform(0.1, 3, (1, 8))
  with jax.enable_x64(True):
    tx = gt.in_factored_geometry(EXACT_MSIGN, eps=0.0)
    out, _ = tx.update({"w": jnp.asarray(u)}, tx.init({"w": jnp.zeros((5, 8))}))
  d_left, d_right = _metrics([u], 0.95, 0.0)
  half_l, half_r = np.sqrt(d_left), np.sqrt(d_right)
  to_ball = lambda phi: phi / np.linalg.norm(half_l * phi * half_r, 2)
  best = np.sum(u * to_ball(np.asarray(out["w"])))
  candidates = [_msign(u)] + [rng.standard_normal(u.shape) for _ in range(200)]
  assert all(np.sum(u * to_ball(c)) <= best * (1 + 1e-9) for c in candidates)
  assert np.sum(u * to_ball(_msign(u))) < 0.99 * best  # the geometry matters here


def test_balanced_statistics_give_the_inner_transform_back():
  """A ±1 matrix has every row and column mean square 1: D = (1 + ε)I, and
  the result is the inner transform's (Muon's msign)."""
  u = np.sign(np.random.default_rng(3).standard_normal((6, 8)))
  with jax.enable_x64(True):
    tx = gt.in_factored_geometry(EXACT_MSIGN)
    out, _ = tx.update({"w": jnp.asarray(u)}, tx.init({"w": jnp.zeros((6, 8))}))
  np.testing.assert_allclose(out["w"], _msign(u), rtol=1e-9, atol=1e-12)


def test_inner_state_is_carried_and_vectors_pass_to_inner():
  inner = optax.scale_by_adam()
  tx = gt.in_factored_geometry(inner)
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  state = tx.init(params)
  grads = {"w": jnp.full((3, 4), 0.5), "b": jnp.arange(4.0)}
  out, state = jax.jit(tx.update)(grads, state)
  expected, _ = inner.update(grads, inner.init(params))
  np.testing.assert_allclose(out["b"], expected["b"], rtol=1e-6)
  assert int(state.inner_state.count) == 1 and state.nu_row["b"] is None


def test_zero_and_rank_deficient_updates_give_finite_results():
  tx = gt.in_factored_geometry(gt.orthogonalize_newton_schulz())
  state = tx.init({"w": jnp.zeros((4, 6))})
  for g in (jnp.zeros((4, 6)), jnp.outer(jnp.arange(4.0), jnp.ones(6))):
    out, state = tx.update({"w": g}, state)
    assert bool(jnp.isfinite(out["w"]).all())


def test_bad_arguments_are_refused_by_name():
  with pytest.raises(ValueError, match="b2"):
    gt.in_factored_geometry(EXACT_MSIGN, b2=1.5)
  with pytest.raises(ValueError, match="eps"):
    gt.in_factored_geometry(EXACT_MSIGN, eps=-1.0)
  with pytest.raises((TypeError, ValueError), match="inner"):
    gt.in_factored_geometry("msign")


def test_a_rank_one_update_becomes_its_sign_pattern_as_adam_first_step():
  """U = abᵀ: D_L ∝ |a|, D_R ∝ |b| (the root of the mean squares), so
  D_L^{-1/2} msign(D_L^{-1/2} U D_R^{-1/2}) D_R^{-1/2} ∝ sign(a_i b_j)."""
  rng = np.random.default_rng(4)
  a, b = rng.standard_normal(5) * 3, rng.standard_normal(7)
  u = np.outer(a, b)
  cubic = gt.orthogonalize_newton_schulz(5, "cubic", eps=0.0)  # exact on rank one
  with jax.enable_x64(True):
    tx = gt.in_factored_geometry(cubic, eps=0.0)
    out, _ = tx.update({"w": jnp.asarray(u)}, tx.init({"w": jnp.zeros((5, 7))}))
  phi = np.asarray(out["w"])
  np.testing.assert_allclose(phi, np.abs(phi).mean() * np.sign(u), rtol=1e-6)
