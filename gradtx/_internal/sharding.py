"""Explicit-mesh helpers for transforms that compute on a leaf where it lives.

On a mesh with ``AxisType.Explicit`` axes an array's sharding is part of its
type, and a matrix product over a sharded axis is refused (JAX cannot tell
how the result should be laid out). A transform that works on a leaf in
place therefore gathers the axes it multiplies over (``gather``), computes,
and gives the result the input's sharding back (``reshard_like``): Dion's
low-rank step, K-FAC, Adam-mini's blocks, a quantized state's codes, and
``newton_schulz`` called on a sharded array. Or it lets XLA lay out the data
movement (``in_auto_axes``: grafting, PSGD, Hyperball, the second-moment
normalisation, the factored geometries).

The stacked matrix transforms (``orthogonalize_newton_schulz``,
``clip_singular_values``, ``kronecker_precondition``, ``scale_by_soap``) do
not gather: they move whole matrices to one owner device each and compute
there (``gradtx._internal.block_stacks``). Everywhere else (no mesh, ``Auto``
axes: GSPMD chooses the layout) these helpers are identities.
"""

import contextlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def explicit_sharding(
    x: jax.Array, axes: Optional[Sequence[int]] = None
) -> Optional[NamedSharding]:
  """``x``'s sharding (full-rank spec) if any of ``axes`` is sharded in its type.

  ``axes`` defaults to all of them. ``None`` when ``x`` carries no explicit
  sharding or those axes are all replicated.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
  if spec is None or mesh is None or x.ndim == 0:
    return None
  spec = P(*spec, *([None] * (x.ndim - len(spec))))
  axes = range(x.ndim) if axes is None else axes
  if all(spec[a] is None for a in axes):
    return None
  return NamedSharding(mesh, spec)


def gather(x: jax.Array, axes: Optional[Sequence[int]] = None) -> jax.Array:
  """``x`` with ``axes`` (default all) replicated; the other axes keep theirs."""
  sharding = explicit_sharding(x, axes)
  if sharding is None:
    return x
  axes = {a % x.ndim for a in (range(x.ndim) if axes is None else axes)}
  spec = P(*(None if i in axes else s for i, s in enumerate(sharding.spec)))
  return jax.sharding.reshard(x, NamedSharding(sharding.mesh, spec))


def like_on_kept_axes(y: jax.Array, x: Any) -> jax.Array:
  """``y``, whose axes are ``x``'s or reduced to 1 (a per-row or per-column
  statistic, ``keepdims``), typed with ``x``'s sharding on the axes it keeps
  (replicated on the reduced ones) on an Explicit mesh; ``x`` may be an
  abstract ``jax.ShapeDtypeStruct``. Elsewhere, or for a ``y`` of another
  rank, as it is."""
  if not isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) or y.ndim != len(x.shape):
    return y
  sharding = explicit_sharding(x)
  if sharding is None:
    return y
  spec = P(*(s if n == d and n > 1 else None
             for s, n, d in zip(sharding.spec, y.shape, x.shape)))
  if all(s is None for s in spec):
    return y
  if not isinstance(y, jax.core.Tracer):
    # An eager init (inside jax.set_mesh or not): placed on x's own devices.
    placed = getattr(x, "sharding", None)
    if not isinstance(placed, NamedSharding) or isinstance(placed.mesh, AbstractMesh):
      return y
    return jax.device_put(y, NamedSharding(placed.mesh, spec))
  in_a_mesh = not jax.sharding.get_abstract_mesh().empty
  with contextlib.nullcontext() if in_a_mesh else jax.sharding.use_abstract_mesh(sharding.mesh):
    return jax.sharding.reshard(y, NamedSharding(sharding.mesh, spec))


def committed_like(updates: Any, reference: Any) -> Any:
  """``updates`` with each leaf that carries no mesh (an uncommitted array,
  host data) typed like its counterpart in ``reference`` (the parameters, or
  a state tree shaped like them) on an Explicit mesh; as they are elsewhere.

  For the transforms that find their mesh on the gradients (the owner
  stacks): an uncommitted gradient beside sharded parameters and state
  otherwise took the one-device path against state stacks laid out on the
  mesh (a ``ShardingTypeError``), where element-wise optimizers follow the
  parameters' layout.
  """
  if reference is None:
    return updates
  leaves, treedef = jax.tree.flatten(updates)
  references = jax.tree.leaves(reference)
  if len(references) != len(leaves):
    return updates

  def leaf(u, r):
    mesh = getattr(getattr(jax.typeof(u), "sharding", None), "mesh", None)
    if (mesh is not None and not mesh.empty) or jnp.shape(u) != jnp.shape(r):
      return u
    if not isinstance(u, jax.core.Tracer) and not isinstance(r, jax.core.Tracer):
      # Eager: placed, as jit places its inputs.
      placed = getattr(r, "sharding", None)
      if isinstance(placed, NamedSharding) and AxisType.Explicit in placed.mesh.axis_types:
        return jax.device_put(u, placed)
      return u
    return reshard_like(u, r)

  return treedef.unflatten([leaf(u, r) for u, r in zip(leaves, references)])


def reshard_like(y: jax.Array, x: jax.Array) -> jax.Array:
  """``y`` (shaped like ``x``) typed with ``x``'s sharding on an Explicit mesh.

  Also where ``x`` is replicated: a state leaf keeps the sharding ``init``
  gave it even if the computation would lay it out differently (a mean over
  one axis of a sharded gradient), so the jitted step's output state has
  its input's type and the step is not compiled again.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or AxisType.Explicit not in mesh.axis_types:
    return y
  if jax.typeof(y).sharding.spec == sharding.spec:
    return y
  return jax.sharding.reshard(y, sharding)


def in_auto_axes(fn, *args, like):
  """``fn(*args)``, on an Explicit mesh with XLA choosing the layouts inside.

  For computations whose reshapes or contractions cross sharded axes (which
  Explicit types refuse): inside, the axes are Auto and the partitioner lays
  out the data movement; each output is typed with the sharding of its
  counterpart in ``like`` (an array, or a pytree shaped like ``fn``'s
  output). Elsewhere it is a plain call.
  """
  mesh = None
  for leaf in jax.tree.leaves(like):
    candidate = getattr(getattr(jax.typeof(leaf), "sharding", None), "mesh", None)
    if candidate is not None and not candidate.empty:
      mesh = candidate
      break
  if mesh is None or AxisType.Explicit not in mesh.axis_types:
    return fn(*args)

  def spec(x):
    own = jax.typeof(x).sharding.spec
    return P(*own, *([None] * (x.ndim - len(own))))

  def run():
    return jax.sharding.auto_axes(fn, out_sharding=jax.tree.map(spec, like))(*args)

  if jax.sharding.get_abstract_mesh().empty:
    with jax.sharding.use_abstract_mesh(mesh):
      return run()
  return run()
