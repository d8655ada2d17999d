"""SOAP's transform: its steps one by one (Adam in the basis, the statistics, the
refresh and its schedule) against numpy, the first step and the eigenbasis.

Whole trajectories against the reference code are in tests/optimizers/test_soap.py;
argument checks, zero gradients, jit and dtypes in tests/transforms/test_contract.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt
from gradtx._internal.block_stacks import Group
from gradtx.transforms import soap


def test_soap_first_step_only_builds_the_basis():
  tx = gt.scale_by_soap()
  g = {"w": jnp.asarray(np.random.default_rng(11).standard_normal((5, 3)), jnp.float32),
       "b": jnp.ones(3)}
  u, state = tx.update(g, tx.init(g))
  assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(u))
  basis = np.asarray(state.left_basis["5x3"][0])
  np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-5)
  eigenvalues = np.diag(basis.T @ np.asarray(state.left_stats["5x3"][0]) @ basis)
  assert np.all(np.diff(eigenvalues) <= 1e-6)  # decreasing


def _spd(rng, n):
  a = rng.standard_normal((n, n))
  return a @ a.T + 0.1 * np.eye(n)


def _same_columns_up_to_sign(a, b):
  signs = np.sign(np.sum(a * b, axis=-2, keepdims=True))
  np.testing.assert_allclose(a * signs, b, rtol=1e-9, atol=1e-10)


def test_adam_in_basis_is_zero_at_step_one_then_bias_corrected_adam():
  rng = np.random.default_rng(0)
  x, m, v = rng.standard_normal((3, 4, 5))
  v = np.abs(v)
  b1, b2, eps = 0.9, 0.99, 1e-8
  with jax.enable_x64(True):
    u, m1, v1 = soap.adam_in_basis(jnp.int32(1), x, m, v, b1=b1, b2=b2, eps=eps)
    np.testing.assert_array_equal(u, 0)
    np.testing.assert_array_equal(m1, m)
    np.testing.assert_array_equal(v1, v)
    u, m3, v3 = soap.adam_in_basis(jnp.int32(4), x, m, v, b1=b1, b2=b2, eps=eps)
  m_ref, v_ref = b1 * m + (1 - b1) * x, b2 * v + (1 - b2) * x**2
  u_ref = np.sqrt(1 - b2**3) / (1 - b1**3) * m_ref / (np.sqrt(v_ref) + eps)
  np.testing.assert_allclose(m3, m_ref, rtol=1e-12)
  np.testing.assert_allclose(v3, v_ref, rtol=1e-12)
  np.testing.assert_allclose(u, u_ref, rtol=1e-12)


def test_accumulate_statistics_is_an_ema_of_the_gram_matrices():
  rng = np.random.default_rng(1)
  g, l0, r0 = rng.standard_normal((2, 4, 6)), _spd(rng, 4), _spd(rng, 6)
  with jax.enable_x64(True):
    left, right = soap.accumulate_statistics(
        {"a": jnp.stack([l0, l0])}, {"a": jnp.stack([r0, r0])}, {"a": jnp.asarray(g)}, 0.95)
  for i in range(2):
    np.testing.assert_allclose(left["a"][i], 0.95 * l0 + 0.05 * g[i] @ g[i].T, rtol=1e-12)
    np.testing.assert_allclose(right["a"][i], 0.95 * r0 + 0.05 * g[i].T @ g[i], rtol=1e-12)


def test_refreshed_side_sorts_by_estimated_eigenvalue_then_takes_one_power_step():
  rng = np.random.default_rng(2)
  stats = _spd(rng, 5)
  basis = np.linalg.qr(rng.standard_normal((5, 5)))[0]
  v = rng.random((5, 3))
  with jax.enable_x64(True):
    q, v_new = soap.refreshed_side(stats, basis, v, -2, refresh="qr")
    q_eigh, _ = soap.refreshed_side(stats, basis, v, -2, refresh="eigh")
  order = np.argsort(-np.diag(basis.T @ stats @ basis))
  np.testing.assert_array_equal(v_new, v[order])
  _same_columns_up_to_sign(np.asarray(q), np.linalg.qr(stats @ basis[:, order])[0])
  eigenvalues, eigenvectors = np.linalg.eigh(stats)
  _same_columns_up_to_sign(np.asarray(q_eigh), eigenvectors[:, ::-1])


def test_refresh_bases_builds_at_step_one_and_refreshes_every_k_steps():
  """precondition_every = 3: counts 1 (build), 4 and 7 (k = 3, 6) change the
  bases; 2, 3, 5 return them untouched."""
  rng = np.random.default_rng(3)
  group = Group("4x6", (4, 6), jnp.float64, True, True, ((0, 0, 1),), 1, 1)
  with jax.enable_x64(True):
    left, right = {"4x6": jnp.asarray(_spd(rng, 4))[None]}, {"4x6": jnp.asarray(_spd(rng, 6))[None]}
    bases = [{"4x6": jnp.eye(n, dtype=jnp.float64)[None]} for n in (4, 6)]
    moments = {"4x6": (jnp.asarray(rng.standard_normal((1, 4, 6))),
                       jnp.asarray(rng.random((1, 4, 6))))}
    changed = []
    for count in range(1, 8):
      lb, rb, _ = soap.refresh_bases(
          jnp.int32(count), (group,), None, left, right, *bases, moments,
          precondition_every=3, refresh="qr")
      changed.append(not np.allclose(lb["4x6"], bases[0]["4x6"]))
  assert changed == [True, False, False, True, False, False, True]


def test_moment_stacks_are_stored_in_the_parameters_dtype():
  """README (Dtypes): states take the parameter's dtype unless mu_dtype /
  nu_dtype say otherwise; the statistics and bases stay float32."""
  bf16 = {"a": jnp.ones((16, 24), jnp.bfloat16), "b": jnp.ones((16, 24), jnp.bfloat16)}
  state = gt.scale_by_soap().init(bf16)
  assert {x.dtype for x in jax.tree.leaves((state.mu_stacks, state.nu_stacks))} == {
      jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(state.left_stats)} == {jnp.dtype(jnp.float32)}
  mixed = {**bf16, "b": jnp.ones((16, 24), jnp.float32)}  # one stack, the wider dtype
  state = gt.scale_by_soap().init(mixed)
  assert {x.dtype for x in jax.tree.leaves(state.mu_stacks)} == {jnp.dtype(jnp.float32)}
  wide = gt.scale_by_soap(mu_dtype=jnp.float32, nu_dtype=jnp.float32).init(bf16)
  assert {x.dtype for x in jax.tree.leaves(wide.nu_stacks)} == {jnp.dtype(jnp.float32)}
  updates, _ = gt.scale_by_soap().update(bf16, gt.scale_by_soap().init(bf16), bf16)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("noise", [0.3, 0.03])
def test_int8_second_moment_keeps_the_step_of_a_gradient_with_one_dominant_direction(noise):
  """In the eigenbasis v spans ~1e8 when one direction dominates (entries
  1 + noise·N(0, 1)): stored as v, the 8-bit map's smallest code (~3e-7 of a
  block's largest) zeroed ~1.5% of it and the step grew 30x (relative error
  14.7 at step 15); stored as √v the int8 run follows the float32 one."""
  key = jax.random.PRNGKey(0)
  params = {"w": 0.02 * jax.random.normal(key, (128, 128))}
  grads = [{"w": 1.0 + noise * jax.random.normal(jax.random.fold_in(key, i), (128, 128))}
           for i in range(15)]

  def updates(**kwargs):
    tx = go.soap(1e-3, weight_decay=0.0, **kwargs)
    state, step, out = tx.init(params), jax.jit(tx.update), []
    for g in grads:
      u, state = step(g, state, params)
      out.append(u["w"])
    return out, state

  exact, _ = updates()
  quantized, state = updates(nu_dtype="int8")
  assert jax.tree.leaves(state[0].nu_stacks)[0].dtype == jnp.int8
  assert not jnp.any(quantized[0]) and not jnp.any(exact[0])  # the first step builds the basis
  for u, v in zip(quantized[1:], exact[1:]):
    assert float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v)) < 0.05


def test_float16_parameters_keep_the_eigenbasis_second_moment_finite():
  """v gathers σ₁² in the eigenbasis: 1.1e5 for a 512x512 gradient of ones,
  past float16's 65504 (it was stored in the parameters' float16: inf, and
  a zero step along the top direction)."""
  params = {"w": jnp.zeros((512, 512), jnp.float16)}
  tx = go.soap(1e-3, weight_decay=0.0)
  state, step = tx.init(params), jax.jit(tx.update)
  for i in range(12):
    g = {"w": (1.0 + 0.01 * jax.random.normal(jax.random.PRNGKey(i), (512, 512))
               ).astype(jnp.float16)}
    u, state = step(g, state, params)
  nu = state[0].nu_stacks["512x512"]
  assert nu.dtype == jnp.float32 and bool(jnp.isfinite(nu).all())
  assert u["w"].dtype == jnp.float16
  top = float(jnp.sum(u["w"].astype(jnp.float32)) / 512)  # along the unit all-ones matrix
  assert -1.5e-3 < top < -0.5e-3
