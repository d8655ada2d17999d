"""SM3-II's per-axis accumulators (``scale_by_sm3``): by hand, against optax, edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.oracles import problems, runners

SHAPES = {"t": (3, 4, 5), "w": (4, 2), "v": (6,), "s": ()}


def _grads(steps, seed=0):
  rng = np.random.default_rng(seed)
  return [{k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
          for _ in range(steps)]


def test_two_steps_by_hand():
  """SM3-II on a 2x3 matrix: ν = min(row, column accumulators) + g², the
  accumulators the row and column maxima of ν."""
  g1 = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0]])
  g2 = np.array([[0.5, 0.0, 1.0], [-2.0, 1.0, 1.0]])
  tx = gt.scale_by_sm3(b1=0.0, eps_root=0.0)
  state = tx.init(jnp.zeros((2, 3)))
  rows, cols = np.zeros(2), np.zeros(3)
  for g in (g1, g2):
    nu = np.minimum(rows[:, None], cols[None, :]) + g**2
    u, state = tx.update(jnp.asarray(g, jnp.float32), state)
    expected = np.where(nu == 0, 0.0, g / np.sqrt(np.where(nu == 0, 1.0, nu)))
    np.testing.assert_allclose(u, expected, rtol=1e-6)
    rows, cols = nu.max(axis=1), nu.max(axis=0)
    np.testing.assert_allclose(state.axis_accumulators[0], rows, rtol=1e-6)
    np.testing.assert_allclose(state.axis_accumulators[1], cols, rtol=1e-6)


def test_state_holds_one_vector_per_axis_and_full_sums_of_vectors():
  params = {k: jnp.zeros(s, jnp.bfloat16) for k, s in SHAPES.items()}
  state = gt.scale_by_sm3().init(params)
  assert [a.shape for a in state.axis_accumulators["t"]] == [(3,), (4,), (5,)]
  assert [a.shape for a in state.axis_accumulators["w"]] == [(4,), (2,)]
  assert state.axis_accumulators["v"] is None and state.axis_accumulators["s"] is None
  assert state.sum_of_squares["v"].shape == (6,) and state.sum_of_squares["s"].shape == ()
  assert isinstance(state.sum_of_squares["t"], optax.MaskedNode)
  # Sums of squares in float32 whatever the parameters' dtype; momentum in theirs.
  assert state.axis_accumulators["t"][0].dtype == state.sum_of_squares["v"].dtype == jnp.float32
  assert state.mu["t"].dtype == jnp.bfloat16
  assert gt.scale_by_sm3(b1=0.0).init(params).mu is None


def test_the_accumulator_bounds_adagrads_sum_so_steps_are_no_larger():
  grads = _grads(8)
  sm3, adagrad = gt.scale_by_sm3(b1=0.0), gt.scale_by_adagrad(eps=0.0)
  s1, s2 = sm3.init(grads[0]), adagrad.init(grads[0])
  for g in grads:
    u1, s1 = sm3.update(g, s1)
    u2, s2 = adagrad.update(g, s2)
    for k in ("t", "w"):
      assert bool(jnp.all(jnp.abs(u1[k]) <= jnp.abs(u2[k]) * (1 + 1e-6))), k
    for k in ("v", "s"):  # vectors and scalars: AdaGrad itself
      np.testing.assert_allclose(u1[k], u2[k], rtol=1e-6)
  for k in ("t", "w"):  # a bound, not AdaGrad
    assert not np.allclose(u1[k], u2[k], rtol=1e-3), k


@pytest.mark.parametrize("b1", [0.9, 0.0])
def test_matches_optax_sm3_with_its_eps_inside_the_root(b1):
  """optax.sm3's eps 1e-8 sits inside the root: eps_root=1e-8 here (its
  scalars fail, so the tree has none)."""
  problem = problems.LogisticProblem(seed=5, steps=30)
  ours = runners.run_gradtx(
      optax.chain(gt.scale_by_sm3(b1=b1, eps_root=1e-8), gt.scale_by_learning_rate(0.1)),
      problem.params0, problem.grad, 30)
  theirs = runners.run_gradtx(optax.sm3(0.1, momentum=b1), problem.params0, problem.grad, 30)
  runners.assert_trajectories_close(ours, theirs, 1e-12)


def test_zero_gradients_give_zero_updates_and_nan_spreads_over_its_leaf():
  tx = gt.scale_by_sm3()
  params = {"w": jnp.zeros((3, 4)), "v": jnp.zeros(3)}
  state = tx.init(params)
  for _ in range(2):
    u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
  g = {"w": jnp.ones((3, 4)).at[0, 0].set(jnp.nan), "v": jnp.ones(3)}
  _, state = tx.update(g, state)
  ones = jax.tree.map(jnp.ones_like, params)
  u, state = tx.update(ones, state)
  # Row 0 and column 0 carry the NaN, then the maxima spread it to the whole
  # leaf (float states, as optax). The other leaf is untouched.
  nan = np.isnan(np.asarray(u["w"]))
  assert nan[0].all() and nan[:, 0].all() and not nan[1:, 1:].any()
  u, _ = tx.update(ones, state)
  assert bool(jnp.isnan(u["w"]).all()) and bool(jnp.isfinite(u["v"]).all())


def test_int8_momentum_skips_a_non_finite_coordinate():
  tx = gt.scale_by_sm3(mu_dtype=gt.Int8Blocks(64, 0))
  params = jnp.zeros((8, 16))
  state = tx.init(params)
  g = jnp.linspace(-1.0, 1.0, 128).reshape(8, 16)
  _, state = tx.update(g, state)
  u, state = tx.update(g.at[2, 3].set(jnp.inf), state)
  assert bool(jnp.isfinite(u).all()) and u[2, 3] == 0
  # The inf adds nothing to the accumulators: as a zero gradient there.
  _, reference = tx.update(g.at[2, 3].set(0.0), tx.update(g, tx.init(params))[1])
  for a, b in zip(state.axis_accumulators, reference.axis_accumulators):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_empty_leaves_stay_empty():
  tx = gt.scale_by_sm3()
  params = {"e": jnp.zeros((0, 3)), "w": jnp.ones((2, 2))}
  state = tx.init(params)
  u, state = jax.jit(tx.update)(params, state)
  assert u["e"].shape == (0, 3)
  np.testing.assert_array_equal(state.axis_accumulators["e"][1], 0.0)


@pytest.mark.parametrize("kwargs", [dict(b1=1.0), dict(b1=-0.5), dict(eps_root=-1.0)])
def test_bad_arguments_are_refused_by_name(kwargs):
  (name,) = kwargs
  with pytest.raises(ValueError, match=f"^{name} must be in"):
    gt.scale_by_sm3(**kwargs)
