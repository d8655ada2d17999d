"""go.psgd_kron: psgd-jax's ``kron`` (PSGD Kron, decoupled decay, learning rate)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx import optimizers as go
from gradtx import transforms as gt
from gradtx.transforms import psgd_kron
from tests.oracles.transcriptions import psgd_kron_reference

SHAPES = {"w": (5, 3), "b": (3,)}


def test_trajectory_equals_psgd_jax_over_20_steps():
  """p ← p − η (u + λ p), u from the float64 transcription, same probes."""
  rng = np.random.default_rng(1)
  grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(20)]
  params0 = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
  lr, wd = 0.05, 0.1
  with jax.enable_x64(True):
    tx = go.psgd_kron(lr, weight_decay=wd, precond_update_probability=1.0, seed=3)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    trajectory, probes, balances = [], [], []
    for g in grads:
      balance, draws = psgd_kron.draws(state[0].key, g)
      balances.append(bool(balance))
      probes.append({k: np.asarray(v) for k, v in zip(sorted(g), draws)})
      updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
      params = optax.apply_updates(params, updates)
      trajectory.append(params)
  reference = psgd_kron_reference(grads, probes, balances)
  expected = dict(params0)
  for params, (u, _) in zip(trajectory, reference):
    expected = {k: expected[k] - lr * (u[k] + wd * expected[k]) for k in SHAPES}
    for k in SHAPES:
      np.testing.assert_allclose(params[k], expected[k], rtol=1e-9, atol=1e-12)


def test_bfloat16_params_stay_bfloat16():
  params = {k: jnp.ones(s, jnp.bfloat16) for k, s in SHAPES.items()}
  tx = go.psgd_kron(1e-2, weight_decay=1e-2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(3):
    grads = jax.tree.map(lambda p, t=t: jnp.cos(p * (t + 1)), params)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


def test_the_default_update_schedule_survives_inject_hyperparams():
  """The default probability schedule is evaluated at psgd-jax's 1-based
  step. As a callable default, optax.inject_hyperparams took it for a
  schedule of its own 0-based count and shifted every fit by one step from
  step 501 on; the default is now None (static), and the same schedule."""
  import inspect  # noqa: PLC0415

  assert inspect.signature(go.psgd_kron).parameters["precond_update_probability"].default is None
  injected = optax.inject_hyperparams(
      go.psgd_kron, static_args=("max_size_triangular", "min_ndim_triangular",
                                 "memory_save_mode", "precond_dtype", "seed"))(1e-3)
  params = {"w": jnp.ones((4, 3))}
  assert "precond_update_probability" not in injected.init(params).hyperparams
  schedule = gt.precond_update_prob_schedule()
  explicit = gt.scale_by_psgd_kron(precond_update_probability=schedule)
  default = gt.scale_by_psgd_kron()
  state_e, state_d = explicit.init(params), default.init(params)
  for _ in range(3):
    u_e, state_e = explicit.update(params, state_e)
    u_d, state_d = default.update(params, state_d)
  np.testing.assert_array_equal(u_e["w"], u_d["w"])
