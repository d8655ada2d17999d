"""Differentiating through optimizer steps (hypergradients, meta-learning).

The loss after three unrolled steps, differentiated by ``jax.grad`` with
respect to the initial parameters, against central finite differences in
float64 (README, Conventions: "Differentiating through a step"). The trees
hold two matrices of one shape, so the matrix optimizers step them as one
stack, taken apart with ``block_stacks.opaque`` (a zero-trip loop that
reverse mode could not go through).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt

SHAPES = {"w": (8, 6), "v": (8, 6), "b": (6,), "s": (6, 6)}


def _params(shapes=SHAPES):
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float64) for k, s in shapes.items()}


def _loss(params):
  return sum(jnp.sum(jnp.sin(x) * x + 0.5 * x**2) for x in jax.tree.leaves(params))


def _after_steps(tx, loss, steps=3):
  def run(params):
    state = tx.init(params)
    for _ in range(steps):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
    return loss(params)

  return run


def _check_against_finite_differences(fn, params, rtol):
  direction = jax.tree.map(
      lambda x: jnp.asarray(np.random.default_rng(1).standard_normal(x.shape)), params)
  grad = jax.jit(jax.grad(fn))(params)
  along = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
  h = 1e-6
  shifted = lambda t: jax.jit(fn)(jax.tree.map(lambda x, d: x + t * d, params, direction))
  finite = (shifted(h) - shifted(-h)) / (2 * h)
  np.testing.assert_allclose(float(along), float(finite), rtol=rtol)


# Shampoo on full-rank statistics only (square matrices): eigh's derivative
# is inexact where eigenvalues repeat (README). PSGD Kron without the bias:
# its vector factor's derivative is NaN when XLA runs unoptimized, as the
# test suite's fast-compile flags make it (finite and equal to the finite
# differences under XLA's default optimization).
TREES = {"shampoo": {"w": (6, 6), "v": (6, 6), "b": (6,)},
         "psgd_kron": {"w": (8, 6), "v": (8, 6), "s": (6, 6)}}


@pytest.mark.parametrize("name", ["muon", "adamuon", "soap", "shampoo", "psgd_kron"])
def test_grad_through_steps_of_same_shape_matrices_matches_finite_differences(name):
  with jax.enable_x64(True):
    params = _params(TREES.get(name, SHAPES))
    kwargs = {"soap": {"max_precondition_dim": 6}}.get(name, {})
    _check_against_finite_differences(
        _after_steps(getattr(go, name)(0.01, **kwargs), _loss), params, rtol=1e-5)


def test_grad_through_soaps_first_step_is_finite():
  """SOAP's first step only builds the basis (v' = 0 there): √0's derivative
  made every gradient through it NaN, even on a square matrix."""
  with jax.enable_x64(True):
    params = {"s": _params()["s"]}
    _check_against_finite_differences(_after_steps(go.soap(0.01), _loss), params, rtol=1e-5)


def test_newton_schulz_of_zero_has_a_finite_derivative():
  """Zero in, zero out (API.md), and a finite derivative there: the
  Frobenius norm's √ at 0 made it NaN (a layer whose first gradient is 0)."""
  ns = gt.orthogonalize_newton_schulz()
  weights = jnp.arange(48.0).reshape(8, 6)
  f = lambda x: jnp.sum(ns.update({"w": x}, ns.init({"w": x}))[0]["w"] * weights)
  zero = jnp.zeros((8, 6))
  assert float(f(zero)) == 0.0
  assert bool(jnp.isfinite(jax.grad(f)(zero)).all())
