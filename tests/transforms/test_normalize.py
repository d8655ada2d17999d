"""gt.normalize_by_second_moment against its equation, written out in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt
from gradtx.transforms import normalize
from tests.support import helpers


def _numpy_normalize(us, *, b2, eps, granularity, debias, renormalize):
  """The docstring's equations for one (rows, cols) matrix, float64."""
  v, out = 0.0, []
  for t, u in enumerate(us, start=1):
    sq = u * u
    stat = {"element": sq, "fan_out": sq.mean(axis=0, keepdims=True),
            "fan_in": sq.mean(axis=1, keepdims=True)}[granularity]
    v = b2 * v + (1 - b2) * stat
    v_hat = v / (1 - b2**t) if debias else v
    x = u / (np.sqrt(v_hat) + eps)
    if renormalize == "input":
      x = x * np.linalg.norm(u) / (np.linalg.norm(x) + eps)
    elif renormalize == "orthogonal":
      x = x * np.sqrt(min(u.shape)) / (np.linalg.norm(x) + eps)
    out.append(x)
  return out


@pytest.mark.parametrize("granularity", normalize.GRANULARITIES)
@pytest.mark.parametrize("renormalize", [None, "input", "orthogonal"])
@pytest.mark.parametrize("debias", [True, False])
def test_matches_the_equations_over_steps(granularity, renormalize, debias):
  rng = np.random.default_rng(0)
  us = [rng.standard_normal((5, 7)) * rng.uniform(0.1, 3, (5, 7)) for _ in range(6)]
  hyper = dict(b2=0.9, eps=1e-8, granularity=granularity, debias=debias,
               renormalize=renormalize)
  expected = _numpy_normalize(us, **hyper)
  with jax.enable_x64(True):
    tx = gt.normalize_by_second_moment(**hyper)
    got, _ = helpers.jit_updates(tx, [{"w": jnp.asarray(u)} for u in us])
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g["w"], e, rtol=1e-10)


def test_fan_out_keeps_one_statistic_per_output_neuron():
  tx = gt.normalize_by_second_moment(granularity="fan_out")
  state = tx.init({"w": jnp.ones((4, 6)), "b": jnp.ones(6)})
  assert state.nu["w"].shape == (1, 1, 6) and state.nu["b"] is None


def test_per_neuron_normalization_equalizes_the_column_norms():
  """One step, no debias subtleties: each output neuron's column ends with the
  same RMS (v of one step is (1−b₂)·mean u²)."""
  u = jnp.asarray(np.random.default_rng(1).standard_normal((8, 5)) * np.arange(1, 6))
  tx = gt.normalize_by_second_moment(granularity="fan_out", eps=0.0)
  out, _ = tx.update({"w": u}, tx.init({"w": u}))
  rms = np.sqrt(np.mean(np.square(out["w"]), axis=0))
  np.testing.assert_allclose(rms, rms[0], rtol=1e-5)


def test_leaves_without_a_matrix_view_pass_through_and_dtypes_stay():
  params = {"w": jnp.ones((4, 6), jnp.bfloat16), "b": jnp.arange(6.0)}
  tx = gt.normalize_by_second_moment(renormalize="orthogonal")
  state = tx.init(params)
  grads = {"w": jnp.full((4, 6), 0.5, jnp.bfloat16), "b": jnp.arange(6.0)}
  traces = []

  @jax.jit
  def step(grads, state):
    traces.append(1)  # counted at trace time (a cache size reads 0 after a clear_caches)
    return tx.update(grads, state)

  out, state2 = step(grads, state)
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(out["b"], grads["b"])
  assert jax.tree.map(lambda a, b: a.dtype == b.dtype, state, state2)
  out, _ = step(grads, state2)  # the same program (no retrace on dtype)
  assert len(traces) == 1


def test_zero_updates_stay_zero_and_finite():
  tx = gt.normalize_by_second_moment(renormalize="input")
  zeros = {"w": jnp.zeros((3, 4))}
  out, _ = helpers.jit_updates(tx, [zeros, zeros])
  assert all(float(jnp.abs(o["w"]).max()) == 0.0 for o in out)


def test_element_statistic_takes_a_state_format():
  tx = gt.normalize_by_second_moment(nu_dtype=jnp.bfloat16)
  state = tx.init({"w": jnp.ones((4, 6))})
  assert state.nu["w"].dtype == jnp.bfloat16


def test_bad_arguments_are_refused_by_name():
  for kwargs, name in ((dict(b2=1.0), "b2"), (dict(eps=-1.0), "eps"),
                       (dict(granularity="row"), "granularity"),
                       (dict(renormalize="spectral"), "renormalize")):
    with pytest.raises(ValueError, match=name):
      gt.normalize_by_second_moment(**kwargs)
