"""PSGD Kron: psgd-jax's update in float64, factor kinds, schedule, dtypes,
the norm bound, one probe draw per stack.

(Argument checks, jit and zero gradients of the defaults:
tests/transforms/test_contract.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from gradtx.transforms import psgd_kron
from tests.oracles.transcriptions import psgd_kron_reference

SHAPES = {"w": (4, 6), "b": (6,), "t": (3, 2, 5), "s": ()}
# Seed 7's float64 draws balance the factors at least once in 20 steps (asserted).
SEED = 7
CONFIGS = {
    "default": {},
    "one_diag": dict(memory_save_mode="one_diag", precond_init_scale=2.0),
    "all_diag_no_momentum": dict(memory_save_mode="all_diag", b1=0.0),
    "large_dim_diagonal": dict(max_size_triangular=5, momentum_into_precond_update=False,
                               precond_lr=0.3),
}


def _grads(steps, seed=0, shapes=SHAPES):
  rng = np.random.default_rng(seed)
  return [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]


def _run(tx, grads):
  """Jitted steps; returns per step (draws, updates, factors)."""
  state = tx.init(jax.tree.map(jnp.zeros_like, grads[0]))
  step = jax.jit(tx.update)
  out = []
  for g in grads:
    balance, probes = psgd_kron.draws(state.key, g)
    updates, state = step(g, state)
    out.append((bool(balance), dict(zip(sorted(g), probes)), updates, state.factors))
  return out


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_factors_and_updates_equal_psgd_jax_over_20_steps(config):
  grads = _grads(20)
  with jax.enable_x64(True):
    tx = gt.scale_by_psgd_kron(precond_update_probability=1.0, seed=SEED, **config)
    run = _run(tx, [jax.tree.map(jnp.asarray, g) for g in grads])
  balances = [r[0] for r in run]
  assert any(balances)
  reference = psgd_kron_reference(
      grads, [jax.tree.map(np.asarray, r[1]) for r in run], balances, **config)
  for (_, _, updates, factors), (ref_updates, ref_factors) in zip(run, reference):
    for k in SHAPES:
      np.testing.assert_allclose(updates[k], ref_updates[k], rtol=1e-9, atol=1e-12)
      assert len(factors[k]) == len(ref_factors[k])
      for q, ref_q in zip(factors[k], ref_factors[k]):
        np.testing.assert_allclose(q.reshape(ref_q.shape), ref_q, rtol=1e-9, atol=1e-12)


def _stack_rule(path, leaf):
  """"stack_1" has its batch axis in the middle; experts are left to the default."""
  if jnp.ndim(leaf) == 3 and "stack_1" in str(path):
    return gt.MatrixView(rows=(0,), cols=(2,), batch=(1,))
  return None


@pytest.mark.parametrize("matrix_view", [None, _stack_rule], ids=["experts_by_name", "rule"])
def test_batch_axes_are_psgd_jax_s_scanned_layers(matrix_view):
  """Each index along a leaf's batch axes has its own factors, fitted and
  applied on its slice alone, with its own probe; damping and RMS cap are
  the whole leaf's: psgd-jax's update with the leaf in ``scanned_layers``
  (its stack axis moved first, where psgd-jax has it)."""
  name, axis = ("experts", 0) if matrix_view is None else ("stack_1", 1)
  shapes = {"w": (4, 6), name: (4, 3, 6) if axis == 1 else (3, 4, 6)}
  grads = _grads(12, shapes=shapes)
  first = lambda x: np.moveaxis(np.asarray(x), axis, 0)
  with jax.enable_x64(True):
    # A large initial Q, so that the RMS cap binds (on the whole leaf).
    tx = gt.scale_by_psgd_kron(precond_update_probability=1.0, seed=SEED,
                               matrix_view=matrix_view, precond_init_scale=3.0)
    state = tx.init(jax.tree.map(jnp.zeros_like, grads[0]))
    assert [q.shape for q in state.factors[name]] == [(3, 4, 4), (3, 6, 6)]
    run, balances, probes = [], [], []
    for g in grads:
      balance, draws = psgd_kron.draws(state.key, g, matrix_view)
      updates, state = jax.jit(tx.update)(g, state)
      run.append((updates, state.factors))
      balances.append(bool(balance))
      probes.append(dict(zip(sorted(g), draws)))
  assert any(balances)
  moved = lambda tree: {**tree, name: first(tree[name])}
  reference = psgd_kron_reference([moved(g) for g in grads], [moved(p) for p in probes],
                                  balances, scanned=(name,), precond_init_scale=3.0)
  for (updates, factors), (ref_updates, ref_factors) in zip(run, reference):
    np.testing.assert_allclose(updates["w"], ref_updates["w"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(first(updates[name]), ref_updates[name], rtol=1e-9, atol=1e-12)
    for q, ref_q in zip(factors[name], ref_factors[name], strict=True):
      np.testing.assert_allclose(q, ref_q, rtol=1e-9, atol=1e-12)
  # One probe per entry, not one draw split three ways.
  assert not np.allclose(first(probes[0][name])[0], first(probes[0][name])[1])


def test_factor_kinds():
  tri = lambda shape, **kw: psgd_kron.triangular_axes(
      shape, kw.get("max_size", 8192), kw.get("min_ndim", 2), kw.get("mode"))
  assert tri((4, 6)) == (True, True)
  assert tri((6,)) == (False,) and tri(()) == (False,)
  assert tri((1, 6)) == (False, True)
  assert tri((4, 6000), max_size=4096) == (True, False)
  assert tri((4, 6), mode="one_diag") == (True, False)
  assert tri((4, 6, 5), mode="all_diag") == (False, False, False)
  tx = gt.scale_by_psgd_kron(max_size_triangular=16)
  state = tx.init({"big": jnp.zeros((3, 40)), "s": jnp.zeros(())})
  assert [q.shape for q in state.factors["big"]] == [(3, 3), (40,)]
  assert [q.shape for q in state.factors["s"]] == [(1,)]


def test_zero_gradients_give_zero_updates_and_finite_factors():
  tx = gt.scale_by_psgd_kron(precond_update_probability=1.0)
  zeros = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  run = _run(tx, [zeros] * 5)
  for _, _, updates, factors in run:
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    assert all(bool(jnp.all(jnp.isfinite(q))) for q in jax.tree.leaves(factors))


def test_bfloat16_leaves_and_factors():
  grads = [jax.tree.map(lambda g: jnp.asarray(g, jnp.bfloat16), g) for g in _grads(3)]
  tx = gt.scale_by_psgd_kron(precond_update_probability=1.0, precond_dtype=jnp.bfloat16,
                             mu_dtype=jnp.bfloat16)
  run = _run(tx, grads)
  for _, _, updates, factors in run:
    assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
    assert {q.dtype for q in jax.tree.leaves(factors)} == {jnp.dtype(jnp.bfloat16)}
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  float32 = _run(gt.scale_by_psgd_kron(precond_update_probability=1.0), grads)
  assert {q.dtype for q in jax.tree.leaves(float32[-1][3])} == {jnp.dtype(jnp.float32)}


def test_a_run_is_determined_by_its_seed():
  grads = [jax.tree.map(jnp.asarray, g) for g in _grads(3)]
  first, again, other = (_run(gt.scale_by_psgd_kron(precond_update_probability=1.0, seed=s),
                              grads)[-1][3]["w"][0] for s in (0, 0, 1))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)


def test_update_probability_fits_every_ceil_one_over_p_steps():
  grads = [jax.tree.map(jnp.asarray, g) for g in _grads(6)]
  run = _run(gt.scale_by_psgd_kron(precond_update_probability=0.4), grads)
  initial = np.eye(4)
  fitted = [not np.array_equal(run[t][3]["w"][0], run[t - 1][3]["w"][0] if t else initial)
            for t in range(6)]
  assert fitted == [False, False, True, False, False, True]


def test_default_schedule_is_psgd_jax_s():
  schedule = gt.precond_update_prob_schedule()
  np.testing.assert_allclose(
      [schedule(t) for t in (0, 500, 1000, 5000)],
      [1.0, 1.0, np.exp(-0.5), 0.03], rtol=1e-6)


def test_one_trace_for_many_steps():
  traces = []
  tx = gt.scale_by_psgd_kron()

  @jax.jit
  def step(g, state):
    traces.append(1)
    return tx.update(g, state)

  grads = [jax.tree.map(jnp.asarray, g) for g in _grads(4)]
  state = tx.init(grads[0])
  for g in grads:
    _, state = step(g, state)
  assert len(traces) == 1


@pytest.mark.parametrize("size", [1, 2, 7, 40])
def test_norm_lower_bound_is_psgd_jax_s_on_the_symmetric_matrices_it_is_given(size):
  """fit_factors' A Aᵀ + B Bᵀ: psgd-jax's general bound (either branch), to
  rounding, and within [‖a‖/√2, ‖a‖] of numpy's spectral norm."""
  from tests.oracles.transcriptions import psgd_norm_lower_bound

  rng = np.random.default_rng(size)
  with jax.enable_x64(True):
    for rank in sorted({1, max(1, size // 3), size}):
      a, b = rng.standard_normal((size, rank)), rng.standard_normal((size, 3))
      m = a @ a.T + 1e-3 * (b @ b.T)
      got = float(jax.jit(psgd_kron.norm_lower_bound)(jnp.asarray(m)))
      np.testing.assert_allclose(got, psgd_norm_lower_bound(m), rtol=1e-12)
      exact = np.linalg.norm(m, 2)
      assert exact / np.sqrt(2) <= got <= exact * (1 + 1e-12)
    # A rank-one matrix's bound is its norm; a zero matrix's is 0 (no 0/0).
    v = rng.standard_normal(size)
    np.testing.assert_allclose(
        float(psgd_kron.norm_lower_bound(jnp.outer(v, v))), v @ v, rtol=1e-12)
    assert float(psgd_kron.norm_lower_bound(jnp.zeros((size, size)))) == 0.0


def _kernels_drawing_probes(tx, params):
  """The fused kernels of ``tx``'s compiled update that draw a normal probe
  (hold an ``erf_inv``)."""
  state = tx.init(params)
  hlo = jax.jit(tx.update).lower(params, state).compile().as_text()
  kernels = hlo.split("\n\n")
  return [k for k in kernels if k.startswith("%fused") and "erf_inv" in k]


def test_each_stack_draws_its_probe_in_one_kernel():
  """The probe is drawn once per stack (``probe_when``): drawn inline, XLA
  fused the draw into each of its consumers' kernels, three per shape."""
  params = {"a": jnp.ones((8, 16)), "b": jnp.ones((8, 16)), "c": jnp.ones((16, 4)),
            "bias": jnp.ones(16)}
  tx = gt.scale_by_psgd_kron(precond_update_probability=1.0)
  assert len(_kernels_drawing_probes(tx, params)) == 3  # (8, 16) x 2, (16, 4), (16,)


def test_factors_of_other_settings_are_refused_at_update():
  """flax's from_bytes restores any shape: triangular factors in an optimizer
  set to diagonal ones (max_size_triangular=4) stepped on, silently."""
  from flax import serialization
  params = {"w": jnp.ones((16, 8)), "b": jnp.zeros(8)}
  saved = serialization.to_bytes(gt.scale_by_psgd_kron().init(params))
  other = gt.scale_by_psgd_kron(max_size_triangular=4)
  restored = serialization.from_bytes(other.init(params), saved)
  with pytest.raises(ValueError, match=r"factor 0 of \['w'\] has shape \(16, 16\) but"
                     r" max_size_triangular.* give \(16,\)"):
    other.update(params, restored, params)
  other.update(params, other.init(params), params)  # its own state steps
