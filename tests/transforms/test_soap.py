"""SOAP's transform: the first step and the eigenbasis.

Whole trajectories against the reference code are in tests/optimizers/test_soap.py;
argument checks, zero gradients, jit and dtypes in tests/transforms/test_contract.py.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import transforms as gt


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
