"""kfac_precondition against kfac-jax's OptaxPreconditioner on a tanh MLP, float64.

Both sides train the same MLP (tests/oracles/kfac_runners.py) with SGD on the
preconditioned gradient, from the same start and on the same batches, with
the same damping and factor decay; kfac-jax estimates the factors itself
(``estimation_mode="fisher_empirical"``), gradtx from records of the inputs
and output gradients of each dense layer, taken here by hand with zero taps.
Its steps one by one (the factors of a record, the inverses' schedule, the
diagonal rule, the layer product, the norm constraint) against numpy.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from gradtx.transforms import kfac
from tests.oracles import kfac_runners as tk

LR = 0.1
DAMPING = 1e-2
EMA = 0.9


def _records(params, x, y):
  layers = [k for k in params if k.startswith("l")]
  taps = {k: jnp.zeros((x.shape[0], params[k]["kernel"].shape[1])) for k in layers}
  grads, deltas = jax.grad(tk.loss, (0, 3))(params, x, y, taps)
  _, inputs = tk.forward(params, x)
  return grads, gt.Records({k: gt.DenseRecord(inputs[k], deltas[k]) for k in layers}, {})


def _run_gradtx(params, xs, ys, damping=DAMPING, **kwargs):
  tx = gt.kfac_precondition(damping=damping, precondition_b2=EMA, **kwargs)
  with jax.enable_x64(True):
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)

    @jax.jit
    def step(p, state, x, y):
      grads, records = _records(p, x, y)
      u, state = tx.update(grads, state, p, records=records)
      return jax.tree.map(lambda w, d: w - LR * d, p, u), state, u

    trajectory, preconditioned, factors = [params], [], []
    for t, (x, y) in enumerate(zip(xs, ys)):
      p, state, u = step(p, state, x, y)
      correction = 1 - EMA ** (t + 1)
      factors.append([(state.input_factors[k]["kernel"] / correction,
                       state.output_factors[k]["kernel"] / correction)
                      for k in sorted(k for k in p if k.startswith("l"))])
      trajectory.append(jax.tree.map(np.asarray, p))
      preconditioned.append(jax.tree.map(np.asarray, u))
  return trajectory, preconditioned, jax.tree.map(np.asarray, factors)


def _max_relative_error(ours, theirs):
  return max(float(np.abs(a - b).max() / np.abs(b).max())
             for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))


@pytest.mark.parametrize("inverse_every,with_generic,norm_constraint", [
    (3, True, None), (1, False, 1e-3)])
def test_matches_kfac_jax(inverse_every, with_generic, norm_constraint):
  params, xs, ys = tk.problem(with_generic=with_generic)
  theirs = tk.run_kfac_jax(params, xs, ys, damping=DAMPING, ema=EMA, lr=LR,
                           inverse_every=inverse_every,
                           norm_constraint=norm_constraint)
  ours = _run_gradtx(params, xs, ys, precondition_every=inverse_every,
                     norm_constraint=norm_constraint)
  errors = {name: _max_relative_error(o, t)
            for name, o, t in zip(("params", "preconditioned", "factors"), ours, theirs)}
  print(errors)
  assert errors["factors"] < 1e-13  # A = mean ããᵀ, G = Σ δδᵀ: kfac-jax's estimates
  assert errors["preconditioned"] < 1e-11
  assert errors["params"] < 1e-11
  if norm_constraint is not None:
    return
  # The comparison tells a 2x larger damping apart.
  other = _run_gradtx(params, xs, ys, damping=2 * DAMPING,
                      precondition_every=inverse_every,
                      norm_constraint=norm_constraint)[1]
  assert _max_relative_error(other, theirs[1]) > 1e-3


def test_damping_and_ridge_are_kfac_jax_s_pi_adjusted_ones():
  """Same factors and damping → the same (Â/π + √λI)⁻¹ V (πĜ + √λI)⁻¹ as kfac-jax."""
  kfac_jax = tk._compat()
  from kfac_jax._src.utils import math as kmath
  rng = np.random.default_rng(3)
  a = rng.normal(size=(5, 40))
  a = a @ a.T / 40
  g = rng.normal(size=(3, 9))
  g = 1e-3 * g @ g.T
  v = rng.normal(size=(5, 3))
  with jax.enable_x64(True):
    for damping in (1e-4, 1e-1):
      inv_a, inv_g = gt.kfac.damped_inverses(jnp.asarray(a), jnp.asarray(g), damping)
      ka, kg = kmath.pi_adjusted_kronecker_inverse(
          jnp.asarray(a), jnp.asarray(g), damping=damping)
      ours, theirs = inv_a @ v @ inv_g, ka @ v @ kg
      np.testing.assert_allclose(ours, theirs, rtol=1e-12)
  del kfac_jax



def test_float32_inverses_of_ill_conditioned_factors_keep_kfac_jax_s_update():
  """Input features whose scales span 1e4 (A/π + √λI conditioned beyond 2e6):
  in float32 the Cholesky solve gives kfac-jax's update (its LU inverse) and
  float64's to ~1e-6; eigh's pseudo-inverse lost most of it (0.93 here)."""
  tk._compat()
  from kfac_jax._src.utils import math as kmath
  damping = 1e-6
  rng = np.random.default_rng(0)
  x = (30 * rng.standard_normal((256, 16)) * np.geomspace(100, 0.01, 16)).astype(np.float32)
  d = (30 * rng.standard_normal((256, 8)) / 256).astype(np.float32)
  grads = {"dense": {"kernel": jnp.asarray(x.T @ d), "bias": jnp.asarray(d.sum(0))}}
  params = jax.tree.map(jnp.zeros_like, grads)
  records = gt.Records({"dense": gt.DenseRecord(jnp.asarray(x), jnp.asarray(d))}, {})
  xt = np.concatenate([x, np.ones((256, 1), np.float32)], 1)
  a, g = xt.T @ xt / 256, d.T @ d
  v = np.concatenate([x.T @ d, d.sum(0)[None]], 0)
  inv_a, inv_g = kmath.pi_adjusted_kronecker_inverse(
      jnp.asarray(a), jnp.asarray(g), damping=jnp.float32(damping))
  theirs = np.asarray(inv_a @ v @ inv_g)[:-1]
  a64, g64 = a.astype(np.float64), g.astype(np.float64)
  pi = np.sqrt(np.trace(a64) / 17 / (np.trace(g64) / 8))
  exact = (np.linalg.inv(a64 / pi + np.sqrt(damping) * np.eye(17)) @ v
           @ np.linalg.inv(g64 * pi + np.sqrt(damping) * np.eye(8)))[:-1]
  relative = lambda u, w: np.linalg.norm(u - w) / np.linalg.norm(w)
  errors = {}
  for method in ("cholesky", "eigh"):
    tx = gt.kfac_precondition(damping=damping, precondition_b2=0.95, root_method=method)
    u, _ = tx.update(grads, tx.init(params), params, records=records)
    errors[method] = relative(np.asarray(u["dense"]["kernel"], np.float64), exact)
  assert errors["cholesky"] < 1e-5 and relative(theirs, exact) < 1e-5
  assert errors["eigh"] > 0.5  # the documented pseudo-inverse truncation


def test_a_non_finite_record_makes_the_layer_nan_for_good():
  """The factors stay NaN: so do the inverses and every later update (they
  became √λ I, a finite u = g/λ, before)."""
  params = {"d": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
  grads = jax.tree.map(lambda p: 0.1 * p, params)
  record = lambda x: gt.Records({"d": gt.DenseRecord(x, jnp.ones((4, 2)))}, {})
  for method in ("cholesky", "eigh", "newton"):
    tx = gt.kfac_precondition(damping=1e-3, root_method=method)
    _, state = tx.update(grads, tx.init(params), params, records=record(jnp.ones((4, 3))))
    _, state = tx.update(grads, state, params,
                         records=record(jnp.ones((4, 3)).at[0, 0].set(jnp.nan)))
    u, _ = tx.update(grads, state, params, records=record(jnp.ones((4, 3))))
    assert bool(jnp.all(jnp.isnan(u["d"]["kernel"]))), method

def test_zero_records_give_gradient_over_damping():
  params = {"d": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
  grads = jax.tree.map(lambda p: 2 * p, params)
  records = gt.Records({"d": gt.DenseRecord(jnp.zeros((4, 3)), jnp.zeros((4, 2)))}, {})
  tx = gt.kfac_precondition(damping=0.5)
  u, state = tx.update(grads, tx.init(params), records=records)
  jax.tree.map(lambda u_, g_: np.testing.assert_allclose(u_, g_ / 0.5, rtol=1e-6),
               u, grads)
  assert isinstance(state, gt.KfacPreconditionState)
  assert state.input_factors["d"]["kernel"].shape == (4, 4)  # fan_in + bias


def test_missing_or_mismatched_record_is_an_error():
  params = {"enc": {"kernel": jnp.ones((3, 2))}, "scale": jnp.ones(2)}
  tx = gt.kfac_precondition()
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"\['enc'\]\['kernel'\] needs a dense record.*no records"):
    tx.update(params, state)
  with pytest.raises(ValueError, match=r"no dense entry 'enc'"):
    tx.update(params, state, records=gt.Records({}, {}))
  bad = gt.Records({"enc": gt.DenseRecord(jnp.ones((4, 5)), jnp.ones((4, 2)))}, {})
  with pytest.raises(ValueError, match=r"'enc' has inputs \(..., 5\)"):
    tx.update(params, state, records=bad)
  # Without dense kernels no records are needed: the diagonal rule only.
  diagonal = {"scale": jnp.ones(2)}
  u, _ = tx.update(diagonal, tx.init(diagonal))
  np.testing.assert_allclose(u["scale"], 1 / (1 + 1e-3), rtol=1e-6)


def test_bf16_jit_one_trace_and_inverses_every_k():
  params = {"d": {"kernel": jnp.ones((3, 2), jnp.bfloat16), "bias": jnp.zeros(2, jnp.bfloat16)}}
  tx = gt.kfac_precondition(precondition_every=2)
  traces = []

  @jax.jit
  def step(state, x):
    traces.append(1)
    records = gt.Records({"d": gt.DenseRecord(x, jnp.cos(x[:, :2]))}, {})
    return tx.update(params, state, records=records)

  state = tx.init(params)
  inverses = []
  for t in range(4):
    u, state = step(state, jnp.full((4, 3), t + 1.0, jnp.bfloat16))
    inverses.append(np.asarray(state.input_inverses["d"]["kernel"]))
  assert len(traces) == 1
  assert u["d"]["kernel"].dtype == jnp.bfloat16
  assert state.input_factors["d"]["kernel"].dtype == jnp.float32
  np.testing.assert_array_equal(inverses[0], inverses[1])  # kept at step 2
  assert not np.array_equal(inverses[1], inverses[2])  # recomputed at step 3


@pytest.mark.parametrize("kwargs,message", [
    (dict(damping=0.0), r"damping must be in \(0, inf\), got 0.0"),
    (dict(precondition_b2=1.0), r"precondition_b2 must be in \[0, 1\), got 1.0"),
    (dict(precondition_every=0), r"precondition_every must be an integer >= 1"),
    (dict(norm_constraint=-1.0), r"norm_constraint must be in \(0, inf\)"),
    (dict(root_method="svd"), r"root_method must be one of"),
])
def test_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gt.kfac_precondition(**kwargs)


def test_a_stack_of_dense_kernels_is_refused_not_made_diagonal():
  """Issue 26: a scanned stack's (layers, in, out) kernel used to fall to the
  diagonal rule without a word."""
  params = {"layers": {"kernel": jnp.zeros((4, 8, 8)), "bias": jnp.zeros((4, 8))}}
  with pytest.raises(ValueError, match=r"\['layers'\]\['kernel'\] \(4, 8, 8\).*stack of dense"
                     r" kernels.*is_dense="):
    gt.kfac_precondition().init(params)
  # Convolution and attention kernels keep the diagonal rule, and so does a
  # stack under a rule of the user's own.
  conv = {"conv": {"kernel": jnp.zeros((3, 3, 2, 4))},
          "attn": {"query": {"kernel": jnp.zeros((8, 2, 4))}}}
  state = gt.kfac_precondition().init(conv)
  assert state.diag_stats["conv"]["kernel"].shape == (3, 3, 2, 4)
  state = gt.kfac_precondition(is_dense=lambda path, leaf: False).init(params)
  assert state.diag_stats["layers"]["kernel"].shape == (4, 8, 8)


def test_batch_factors_are_the_mean_input_gram_and_the_summed_output_gram():
  rng = np.random.default_rng(0)
  x, d = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 4))
  with jax.enable_x64(True):
    a, g = kfac.batch_factors(gt.DenseRecord(jnp.asarray(x), jnp.asarray(d)), True)
  x1 = np.concatenate([x.reshape(-1, 3), np.ones((10, 1))], 1)
  np.testing.assert_allclose(a, x1.T @ x1 / 10, rtol=1e-12)
  np.testing.assert_allclose(g, d.reshape(-1, 4).T @ d.reshape(-1, 4), rtol=1e-12)


def test_inverses_are_recomputed_at_steps_one_plus_multiples_of_k():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((3, 3))
  a = a @ a.T
  g = np.eye(2) * 2.0
  with jax.enable_x64(True):
    old = ([jnp.zeros((3, 3))], [jnp.zeros((2, 2))])
    recomputed = []
    for count in range(1, 8):
      inv_a, inv_g = kfac.inverses_at(
          jnp.int32(count), [jnp.asarray(a)], [jnp.asarray(g)], old,
          precondition_b2=0.9, damping=1e-2, precondition_every=3)
      recomputed.append(bool(np.any(np.asarray(inv_a[0]) != 0)))
      if recomputed[-1]:
        scale = 1 - 0.9**count
        ref_a, ref_g = kfac.damped_inverses(jnp.asarray(a / scale), jnp.asarray(g / scale), 1e-2)
        np.testing.assert_allclose(inv_a[0], ref_a, rtol=1e-10)
        np.testing.assert_allclose(inv_g[0], ref_g, rtol=1e-10)
  assert recomputed == [True, False, False, True, False, False, True]


def test_diagonal_step_is_kfac_jax_s_naive_diagonal_rule():
  rng = np.random.default_rng(2)
  g, v = rng.standard_normal(6), rng.random(6)
  with jax.enable_x64(True):
    u, v_new = kfac.diagonal_step(jnp.int32(3), jnp.asarray(g), jnp.asarray(v),
                                  precondition_b2=0.9, damping=1e-2)
  v_ref = 0.9 * v + 0.1 * g**2
  np.testing.assert_allclose(v_new, v_ref, rtol=1e-12)
  np.testing.assert_allclose(u, g / (v_ref / (1 - 0.9**3) + 1e-2), rtol=1e-12)


def test_precondition_layer_splits_the_kernel_and_bias_product():
  rng = np.random.default_rng(3)
  g_w, g_b = rng.standard_normal((3, 2)), rng.standard_normal(2)
  inv_a, inv_g = rng.standard_normal((4, 4)), rng.standard_normal((2, 2))
  with jax.enable_x64(True):
    grads = [jnp.asarray(g_w), jnp.asarray(g_b)]
    out = list(grads)
    kfac.precondition_layer(grads, out, 0, 1, jnp.asarray(inv_a), jnp.asarray(inv_g))
  u = inv_a @ np.concatenate([g_w, g_b[None]], 0) @ inv_g
  np.testing.assert_allclose(out[0], u[:3], rtol=1e-12)
  np.testing.assert_allclose(out[1], u[3], rtol=1e-12)


def test_constrain_norm_scales_by_min_one_and_root_c_over_inner_product():
  u, g = [jnp.full(3, 2.0)], [jnp.full(3, 1.0)]  # <u, g> = 6
  (small,) = kfac.constrain_norm(u, g, 1.5)
  np.testing.assert_allclose(small, 2.0 * np.sqrt(1.5 / 6.0), rtol=1e-6)
  (kept,) = kfac.constrain_norm(u, g, 60.0)
  np.testing.assert_array_equal(kept, u[0])


def test_a_zero_size_kernel_steps_empty_and_leaves_the_others_alone():
  """nnx.Linear(8, 0): its records reshape to (-1, 0) failed (ZeroDivisionError);
  now it takes the diagonal rule's empty step and needs no record."""
  dense = {"kernel": jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), "bias": jnp.ones(4)}
  params = {"dense": dense, "empty": {"kernel": jnp.ones((8, 0)), "bias": jnp.ones(0)}}
  record = gt.DenseRecord(jnp.cos(jnp.arange(24.0)).reshape(3, 8),
                          jnp.sin(jnp.arange(12.0)).reshape(3, 4))
  empty = gt.DenseRecord(jnp.ones((3, 8)), jnp.ones((3, 0)))
  tx = gt.kfac_precondition(damping=0.1)
  state = tx.init(params)
  u, state = tx.update(params, state, records=gt.Records({"dense": record, "empty": empty}, {}))
  alone, _ = tx.update({"dense": dense}, tx.init({"dense": dense}),
                       records=gt.Records({"dense": record}, {}))
  assert u["empty"]["kernel"].shape == (8, 0)
  np.testing.assert_array_equal(u["dense"]["kernel"], alone["dense"]["kernel"])
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  u, _ = tx.update(params, state, records=gt.Records({"dense": record}, {}))  # no record needed
