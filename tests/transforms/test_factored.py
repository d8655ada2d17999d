"""Adafactor's factored second moments against optax and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.support import helpers

SHAPES = {
    "matrix": (130, 200),  # factored: rows 130, columns 200
    "tall": (200, 150),  # factored with the larger axis first
    "stack": (3, 140, 129),  # two largest axes factored, the 3 kept
    "vector": (7,),
    "thin": (10, 300),  # second axis under min_dim_size_to_factor
}


def _grads(steps, seed=0):
  keys = jax.random.split(jax.random.key(seed), steps)
  return [
      {
          name: (i + 1) * jax.random.normal(jax.random.fold_in(k, i), shape)
          for i, (name, shape) in enumerate(SHAPES.items())
      }
      for k in keys
  ]


def _run(tx, grads):
  params = {name: jnp.zeros(shape) for name, shape in SHAPES.items()}
  return helpers.jit_updates(tx, grads, params)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"decay_rate": 0.5, "eps": 1e-3},
        {"min_dim_size_to_factor": 8},
        {"factored": False},
    ],
)
def test_matches_optax_scale_by_factored_rms(kwargs):
  optax_kwargs = dict(kwargs)
  if "eps" in optax_kwargs:
    optax_kwargs["epsilon"] = optax_kwargs.pop("eps")
  if "decay_offset" in optax_kwargs:
    optax_kwargs["step_offset"] = optax_kwargs.pop("decay_offset")
  grads = _grads(25)
  ours, _ = _run(gt.scale_by_factored_rms(**kwargs), grads)
  theirs, _ = _run(optax.scale_by_factored_rms(**optax_kwargs), grads)
  for a, b in zip(ours, theirs):
    for name in SHAPES:
      np.testing.assert_allclose(a[name], b[name], rtol=2e-5, atol=1e-6)


def test_state_holds_row_and_column_statistics_only():
  _, state = _run(gt.scale_by_factored_rms(), _grads(2))
  assert state.nu_row["matrix"].shape == (130,) and state.nu_col["matrix"].shape == (200,)
  assert state.nu_row["tall"].shape == (150,) and state.nu_col["tall"].shape == (200,)
  assert state.nu_row["stack"].shape == (3, 129) and state.nu_col["stack"].shape == (3, 140)
  for name in ("matrix", "tall", "stack"):
    assert isinstance(state.nu[name], optax.MaskedNode)
  for name in ("vector", "thin"):
    assert state.nu[name].shape == SHAPES[name]
    assert state.nu_row[name] is None and state.nu_col[name] is None
  assert int(state.count) == 2


def test_factored_update_by_hand():
  """Two steps on a 2x3 matrix (factored from size 1)."""
  g1 = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0]])
  g2 = np.array([[0.5, 0.0, 1.0], [-2.0, 1.0, 1.0]])
  tx = gt.scale_by_factored_rms(min_dim_size_to_factor=1, eps=0.0)
  state = tx.init(jnp.zeros((2, 3)))
  r = c = 0
  for t, g in enumerate((g1, g2), start=1):
    beta = 1 - t**-0.8
    r = beta * r + (1 - beta) * (g * g).mean(axis=1)
    c = beta * c + (1 - beta) * (g * g).mean(axis=0)
    expected = g / np.sqrt(np.outer(r, c) / r.mean())
    u, state = tx.update(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(u, expected, rtol=1e-6)
  np.testing.assert_allclose(state.nu_row, r, rtol=1e-6)
  np.testing.assert_allclose(state.nu_col, c, rtol=1e-6)


def test_decay_offset_restarts_the_schedule():
  tx = gt.scale_by_factored_rms(decay_offset=3, eps=0.0)
  g = [jnp.array([2.0, -1.0]), jnp.array([1.0, 3.0]), jnp.array([-4.0, 1.0]),
       jnp.array([1.0, 1.0]), jnp.array([3.0, -2.0])]
  state, updates = tx.init(g[0]), []
  for x in g:
    u, state = tx.update(x, state)
    updates.append(np.asarray(u))
  # Steps 1..4 (counts 0..3 <= offset) have decay 0: u = sign(g).
  np.testing.assert_allclose(updates[:4], np.sign(np.asarray(g[:4])), rtol=1e-6)
  beta = 1 - 2.0**-0.8
  v = beta * np.asarray(g[3]) ** 2 + (1 - beta) * np.asarray(g[4]) ** 2
  np.testing.assert_allclose(updates[4], np.asarray(g[4]) / np.sqrt(v), rtol=1e-6)


def test_zero_gradient_is_finite_and_bf16_stays_bf16():
  tx = gt.scale_by_factored_rms(min_dim_size_to_factor=2)
  params = {"w": jnp.zeros((4, 6), jnp.bfloat16), "b": jnp.zeros(3, jnp.bfloat16)}
  u, state = tx.update(params, tx.init(params))
  assert all(np.all(np.asarray(x, np.float32) == 0) for x in jax.tree.leaves(u))
  assert u["w"].dtype == jnp.bfloat16 and state.nu_row["w"].dtype == jnp.bfloat16


def test_factored_axes():
  assert gt.factored_axes((128, 256)) == (0, 1)
  assert gt.factored_axes((256, 128)) == (1, 0)
  assert gt.factored_axes((128, 128)) == (0, 1)
  assert gt.factored_axes((64, 256)) is None and gt.factored_axes((512,)) is None
  assert gt.factored_axes((2, 300, 200), 100) == (2, 1)
