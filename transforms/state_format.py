"""State formats of optimizer moments: float, block-wise 8-bit, stochastic bf16.

The ``mu_dtype`` / ``nu_dtype`` arguments of the transforms that keep moments
(``scale_by_adam``, ``ema``, ``scale_by_adam_mini``, ...) select how a state
leaf is stored (see ``gradtx.transforms.quantize`` for the 8-bit codec):

* ``None`` or a floating dtype: a plain array;
* ``"int8"`` or ``Int8Blocks(block_size, min_size)``: a ``QuantizedArray``
  (leaves under ``min_size`` elements stay float32);
* ``StochasticBfloat16(seed)``: bfloat16, rounded stochastically with bits
  that depend only on the seed, the step count and the leaf.

The transforms ``load`` a state leaf, update it in at least float32 and
``store`` it back, leaf by leaf inside their jitted update, so no float32 copy
of the whole state tree exists at once.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx.transforms import _sharding
from gradtx.transforms import _tree
from gradtx.transforms import _validate
from gradtx.transforms import quantize


@dataclasses.dataclass(frozen=True)
class Int8Blocks:
  """State format: block-wise 8-bit codes (``"int8"`` is the default one).

  Attributes:
    block_size: elements per block (one float32 scale each), >= 1.
    min_size: leaves with fewer elements stay float32.
  """

  block_size: int = 256
  min_size: int = 4096

  def __post_init__(self):
    object.__setattr__(
        self, "block_size", _validate.check_integer("block_size", self.block_size))
    object.__setattr__(
        self, "min_size", _validate.check_integer("min_size", self.min_size, 0))


@dataclasses.dataclass(frozen=True)
class StochasticBfloat16:
  """State format: bfloat16, stochastically rounded (reproducible per seed)."""

  seed: int = 0


def state_format(name: str, value: Any) -> Any:
  """Validates a ``*_dtype`` argument; returns its format.

  ``None`` (the parameter's dtype) and floating dtypes are returned as given;
  ``"int8"`` (or ``jnp.int8``) becomes ``Int8Blocks()``.
  """
  if value is None or isinstance(value, (Int8Blocks, StochasticBfloat16)):
    return value
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype == jnp.int8:
    return Int8Blocks()
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} must be None, a floating dtype, 'int8', gt.Int8Blocks(...) or"
        f" gt.StochasticBfloat16(...), got {value!r}"
    )
  return value


def needs_seed(*formats: Any) -> bool:
  """Whether storing in one of ``formats`` consumes random bits."""
  return any(isinstance(f, StochasticBfloat16) for f in formats)


def is_quantized(*formats: Any) -> bool:
  return any(isinstance(f, Int8Blocks) for f in formats)


def reset_non_finite(g: jax.Array, *values: jax.Array) -> tuple:
  """``values`` zeroed where the gradient ``g`` (or its square) is not finite.

  The non-finite guard of quantized state: a NaN or inf gradient resets its
  own coordinate's states and update to zero (as bitsandbytes does) instead
  of spoiling the scale of its block. The mask depends on ``g`` alone so
  that XLA fuses it into the computation of each value.
  """
  finite = jnp.isfinite(g * g)
  return tuple(None if v is None else jnp.where(finite, v, 0) for v in values)


def rounding_seeds(tree: Any, count: jax.Array) -> Any:
  """One uint32 seed per leaf of ``tree``, a function of ``count`` only."""
  leaves, treedef = jax.tree.flatten(tree)
  step = quantize.mix32(jnp.asarray(count).astype(jnp.uint32))
  return treedef.unflatten([
      quantize.mix32(step + jnp.uint32(i * 0x632BE5AB % 2**32))
      for i in range(len(leaves))
  ])


def _blocks_sharded_like(q: quantize.QuantizedArray, p: jax.Array) -> quantize.QuantizedArray:
  """Codes and scales split over the mesh axes of ``p``'s leading axis.

  Blocks follow the row-major flattening of ``p``, so when only ``p``'s
  first axis is sharded (data/FSDP-style) each device's rows are whole
  blocks of its own, as long as the blocks divide evenly; any other layout
  of ``p`` leaves the blocks replicated. Explicit meshes only (elsewhere the
  compiler picks a layout).
  """
  sharding = _sharding.explicit_sharding(p)
  if sharding is None or any(a is not None for a in sharding.spec[1:]):
    return q
  mesh, axes = sharding.mesh, sharding.spec[0]
  devices = int(np.prod([mesh.shape[a] for a in np.atleast_1d(axes)]))
  if p.shape[0] % devices or q.size // devices % q.block_size:
    return q
  place = lambda x: jax.sharding.reshard(
      x, NamedSharding(mesh, P(axes, *([None] * (x.ndim - 1)))))
  return quantize.QuantizedArray(place(q.codes), place(q.scales), q.shape, q.signed)


def _laid_out_like_codes(value: jax.Array, stored: quantize.QuantizedArray):
  """``value`` sharded so that flattening it into blocks is a local reshape.

  Codes split over their first axis (``_blocks_sharded_like``) need ``value``
  split the same way over its first axis; replicated codes need it whole.
  Explicit meshes only; elsewhere ``value`` is returned as it is.
  """
  codes = _sharding.explicit_sharding(stored.codes)
  if codes is None:
    return _sharding.gather(value)
  spec = P(codes.spec[0], *([None] * (value.ndim - 1)))
  return jax.sharding.reshard(value, NamedSharding(codes.mesh, spec))


def zeros_like_tree(params: Any, fmt: Any, *, signed: bool) -> Any:
  """Zero state shaped like ``params`` in format ``fmt``."""
  if isinstance(fmt, StochasticBfloat16):
    return _tree.zeros_like_tree(params, jnp.bfloat16)
  if not isinstance(fmt, Int8Blocks):
    return _tree.zeros_like_tree(params, fmt)

  def leaf(p):
    shape = tuple(p.shape)
    if np.prod(shape, dtype=np.int64) < fmt.min_size:
      return jnp.zeros(shape, jnp.float32)
    zeros = quantize.quantized_zeros(shape, signed=signed, block_size=fmt.block_size)
    return _blocks_sharded_like(zeros, p)

  # Block codes are not shaped like the parameter: built as statistics, so
  # sharding recipes (optax.tree_map_params, nnx metadata) leave them alone.
  return _tree.map_statistics(lambda p: (leaf(p),), 1, params)[0]


def load(stored: Any, dtype: Any) -> jax.Array:
  """A stored state leaf as an array of ``dtype``."""
  if isinstance(stored, quantize.QuantizedArray):
    return quantize.dequantize_blockwise(stored, dtype)
  return stored.astype(dtype)


def store(
    value: jax.Array,
    stored: Any,
    fmt: Any,
    seed: Optional[jax.Array] = None,
    stream: int = 0,
) -> Any:
  """``value`` in the format of the state leaf ``stored`` it replaces.

  A quantized ``stored`` needs a finite ``value``: the transforms reset
  non-finite coordinates first (``reset_non_finite``). ``seed`` (from
  ``rounding_seeds``) and ``stream`` (distinct for each state a transform
  keeps) decide the random bits of stochastic rounding.
  """
  if isinstance(stored, quantize.QuantizedArray):
    value = _laid_out_like_codes(value, stored)
    new = quantize.quantize_codes(value, stored.signed, stored.block_size, finite=True)
    # Codes and scales keep the layout init gave them (explicit meshes).
    return jax.tree.map(_sharding.reshard_like, new, stored)
  if isinstance(fmt, StochasticBfloat16):
    salt = jnp.uint32((fmt.seed * 0x27D4EB2F + stream * 0x165667B1) % 2**32)
    return quantize.stochastic_round(value, quantize.mix32(seed ^ salt))
  return _sharding.reshard_like(value.astype(stored.dtype), stored)
