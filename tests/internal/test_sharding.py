"""Unit tests of the Explicit-mesh helpers in gradtx/_internal/sharding.py.

tests/conftest.py gives 8 host devices. The optimizers' sharded steps are
tested in tests/test_sharding.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx._internal import sharding as _sharding
from tests.support import helpers


def _placed(axis_type, spec):
  mesh = helpers.make_mesh(axis_type)
  x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, spec))
  return mesh, x


def test_explicit_sharding_sees_only_sharded_explicit_axes():
  mesh, x = _placed(AxisType.Explicit, P("x", None))
  assert _sharding.explicit_sharding(x).spec == P("x", None)
  assert _sharding.explicit_sharding(x, (1,)) is None
  assert _sharding.explicit_sharding(jnp.ones((8, 4))) is None
  _, auto = _placed(AxisType.Auto, P("x", "y"))
  assert _sharding.explicit_sharding(auto) is None


def test_gather_then_reshard_like_round_trips_under_jit():
  mesh, x = _placed(AxisType.Explicit, P("x", "y"))

  @jax.jit
  def f(x):
    gathered = _sharding.gather(x, (-1,))
    assert jax.typeof(gathered).sharding.spec == P("x", None)
    full = _sharding.gather(x)
    assert jax.typeof(full).sharding.spec == P(None, None)
    y = _sharding.reshard_like(full @ full.T @ full, x)
    assert jax.typeof(y).sharding.spec == P("x", "y")
    return y

  with jax.set_mesh(mesh):
    y = f(x)
  assert y.sharding.spec == P("x", "y")
  x_ = jnp.arange(32.0).reshape(8, 4)
  assert jnp.allclose(y, x_ @ x_.T @ x_)


def test_reshard_like_keeps_a_replicated_state_replicated():
  mesh, x = _placed(AxisType.Explicit, P("x", "y"))
  with jax.set_mesh(mesh):
    state = jax.device_put(jnp.zeros(4), NamedSharding(mesh, P()))

    @jax.jit
    def f(x, state):
      column_means = jnp.mean(x, axis=0)  # laid out like x's columns
      return _sharding.reshard_like(column_means, state)

    out = f(x, state)
  assert out.sharding.is_equivalent_to(state.sharding, 1)


def test_helpers_are_identities_off_explicit_meshes():
  x = jnp.ones((3, 2))
  assert _sharding.gather(x) is x
  np.testing.assert_array_equal(_sharding.reshard_like(x * 2, x), x * 2)
