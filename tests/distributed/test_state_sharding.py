"""gt.state_shardings (gradtx/distributed/state_sharding.py): the state's layout
from the params'."""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go
from gradtx import transforms as gt

SPECS = {"w": P("x", None), "v": P(None, "y"), "b": P()}
SHAPES = {"w": (16, 8), "v": (8, 24), "b": (8,)}


def _params(mesh, abstract):
  def leaf(k):
    sharding = NamedSharding(mesh, SPECS[k])
    if abstract:
      return jax.ShapeDtypeStruct(SHAPES[k], jnp.float32, sharding=sharding)
    return jax.device_put(jnp.ones(SHAPES[k]), sharding)
  return {k: leaf(k) for k in SPECS}


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("make", [lambda: go.adamw(1e-3), lambda: go.muon(1e-2),
                                  lambda: go.soap(1e-3), lambda: optax.adam(1e-3)],
                         ids=["adamw", "muon", "soap", "optax.adam"])
def test_abstract_and_concrete_params_give_the_same_shardings_on_the_params_mesh(
    make, axis_type):
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type,) * 2)
  tx = make()
  from_arrays = gt.state_shardings(tx, _params(mesh, abstract=False))
  from_abstract = gt.state_shardings(tx, _params(mesh, abstract=True))
  assert jax.tree.structure(from_arrays) == jax.tree.structure(
      jax.eval_shape(tx.init, _params(mesh, abstract=True)))
  for a, b in zip(jax.tree.leaves(from_arrays), jax.tree.leaves(from_abstract)):
    assert a == b and a.mesh == mesh


def test_moments_follow_their_parameter_and_counts_are_replicated():
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
  shardings = gt.state_shardings(go.adamw(1e-3), _params(mesh, abstract=True))
  adam = shardings[0]
  for k, spec in SPECS.items():
    expected = NamedSharding(mesh, spec)
    ndim = len(SHAPES[k])
    assert adam.mu[k].is_equivalent_to(expected, ndim)
    assert adam.nu[k].is_equivalent_to(expected, ndim)
  assert adam.count.spec == P()


def test_statistics_stacks_are_split_over_all_devices():
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
  tx = go.shampoo(1e-3, precondition_every=1)
  shardings = gt.state_shardings(tx, _params(mesh, abstract=True))
  paths = jax.tree_util.tree_leaves_with_path(shardings)
  stats = [s for p, s in paths if "left_stats" in jax.tree_util.keystr(p)]
  # Along the stack, or along the rows where the mesh does not divide the
  # stack (stacks are stored unpadded): over all devices either way.
  owners = {P(("x", "y"), None, None), P(None, ("x", "y"), None)}
  assert stats and all(s.spec in owners for s in stats)


def test_jit_init_with_the_shardings_places_the_state():
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
  tx = go.muon(1e-2)
  params = _params(mesh, abstract=False)
  shardings = gt.state_shardings(tx, params)
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init, out_shardings=shardings)(params)
  for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def test_params_without_one_mesh_are_refused():
  with pytest.raises(ValueError, match="params must carry NamedShardings on one mesh"):
    gt.state_shardings(go.adamw(1e-3), {"w": jnp.ones(3)})
  a = jax.make_mesh((2,), ("x",))
  b = jax.make_mesh((4,), ("x",))
  params = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(a, P())),
            "v": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(b, P()))}
  with pytest.raises(ValueError, match="found 2 meshes"):
    gt.state_shardings(go.adamw(1e-3), params)
