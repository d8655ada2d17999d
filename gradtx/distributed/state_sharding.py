"""The shardings of an optimizer state, derived from the parameters' shardings."""

from typing import Any

import jax
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _mesh_of(params: Any) -> Mesh:
  meshes = {
      leaf.sharding.mesh for leaf in jax.tree.leaves(params)
      if isinstance(getattr(leaf, "sharding", None), NamedSharding)
  }
  if len(meshes) != 1:
    raise ValueError(
        "params must carry NamedShardings on one mesh (arrays or"
        f" jax.ShapeDtypeStruct(..., sharding=...)), found {len(meshes)} meshes")
  return meshes.pop()


def state_shardings(tx: optax.GradientTransformation, params: Any) -> Any:
  """The ``NamedSharding`` of every leaf of ``tx.init(params)``'s state.

  ``params`` are arrays or ``jax.ShapeDtypeStruct`` leaves carrying
  ``NamedSharding``s of one mesh (of any axis types). Nothing is allocated:
  the state is traced abstractly on the mesh with Explicit axes, where every
  gradtx state leaf is typed as ``init`` lays it out — moments shaped like a
  parameter (including 8-bit moments of small leaves, and PSGD Kron's factor
  of a vector) like that parameter, Adam-mini's per-block second moments
  like their parameter on the axes a block keeps, the stacks of Kronecker
  statistics, SOAP bases and moments and PSGD Kron's factors of matrices
  split over all devices along their stack axis (their owners), 8-bit codes
  of row-sharded parameters by rows, other small statistics and counters
  replicated — and the specs are returned on ``params``' own mesh, full
  rank (``P(None,)`` for a replicated vector, as a jitted step returns it on
  Explicit axes). Use it for ``jax.jit(tx.init, out_shardings=...)``, the
  train step's in/out shardings, and orbax restore targets. On Auto axes
  give the step these ``out_shardings`` too: XLA's partitioner returns specs
  of its own form (trailing ``None`` dropped, or another layout of a
  statistic: Dion's bases), which ``jax.jit`` caches apart, so a step
  without them compiles twice (optax's states too). It works for optax's own
  transformations as well.

  Args:
    tx: any optax transformation (``tx.init`` is traced, not run).
    params: the parameters, or their abstract ``jax.ShapeDtypeStruct``s.

  Returns:
    A tree structured like the state, a ``NamedSharding`` at every leaf.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> from gradtx import optimizers as go, transforms as gt
    >>> mesh = jax.make_mesh((1,), ("d",))
    >>> params = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32,
    ...                                     sharding=NamedSharding(mesh, P("d")))}
    >>> shardings = gt.state_shardings(go.adamw(1e-3), params)
    >>> shardings[0].mu["w"].spec
    P('d', None)
  """
  mesh = _mesh_of(params)
  explicit = Mesh(mesh.devices, mesh.axis_names,
                  axis_types=(AxisType.Explicit,) * len(mesh.axis_names))

  def abstract(leaf):
    sharding = getattr(leaf, "sharding", None)
    spec = sharding.spec if isinstance(sharding, NamedSharding) else P()
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                sharding=NamedSharding(explicit, spec))

  with jax.set_mesh(explicit):
    state = jax.eval_shape(tx.init, jax.tree.map(abstract, params))

  def sharding_of(leaf):
    sharding = getattr(leaf, "sharding", None)
    spec = sharding.spec if isinstance(sharding, NamedSharding) else P()
    # Full rank, as a jitted step returns its outputs' specs on Explicit axes
    # (P(None,) for a replicated vector, not P()): the state then comes back
    # from the step with the sharding it went in with, and the step is
    # compiled once. On Auto axes XLA returns specs without trailing Nones:
    # give the step in/out shardings there (or it compiles twice).
    return NamedSharding(mesh, P(*spec, *([None] * (len(leaf.shape) - len(spec)))))

  return jax.tree.map(sharding_of, state)
