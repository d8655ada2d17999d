"""Matrix inverse p-th roots (gradtx/linalg/matrix_roots.py) vs float64 numpy eigh."""

import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from tests.oracles import runners, transcriptions


def _spd(rng, n, condition, batch=()):
  """Q diag(λ) Qᵀ with λ log-spaced in [1/condition, 1]."""
  q = np.linalg.qr(rng.standard_normal((*batch, n, n)))[0]
  return (q * np.geomspace(1, 1 / condition, n)) @ np.swapaxes(q, -1, -2)


# Relative Frobenius errors of the float32 roots (n = 32 and 128; worst over
# p = 2, 4), measured: condition 1e2: eigh ≤ 2e-6, newton ≤ 1.5e-6;
# 1e4: eigh ≤ 1e-4, newton ≤ 7e-5. The bounds leave a margin of ~5x.
@pytest.mark.parametrize("root_method, bound", [("eigh", 5e-4), ("newton", 5e-4)])
@pytest.mark.parametrize("p", [2, 4])
def test_inverse_root_matches_float64_eigh(root_method, bound, p):
  rng = np.random.default_rng(p)
  a = _spd(rng, 48, 1e4, batch=(3,))
  root = gt.inverse_pth_root(jnp.asarray(a, jnp.float32), p, root_method=root_method)
  expected = np.stack([transcriptions.inverse_root(block, p) for block in a])
  assert root.dtype == jnp.float32
  assert runners.relative_error(root, expected) < bound


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_ridge_terms_match_float64_eigh(root_method):
  a = _spd(np.random.default_rng(0), 16, 1e2)
  root = gt.inverse_pth_root(jnp.asarray(a, jnp.float32), 4, root_method=root_method,
                             damping=0.01, relative_damping=0.1)
  bound = 1.0 if root_method == "eigh" else min(np.linalg.norm(a), np.abs(a).sum(1).max())
  expected = transcriptions.inverse_root(a, 4, eps=0.01 + 0.1 * bound)
  assert runners.relative_error(root, expected) < 1e-5


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_zero_matrix_has_zero_root(root_method):
  root = gt.inverse_pth_root(jnp.zeros((2, 5, 5)), 4, root_method=root_method)
  np.testing.assert_array_equal(root, 0.0)



@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_a_zero_matrix_with_a_ridge_and_a_non_finite_matrix(root_method):
  """(0 + δI)^(-1/p) = δ^(-1/p) I; a NaN or inf entry gives a NaN root (the
  Newton iteration returned 0 for it, so a NaN step was followed by silent
  zero steps)."""
  root = gt.inverse_pth_root(jnp.zeros((5, 5)), 4, root_method=root_method, damping=1e-4)
  np.testing.assert_allclose(root, 10.0 * np.eye(5), rtol=1e-5)
  for bad in (np.nan, np.inf):
    a = jnp.eye(5).at[1, 2].set(bad).at[2, 1].set(bad)
    root = gt.inverse_pth_root(a, 4, root_method=root_method, damping=1e-4)
    assert bool(jnp.all(jnp.isnan(root))), (root_method, bad)

def test_eigh_root_of_rank_deficient_matrix_is_a_pseudo_inverse():
  u = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 2)))[0]
  a = (u * np.array([4.0, 1e-2])) @ u.T  # rank 2 of 8, no ridge
  root = np.asarray(gt.inverse_pth_root(jnp.asarray(a, jnp.float32), 4), np.float64)
  expected = (u * np.array([4.0, 1e-2]) ** -0.25) @ u.T
  np.testing.assert_allclose(root, expected, atol=1e-4)  # f32: cond 400


def test_newton_root_of_rank_deficient_matrix_is_finite_with_a_ridge():
  g = np.random.default_rng(2).standard_normal((8, 1))
  root = gt.inverse_pth_root(jnp.asarray(g @ g.T, jnp.float32), 4,
                             root_method="newton", relative_damping=1e-6)
  assert np.isfinite(root).all()
  expected = transcriptions.inverse_root(g @ g.T, 4, eps=1e-6 * float(np.sum(g * g)))
  assert runners.relative_error(root, expected) < 1e-2


def _daleckii_krein(a, direction, p):
  """dA^{-1/p} along ``direction`` in float64 NumPy: U (D ∘ Uᵀ E U) Uᵀ with
  D the divided differences of λ^{-1/p} (its derivative where they repeat)."""
  w, u = np.linalg.eigh(a)
  f = w ** (-1.0 / p)
  gap = w[:, None] - w[None, :]
  close = np.abs(gap) <= 1e-12 * w.max()
  divided = np.where(close, -(1.0 / p) * w[:, None] ** (-1.0 / p - 1) + 0 * w[None, :],
                     (f[:, None] - f[None, :]) / np.where(close, 1, gap))
  return u @ (divided * (u.T @ direction @ u)) @ u.T


@pytest.mark.parametrize("case", ["identity", "repeated", "rank_deficient"])
def test_the_eigh_roots_derivative_is_daleckii_krein_where_eigenvalues_repeat(case):
  """A^{-1/p} is smooth where eigenvalues repeat; eigh's own JVP divides by
  their gaps (NaN at A = I, Shampoo's statistic before its first non-zero
  gradient; ~1% off on rank-deficient statistics). Forward and reverse mode
  against the closed form (Daleckii–Krein) in float64, and for the ridge
  terms against central differences."""
  import jax

  rng = np.random.default_rng(0)
  e = rng.standard_normal((6, 6))
  e = e + e.T
  g = rng.standard_normal((6, 2))
  a = {"identity": np.eye(6),
       "repeated": np.diag([1.0, 1.0, 1.0, 2.0, 2.0, 3.0]),
       "rank_deficient": 1e-3 * np.eye(6) + g @ g.T}[case]
  with jax.enable_x64(True):
    root = lambda m: gt.inverse_pth_root(m, 4)
    _, tangent = jax.jvp(root, (jnp.asarray(a),), (jnp.asarray(e),))
    expected = _daleckii_krein(a, e, 4)
    np.testing.assert_allclose(tangent, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    weights = jnp.asarray(rng.standard_normal((6, 6)))
    grad = jax.grad(lambda m: jnp.sum(root(m) * weights))(jnp.asarray(a))
    np.testing.assert_allclose(float(jnp.sum(grad * e)), float(jnp.sum(expected * weights)),
                               rtol=1e-8)
    ridge = lambda d, r: gt.inverse_pth_root(jnp.asarray(a), 4, damping=d, relative_damping=r)
    d_damping = jax.jvp(lambda d: ridge(d, 1e-2), (0.1,), (1.0,))[1]
    d_relative = jax.jvp(lambda r: ridge(0.1, r), (1e-2,), (1.0,))[1]
    h = 1e-6
    np.testing.assert_allclose(d_damping, (ridge(0.1 + h, 1e-2) - ridge(0.1 - h, 1e-2)) / (2 * h),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(d_relative, (ridge(0.1, 1e-2 + h) - ridge(0.1, 1e-2 - h)) / (2 * h),
                               rtol=1e-6, atol=1e-9)


def test_the_roots_derivative_takes_integer_ridges_and_reads_the_hermitian_part():
  """Integer dampings (``damping=0``) gave float0 tangents to the custom JVP
  (a TypeError under jax.grad). eigh reads A's Hermitian part: the derivative
  along an antisymmetric direction is 0 and the gradient is symmetric."""
  import jax

  rng = np.random.default_rng(1)
  g = rng.standard_normal((5, 5))
  with jax.enable_x64(True):
    a = jnp.asarray(g @ g.T + np.eye(5))
    weights = jnp.asarray(rng.standard_normal((5, 5)))
    loss = lambda m, d: jnp.sum(gt.inverse_pth_root(m, 2, damping=d) * weights)
    np.testing.assert_allclose(jax.grad(loss)(a, 1), jax.grad(loss)(a, 1.0), rtol=1e-12)
    grad = jax.grad(loss)(a, 0)
    np.testing.assert_allclose(grad, grad.T, atol=1e-12)
    antisymmetric = jnp.asarray(g - g.T)
    _, tangent = jax.jvp(lambda m: gt.inverse_pth_root(m, 2), (a,), (antisymmetric,))
    np.testing.assert_allclose(tangent, 0.0, atol=1e-12)
