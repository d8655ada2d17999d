"""orthogonalize_low_rank against numpy SVD (U_k V_kᵀ) and a NumPy transcription of Dion."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.oracles import transcriptions as tl

SPECTRUM = 2.0 ** -np.arange(24)  # σ_{k+1}/σ_k = 1/2: known convergence rate


def _top_k(u, v, k):
  return u[:, :k] @ v[:, :k].T


@pytest.mark.parametrize("orthonormalize", ["qr", "cholesky_qr"])
@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_enough_power_iterations_give_the_exact_top_k(orthonormalize, shape):
  with jax.enable_x64(True):
    g, u, v = tl.matrix_with_spectrum(max(shape), min(shape), SPECTRUM)
    if shape[0] < shape[1]:
      g, u, v = g.T, v, u
    for k in (3, 6, 12):
      tx = gt.orthogonalize_low_rank(k, error_feedback=False, power_iters=60,
                                     orthonormalize=orthonormalize, eps=0.0)
      out, _ = jax.jit(tx.update)(jnp.asarray(g), tx.init(jnp.asarray(g)))
      np.testing.assert_allclose(out, _top_k(u, v, k), atol=1e-10)


def test_carried_basis_converges_over_steps_at_the_spectral_rate():
  """One power iteration per step, the basis carried: error ~ (σ_{k+1}/σ_k)^(2t)."""
  k = 4
  with jax.enable_x64(True):
    g, u, v = tl.matrix_with_spectrum(40, 24, SPECTRUM, seed=1)
    tx = gt.orthogonalize_low_rank(k, error_feedback=False, eps=0.0)
    state, update = tx.init(jnp.asarray(g)), jax.jit(tx.update)
    errors = []
    for _ in range(30):
      out, state = update(jnp.asarray(g), state)
      errors.append(float(np.abs(np.asarray(out) - _top_k(u, v, k)).max()))
  print(errors[::5])
  assert errors[5] < 1e-2 * errors[0]
  assert errors[-1] < 1e-12
  assert errors[9] > 1e-8  # still converging: the carried basis is what does it


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)])
@pytest.mark.parametrize("mu", [0.0, 0.95])
def test_error_feedback_trajectory_matches_dion_transcription(shape, mu):
  rng = np.random.default_rng(2)
  grads = rng.normal(size=(15, *shape))
  with jax.enable_x64(True):
    tx = gt.orthogonalize_low_rank(3, momentum=mu)
    state = tx.init(jnp.zeros(shape))
    m, q = np.zeros(shape), np.asarray(state.basis)[0]
    update = jax.jit(tx.update)
    for g in grads:
      ours, state = update(jnp.asarray(g), state)
      theirs, m, q = tl.dion_step(g, m, q, mu)
      np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-11)
      np.testing.assert_allclose(state.residual, m, rtol=1e-9, atol=1e-11)



@pytest.mark.parametrize("mu_dtype", [None, gt.StochasticBfloat16(seed=2), "int8"],
                         ids=["float", "stochastic_bf16", "int8"])
@pytest.mark.parametrize("orthonormalize", ["qr", "cholesky_qr"])
def test_same_shape_leaves_stepped_as_one_stack_match_the_transcription(mu_dtype,
                                                                       orthonormalize):
  """``batch_same_shape=True``: three same-shape leaves (and one of another
  shape, and a bias) stepped as a stack give each leaf the float64 Dion
  transcription's steps (float), and the per-leaf run's to round-off
  (stochastic bf16: the same rounding bits; int8 steps per leaf anyway)."""
  rng = np.random.default_rng(5)
  shapes = {"a": (12, 7), "b": (12, 7), "c": (12, 7), "d": (7, 5), "bias": (7,)}
  grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(12)]
  with jax.enable_x64(True):
    params = {k: jnp.zeros(s) for k, s in shapes.items()}
    make = lambda batch: gt.orthogonalize_low_rank(
        3, momentum=0.9, orthonormalize=orthonormalize, mu_dtype=mu_dtype,
        batch_same_shape=batch)
    runs = {}
    for batch in (True, False):
      tx = make(batch)
      state, update, out = tx.init(params), jax.jit(make(batch).update), []
      for g in grads:
        u, state = update(jax.tree.map(jnp.asarray, g), state)
        out.append(u)
      runs[batch] = (out, state)
    if mu_dtype is None and orthonormalize == "qr":
      state0 = make(True).init(params)
      for k in ("a", "d"):
        m, q = np.zeros(shapes[k]), np.asarray(state0.basis[k])[0]
        for g, u in zip(grads, runs[True][0]):
          theirs, m, q = tl.dion_step(g[k], m, q, 0.9)
          np.testing.assert_allclose(u[k], theirs, rtol=1e-8, atol=1e-10)
  for stacked, alone in zip(runs[True][0], runs[False][0]):
    for k in shapes:
      np.testing.assert_allclose(stacked[k], alone[k], rtol=1e-6, atol=1e-8)
  np.testing.assert_array_equal(runs[True][0][-1]["bias"], grads[-1]["bias"])


@pytest.mark.parametrize("mu_dtype, tolerance", [
    (jnp.bfloat16, 0.03), (gt.StochasticBfloat16(seed=1), 0.06),
    (gt.Int8Blocks(block_size=64, min_size=0), 0.1)], ids=["bf16", "stochastic_bf16", "int8"])
def test_a_narrow_buffer_follows_the_dion_transcription(mu_dtype, tolerance):
  """M stored narrow (``mu_dtype``) and read back each step: the updates stay
  near the float64 transcription's (its M exact), the state as stored. (The
  rank-4 subspace of Gaussian gradients is ill-conditioned: measured worst
  relative errors over 20 steps 0.015, 0.035 and 0.063; a buffer read or
  stored wrong is off by ~1.)"""
  rng = np.random.default_rng(3)
  grads = rng.normal(size=(20, 32, 24))
  tx = gt.orthogonalize_low_rank(4, momentum=0.95, mu_dtype=mu_dtype)
  state = tx.init(jnp.zeros((32, 24)))
  m, q = np.zeros((32, 24)), np.asarray(state.basis, np.float64)[0]
  update = jax.jit(tx.update)
  for g in grads:
    ours, state = update(jnp.asarray(g, jnp.float32), state)
    theirs, m, q = tl.dion_step(g, m, q, 0.95)
  relative = np.linalg.norm(np.asarray(ours, np.float64) - theirs) / np.linalg.norm(theirs)
  assert relative < tolerance, relative
  stored = state.residual
  if isinstance(mu_dtype, gt.Int8Blocks):
    assert isinstance(stored, gt.QuantizedArray)
  else:
    assert stored.dtype == jnp.bfloat16


def test_an_int8_buffer_stays_valid_codes_after_a_non_finite_gradient():
  """One NaN makes the whole matrix's P Rᵀ and basis NaN: the step shows NaN,
  and so do the later ones (the basis, as with a float buffer: README,
  Non-finite gradients); int8 blocks store M as 0, not codes of NaN."""
  rng = np.random.default_rng(4)
  tx = gt.orthogonalize_low_rank(4, momentum=0.95, mu_dtype="int8")
  g = jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)
  state = tx.init(g)
  _, state = tx.update(g, state)
  u, state = tx.update(g.at[3, 5].set(jnp.nan), state)
  assert bool(jnp.isnan(u).any())
  np.testing.assert_array_equal(gt.dequantize_blockwise(state.residual), 0.0)
  u, state = tx.update(g, state)
  assert bool(jnp.isnan(u).all())
  np.testing.assert_array_equal(gt.dequantize_blockwise(state.residual), 0.0)


def test_matrix_views_stacks_conv_kernels_and_fractional_rank():
  rng = np.random.default_rng(4)
  stack = np.stack([tl.matrix_with_spectrum(16, 8, SPECTRUM[:8], seed=i)[0] for i in range(3)])
  params = {"stack": jnp.asarray(stack, jnp.float32),
            "conv": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32),
            "bias": jnp.ones(8)}
  # The stack is declared as one (its leading axis indexes matrices); the conv
  # kernel and the bias get the default flax_matrix_view.
  view = lambda path, leaf: (
      gt.stacked_matrix_view()(path, leaf) if "stack" in jax.tree_util.keystr(path)
      else gt.flax_matrix_view(path, leaf))
  tx = gt.orthogonalize_low_rank(0.25, error_feedback=False, power_iters=30,
                                 matrix_view=view)
  state = tx.init(params)
  assert state.basis["stack"].shape == (3, 8, 2)  # ⌈0.25·8⌉ per matrix
  assert state.basis["conv"].shape == (1, 8, 2)  # one (3·3·4, 8) matrix
  assert isinstance(state.basis["bias"], optax.MaskedNode)
  assert isinstance(state.residual["stack"], optax.MaskedNode)
  out, _ = tx.update(params, state)
  np.testing.assert_array_equal(out["bias"], params["bias"])
  for i in range(3):
    uu, _, vt = np.linalg.svd(np.asarray(params["stack"][i], np.float64))
    np.testing.assert_allclose(out["stack"][i], uu[:, :2] @ vt[:2], atol=2e-3)
  assert out["conv"].shape == (3, 3, 4, 8)


@pytest.mark.parametrize("orthonormalize", ["qr", "cholesky_qr"])
def test_zero_input_gives_zero_and_no_nan(orthonormalize):
  tx = gt.orthogonalize_low_rank(2, orthonormalize=orthonormalize)
  z = jnp.zeros((5, 4), jnp.bfloat16)
  out, state = tx.update(z, tx.init(z))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, jnp.zeros_like(z))
  assert bool(jnp.isfinite(state.basis).all())


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), r"rank must be an integer >= 1 or a fraction in \(0, 1\]"),
    (dict(rank=1.5), r"rank must be an integer >= 1 or a fraction in \(0, 1\]"),
    (dict(rank=2, momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(rank=2, power_iters=0), r"power_iters must be an integer >= 1"),
    (dict(rank=2, orthonormalize="svd"), r"orthonormalize must be one of"),
    (dict(rank=2, seed=-1), r"seed must be an integer >= 0"),
])
def test_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gt.orthogonalize_low_rank(**kwargs)
