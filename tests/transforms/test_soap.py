"""SOAP's transform: the first step, the eigenbasis, argument checks.

Whole trajectories against the reference code are in tests/optimizers/test_soap.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.parametrize("kwargs, name", [
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.1), "b2"),
    (dict(precondition_b2=1.0), "precondition_b2"),
    (dict(precondition_every=0), "precondition_every"),
    (dict(refresh="power"), "refresh"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    gt.scale_by_soap(**kwargs)
