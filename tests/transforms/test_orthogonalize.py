"""Newton–Schulz orthogonalization and singular-value clipping vs numpy's SVD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.oracles import problems, runners

# Output singular-value bands after 5 steps for inputs whose singular values
# satisfy σ/‖X‖_F >= 0.01: the scalar polynomial composition evaluated on a
# fine grid of [0.01, 1] (see the docstring of orthogonalize_newton_schulz).
BANDS = {
    "jordan": (0.68, 1.135),
    "polar_express": (0.87, 1.124),
    "cubic": (0.075, 1.0001),
}
SHAPES = {"tall": (48, 16), "wide": (16, 48), "square": (24, 24),
          "batched": (3, 12, 40)}


def _matrix_with_spectrum(shape, rng, low=0.1, high=1.0):
  """U diag(σ) Vᵀ with σ log-spaced in [low, high]; returns (x, U, σ, Vᵀ)."""
  *batch, m, n = shape
  k = min(m, n)
  u = np.linalg.qr(rng.standard_normal((*batch, m, k)))[0]
  v = np.linalg.qr(rng.standard_normal((*batch, n, k)))[0]
  sigma = np.broadcast_to(np.geomspace(high, low, k), (*batch, k))
  x = (u * sigma[..., None, :]) @ np.swapaxes(v, -1, -2)
  return x, u, sigma, v


def _stacked_if_3d(x):
  """3-D test inputs are stacks of matrices (a declared leading axis)."""
  return {"matrix_view": gt.stacked_matrix_view()} if np.ndim(x) == 3 else {}


def _orthogonalize(x, **kwargs):
  tx = gt.orthogonalize_newton_schulz(**_stacked_if_3d(x), **kwargs)
  return np.asarray(tx.update(jnp.asarray(x, jnp.float32), tx.init(None))[0],
                    np.float64)


@pytest.mark.parametrize("coefficients", list(BANDS))
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_singular_vectors_match_msign_and_values_lie_in_band(shape, coefficients):
  x, u, _, v = _matrix_with_spectrum(shape, np.random.default_rng(0))
  y = _orthogonalize(x, coefficients=coefficients)
  # In the input's singular bases the output must be diagonal: same U, V.
  core = np.swapaxes(u, -1, -2) @ y @ v
  diagonal = np.diagonal(core, axis1=-2, axis2=-1)
  off_diagonal = core - diagonal[..., None] * np.eye(core.shape[-1])
  assert np.abs(off_diagonal).max() < 1e-4
  low, high = BANDS[coefficients]
  assert diagonal.min() >= low and diagonal.max() <= high
  # Nothing of y lies outside span(U) x span(V).
  residual = y - u @ core @ np.swapaxes(v, -1, -2)
  assert np.abs(residual).max() < 1e-4


def test_polar_express_band_is_tighter_than_jordan():
  x, u, _, v = _matrix_with_spectrum((32, 96), np.random.default_rng(1), 0.02)
  widths = {}
  for name in ("jordan", "polar_express"):
    y = _orthogonalize(x, coefficients=name)
    sv = np.linalg.svd(y, compute_uv=False)
    widths[name] = sv.max() - sv.min()
  assert widths["polar_express"] < 0.6 * widths["jordan"]


def test_more_cubic_steps_converge_to_exact_msign():
  x, u, _, v = _matrix_with_spectrum((20, 30), np.random.default_rng(2), 0.3)
  y = _orthogonalize(x, coefficients="cubic", ns_steps=30)
  np.testing.assert_allclose(y, u @ np.swapaxes(v, -1, -2), atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (2, 8, 40), (24, 24)])
@pytest.mark.parametrize("coefficients", ["jordan", "polar_express"])
def test_gram_method_equals_standard(shape, coefficients):
  x = np.random.default_rng(3).standard_normal(shape)
  standard = _orthogonalize(x, coefficients=coefficients)
  gram = _orthogonalize(x, coefficients=coefficients, method="gram")
  np.testing.assert_allclose(gram, standard, atol=2e-4)


def test_batching_same_shape_matrices_gives_the_same_result():
  rng = np.random.default_rng(7)
  tree = {"a": rng.standard_normal((8, 12)), "b": rng.standard_normal((8, 12)),
          "c": rng.standard_normal((2, 8, 12)), "v": rng.standard_normal(5)}
  tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  separate, batched = (gt.orthogonalize_newton_schulz(batch_same_shape=b)
                       for b in (False, True))
  expected = separate.update(tree, separate.init(tree))[0]
  actual = jax.jit(batched.update)(tree, batched.init(tree))[0]
  for key in tree:
    np.testing.assert_allclose(actual[key], expected[key], atol=1e-5)


def test_bfloat16_compute_is_close_to_float32():
  # Measured: 6.8% relative Frobenius difference (bf16 keeps ~3 digits over
  # 5 iterations); the singular vectors still match.
  x, u, _, v = _matrix_with_spectrum((32, 80), np.random.default_rng(4))
  f32 = _orthogonalize(x)
  bf16 = _orthogonalize(x, compute_dtype=jnp.bfloat16)
  assert np.linalg.norm(bf16 - f32) / np.linalg.norm(f32) < 0.1
  core = np.swapaxes(u, -1, -2) @ bf16 @ v
  assert np.abs(core - np.diag(np.diagonal(core))).max() < 0.05


def test_custom_coefficients_and_step_count():
  x = np.random.default_rng(5).standard_normal((8, 12))
  custom = _orthogonalize(x, coefficients=[(3.4445, -4.7750, 2.0315)], ns_steps=3)
  jordan = _orthogonalize(x, coefficients="jordan", ns_steps=3)
  np.testing.assert_array_equal(custom, jordan)


def test_zero_and_rank_deficient_inputs_give_finite_output():
  zeros = _orthogonalize(np.zeros((6, 10)))
  np.testing.assert_array_equal(zeros, 0.0)
  rank_one = np.outer(np.arange(1.0, 7.0), np.ones(10))
  y = _orthogonalize(rank_one, method="gram")
  assert np.isfinite(y).all()
  sv = np.linalg.svd(y, compute_uv=False)
  assert 0.68 <= sv[0] <= 1.135 and np.all(sv[1:] < 1e-3)
  tiny = _orthogonalize(np.full((4, 4), 1e-30))
  assert np.isfinite(tiny).all()


@pytest.mark.parametrize("method", ["standard", "gram"])
def test_zero_input_gives_zero_with_eps_zero(method):
  """eps = 0 is allowed: the zero matrix is not divided by its zero norm."""
  zeros = _orthogonalize(np.zeros((6, 10)), eps=0.0, method=method)
  np.testing.assert_array_equal(zeros, 0.0)


def test_vectors_pass_through_and_dtype_is_kept():
  tx = gt.orthogonalize_newton_schulz()
  tree = {"b": jnp.arange(3.0), "w": jnp.ones((4, 6), jnp.bfloat16)}
  out, _ = jax.jit(tx.update)(tree, tx.init(tree))
  np.testing.assert_array_equal(out["b"], tree["b"])
  assert out["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(12, 7), (2, 5, 9)])
def test_clip_singular_values_matches_numpy_svd(shape):
  x = np.random.default_rng(6).standard_normal(shape)
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  expected = (u * np.clip(s, 0.5, 1.5)[..., None, :]) @ vt
  tx = gt.clip_singular_values(0.5, 1.5, **_stacked_if_3d(x))
  y = tx.update(jnp.asarray(x, jnp.float32), tx.init(None))[0]
  np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_singular_values_of_a_non_finite_matrix_is_nan(bad):
  """A matrix with a NaN or ±inf entry comes out NaN (with ±inf, LAPACK's SVD
  never returned); the other matrices of the stack are clipped as before."""
  x = np.random.default_rng(7).standard_normal((2, 5, 9))
  tx = gt.clip_singular_values(0.5, 1.5, **_stacked_if_3d(x))
  clean = tx.update(jnp.asarray(x, jnp.float32), tx.init(None))[0]
  x[1, 2, 3] = bad
  y = jax.jit(tx.update)(jnp.asarray(x, jnp.float32), tx.init(None))[0]
  assert bool(jnp.all(jnp.isnan(y[1])))
  np.testing.assert_allclose(y[0], clean[0], atol=1e-6)


def test_clip_singular_values_refuses_an_empty_interval():
  with pytest.raises(ValueError, match=r"max_value must be >= min_value.*=1.0 < min_value=2.0"):
    gt.clip_singular_values(2.0, 1.0)
  gt.clip_singular_values(1.0, 1.0)


def test_adaptive_scales_the_exact_msign_by_the_nuclear_norm():
  """With the classical iteration run to convergence O = UVᵀ, so ⟨U, O⟩ is
  ‖U‖_* = Σσ: the adaptive result is ‖U‖_*·UVᵀ (NumPy's SVD), per matrix."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 5, 3))
  tx = gt.orthogonalize_newton_schulz(60, "cubic", eps=0.0, adaptive=True,
                                      matrix_view=gt.stacked_matrix_view())
  with jax.enable_x64(True):
    u, _ = tx.update(jnp.asarray(x), tx.init(None))
  for matrix, got in zip(x, np.asarray(u)):
    left, sigma, right_h = np.linalg.svd(matrix, full_matrices=False)
    np.testing.assert_allclose(got, sigma.sum() * left @ right_h, rtol=1e-9, atol=1e-12)


def test_adaptive_is_optax_contrib_muons():
  """optax.contrib.muon(adaptive=True) (bias-corrected momentum, no Nesterov,
  eps 0) is this chain, over 20 float64 steps; without ``adaptive`` too."""
  rng = np.random.default_rng(0)
  params0 = {"w": rng.normal(size=(6, 4)), "v": rng.normal(size=(3, 5))}
  grad = problems.quadratic_grads(params0, seed=1)
  for adaptive in (False, True):
    ours = runners.run_gradtx(optax.chain(
        gt.ema(0.95, debias=True), gt.orthogonalize_newton_schulz(eps=0.0, adaptive=adaptive),
        gt.scale_by_matrix_shape("jordan"), gt.scale_by_learning_rate(0.02)), params0, grad, 20)
    theirs = runners.run_gradtx(optax.contrib.muon(0.02, nesterov=False, eps=0.0,
                                                   adaptive=adaptive), params0, grad, 20)
    runners.assert_trajectories_close(ours, theirs, 1e-12)


@pytest.mark.parametrize("preconditioning", ["spectral", "aol", "schatten"])
def test_preconditioning_is_optax_contrib_muons(preconditioning):
  """Each scaling of the input before the iterations, as
  ``optax.contrib.muon(preconditioning=...)`` (bias-corrected momentum, no
  Nesterov), over 20 float64 steps, on a wide and a tall matrix."""
  rng = np.random.default_rng(1)
  params0 = {"w": rng.normal(size=(6, 4)), "v": rng.normal(size=(3, 5))}
  grad = problems.quadratic_grads(params0, seed=2)
  ours = runners.run_gradtx(optax.chain(
      gt.ema(0.95, debias=True),
      gt.orthogonalize_newton_schulz(eps=1e-8, preconditioning=preconditioning),
      gt.scale_by_matrix_shape("jordan"), gt.scale_by_learning_rate(0.02)), params0, grad, 20)
  theirs = runners.run_gradtx(optax.contrib.muon(
      0.02, nesterov=False, eps=1e-8, preconditioning=preconditioning), params0, grad, 20)
  runners.assert_trajectories_close(ours, theirs, 1e-12)
  frobenius = runners.run_gradtx(optax.chain(
      gt.ema(0.95, debias=True), gt.orthogonalize_newton_schulz(eps=1e-8),
      gt.scale_by_matrix_shape("jordan"), gt.scale_by_learning_rate(0.02)), params0, grad, 20)
  assert runners.trajectory_errors(ours, frobenius)["updates"] > 1e-3


@pytest.mark.parametrize("preconditioning", ["spectral", "aol", "schatten"])
def test_preconditioned_input_is_within_the_unit_spectral_ball(preconditioning):
  """One cubic step from X₀ maps σ to 1.5σ − 0.5σ³, increasing on [0, 1]:
  the output's σ_max stays ≤ 1 (with spectral scaling, σ_max = 1 exactly), a
  zero matrix stays zero, and each matrix of a stack is scaled by its own bound."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 4, 7)) * np.array([1e-3, 1.0, 1e3])[:, None, None]  # one matrix, scaled
  with jax.enable_x64(True):
    y = np.asarray(gt.newton_schulz(jnp.asarray(x), 1, "cubic", eps=1e-12,
                                    preconditioning=preconditioning))
    zero = gt.newton_schulz(jnp.zeros((4, 7)), 3, preconditioning=preconditioning)
  top = np.linalg.svd(y, compute_uv=False).max(axis=-1)
  assert np.all(top <= 1 + 1e-12)
  if preconditioning == "spectral":
    np.testing.assert_allclose(top, 1.0, rtol=1e-12)
  np.testing.assert_allclose(top, top[0], rtol=1e-9)  # scale-invariant per matrix
  assert not np.any(zero)


def test_an_unknown_preconditioning_is_refused_by_name():
  with pytest.raises(ValueError, match="^preconditioning must be one of"):
    gt.orthogonalize_newton_schulz(preconditioning="nuclear")


@pytest.mark.parametrize("preconditioning", ["frobenius", "spectral", "aol", "schatten"])
def test_preconditioning_has_a_finite_derivative_at_a_zero_matrix(preconditioning):
  """A zero leaf (a frozen layer) inside a differentiated step: the scaling's
  √ of 0 had a NaN derivative (0·∞) for schatten's ‖UUᴴ‖_F."""
  def orthogonalized_sum(scale):
    x = scale * jnp.zeros((3, 5))
    return jnp.sum(gt.newton_schulz(x, 3, preconditioning=preconditioning))

  assert np.isfinite(float(jax.grad(orthogonalized_sum)(1.0)))
