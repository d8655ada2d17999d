"""scale_by_trust_ratio: the ratio by hand, its edge cases and dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt


def test_ratio_by_hand_with_and_without_decay():
  p = jnp.array([[3.0, 0.0], [0.0, 4.0]])  # ‖p‖ = 5
  u = jnp.array([[0.0, 1.0], [0.0, 0.0]])  # ‖u‖ = 1
  lamb_like = gt.scale_by_trust_ratio()
  np.testing.assert_allclose(lamb_like.update(u, lamb_like.init(p), p)[0], 5 * u)
  lars_like = gt.scale_by_trust_ratio(trust_coefficient=0.1, eps=0.5, weight_decay=0.2)
  ratio = 0.1 * 5 / (1 + 0.2 * 5 + 0.5)
  np.testing.assert_allclose(
      lars_like.update(u, lars_like.init(p), p)[0], ratio * (u + 0.2 * p), rtol=1e-6)


def test_weight_decay_schedule_follows_the_step_count():
  schedule = optax.linear_schedule(0.0, 1.0, 2)
  tx = gt.scale_by_trust_ratio(weight_decay=schedule)
  p, u = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
  state = tx.init(p)
  first, state = tx.update(u, state, p)  # λ = 0
  second, state = tx.update(u, state, p)  # λ = 0.5
  np.testing.assert_allclose(first, u)
  np.testing.assert_allclose(second, (u + 0.5 * p) / 1.5, rtol=1e-6)
  assert int(state.count) == 2


def test_zero_parameters_zero_updates_and_scalars_give_finite_results():
  tx = gt.scale_by_trust_ratio(weight_decay=0.1)
  params = {"zero": jnp.zeros(3), "scalar": jnp.array(2.0), "w": jnp.ones((2, 2))}
  updates = {"zero": jnp.ones(3), "scalar": jnp.array(-1.0), "w": jnp.zeros((2, 2))}
  out, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_allclose(out["zero"], jnp.ones(3))  # ratio 1: the leaf moves
  np.testing.assert_allclose(out["scalar"], 2.0 / 1.2 * (-1.0 + 0.2), rtol=1e-6)
  # A zero gradient leaves only the decay, at ratio ‖p‖/(λ‖p‖) = 1/λ.
  np.testing.assert_allclose(out["w"], jnp.ones((2, 2)), rtol=1e-6)
  nothing, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params),
                         jax.tree.map(jnp.zeros_like, params))
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(nothing))


def test_bfloat16_stays_bfloat16_and_needs_params():
  tx = gt.scale_by_trust_ratio(weight_decay=0.1)
  p = jnp.ones((4, 4), jnp.bfloat16)
  out, _ = jax.jit(tx.update)(p, tx.init(p), p)
  assert out.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="needs params"):
    tx.update(p, tx.init(p))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_gradient_makes_the_whole_leaf_nan(bad):
  """Its norm is not finite, so neither is the ratio: no coordinate takes the
  ratio-1 step of a zero-initialised leaf (LARS's ~300x step), and no ±inf
  leaves zeros beside it."""
  tx = gt.scale_by_trust_ratio(trust_coefficient=1e-3, weight_decay=1e-2)
  p = jnp.ones(8)
  u = jnp.full(8, 0.5).at[0].set(bad)
  updates, _ = tx.update({"w": u, "b": jnp.ones(3)}, tx.init({"w": p, "b": p[:3]}),
                         {"w": p, "b": p[:3]})
  assert bool(jnp.all(jnp.isnan(updates["w"])))
  assert bool(jnp.all(jnp.isfinite(updates["b"])))


def test_a_finite_gradient_whose_sum_of_squares_overflows_counts_as_non_finite():
  """Its norm is +inf (Σg² of 1e20·g overflows float32), as a ±inf element's
  would be: a NaN leaf (documented), not optax.lars's zero step and not a
  finite step of the wrong size; the other leaf is untouched."""
  tx = gt.scale_by_trust_ratio(trust_coefficient=1e-3, weight_decay=1e-2)
  params = {"w": jnp.linspace(0.5, 2.0, 12).reshape(4, 3), "b": jnp.ones(3)}
  grads = {"w": jnp.arange(1.0, 13.0).reshape(4, 3), "b": jnp.array([0.5, -1.0, 2.0])}
  small, _ = tx.update(grads, tx.init(params), params)
  huge, _ = jax.jit(tx.update)(
      {"w": 1e20 * grads["w"], "b": grads["b"]}, tx.init(params), params)
  assert bool(jnp.all(jnp.isfinite(1e20 * grads["w"])))
  assert bool(jnp.all(jnp.isnan(huge["w"])))
  np.testing.assert_allclose(huge["b"], small["b"])


def test_min_norm_floors_both_norms_as_optax():
  """optax.scale_by_trust_ratio(min_norm): a zero leaf moves by min_norm·u/‖u‖,
  a tiny update is scaled by ‖p‖/min_norm; the same as optax's on both."""
  params = {"zero": jnp.zeros(3), "w": jnp.array([3.0, 4.0])}
  updates = {"zero": jnp.array([1.0, 2.0, 2.0]), "w": jnp.array([0.0, 1e-8])}
  ours = gt.scale_by_trust_ratio(1e-3)
  theirs = optax.scale_by_trust_ratio(1e-3)
  got, _ = ours.update(updates, ours.init(params), params)
  want, _ = theirs.update(updates, theirs.init(params), params)
  np.testing.assert_allclose(got["zero"], 1e-3 * np.array([1.0, 2.0, 2.0]) / 3, rtol=1e-6)
  np.testing.assert_allclose(got["w"], [0.0, 5.0 / 1e-3 * 1e-8], rtol=1e-6)
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  with pytest.raises(ValueError, match=r"min_norm must be in \[0, inf\)"):
    gt.scale_by_trust_ratio(-1.0)
