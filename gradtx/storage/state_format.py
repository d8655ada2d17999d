"""State formats of optimizer moments: float, block-wise 8-bit, stochastic bf16.

The ``mu_dtype`` / ``nu_dtype`` arguments of the transforms that keep moments
(``scale_by_adam``, ``ema``, ``scale_by_adam_mini``, ...) select how a state
leaf is stored (see ``gradtx.storage.quantize`` for the 8-bit codec):

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
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import quantize


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
  """State format: bfloat16, stochastically rounded (reproducible per seed).

  Attributes:
    seed: an integer >= 0; the rounding's random bits are a hash of it, the
      step count and the element's index.
  """

  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "seed", _validate.check_integer("seed", self.seed, 0))


def state_format(name: str, value: Any) -> Any:
  """Validates a ``*_dtype`` argument; returns its format.

  ``None`` (the parameter's dtype), floating and complex dtypes are returned
  as given; ``"int8"`` (or ``jnp.int8``) becomes ``Int8Blocks()``.
  """
  if value is None or isinstance(value, (Int8Blocks, StochasticBfloat16)):
    return value
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype == jnp.int8:
    return Int8Blocks()
  if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
    raise ValueError(
        f"{name} must be None, a floating or complex dtype, 'int8',"
        f" gt.Int8Blocks(...) or gt.StochasticBfloat16(...), got {value!r}"
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


def maybe_rounding_seeds(tree: Any, count: jax.Array, *formats: Any) -> Any:
  """``rounding_seeds(tree, count)`` if one of ``formats`` needs them, else None."""
  return rounding_seeds(tree, count) if needs_seed(*formats) else None


def _blocks_sharded_like(q: quantize.QuantizedArray, p: jax.Array) -> quantize.QuantizedArray:
  """Codes and scales split like ``p`` over the leading axes they keep.

  The codes keep ``p``'s leading axes that are whole blocks
  (``quantize.block_lead_axes``): each of those is split over the mesh axes
  ``p``'s is (where they divide it), and the next one, the axis whose
  sub-arrays the blocks cut, where each device's share of it is whole
  blocks. So FSDP rows, the layer and row axes of a scanned stack and
  tensor-parallel columns of 256-multiples split their codes as their
  parameter. A sharded axis the codes merge into the blocks does not split
  them: the devices along it hold those blocks whole, and a step gathers the
  value over it before encoding. Explicit meshes only (elsewhere the
  compiler picks a layout).
  """
  sharding = _sharding.explicit_sharding(p)
  if sharding is None or not q.shape:
    return q
  mesh, lead = sharding.mesh, q.lead_axes
  spec = tuple(sharding.spec) + (None,) * (len(q.shape) - len(sharding.spec))
  devices = lambda axes: int(np.prod([mesh.shape[a] for a in np.atleast_1d(axes)]))
  kept = [axes if axes is None or q.shape[i] % devices(axes) == 0 else None
          for i, axes in enumerate(spec[:lead])]
  cut = spec[lead]  # the axis whose sub-arrays the blocks cut
  if cut is not None:
    share, rest = divmod(q.shape[lead], devices(cut))
    if rest or share * int(np.prod(q.shape[lead + 1:], dtype=np.int64)) % q.block_size:
      cut = None
  if cut is None and all(axes is None for axes in kept):
    return q
  place = lambda x, spec: jax.sharding.reshard(x, NamedSharding(mesh, spec))
  return quantize.QuantizedArray(place(q.codes, P(*kept, cut, None)),
                                 place(q.scales, P(*kept, cut)), q.shape, q.signed)


def _laid_out_like_codes(value: jax.Array, stored: quantize.QuantizedArray):
  """``value`` sharded so that cutting it into blocks is a local reshape.

  Codes split over their leading axes (``_blocks_sharded_like``) need
  ``value`` split the same way over the same axes and whole over the rest;
  replicated codes need it whole. Explicit meshes only; elsewhere ``value``
  is returned as it is.
  """
  codes = _sharding.explicit_sharding(stored.codes)
  if codes is None:
    return _sharding.gather(value)
  kept = stored.lead_axes + 1
  spec = (tuple(codes.spec) + (None,) * kept)[:kept]
  spec = P(*spec, *([None] * (value.ndim - kept)))
  return jax.sharding.reshard(value, NamedSharding(codes.mesh, spec))


def _real_dtype(dtype: Any) -> jnp.dtype:
  return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.dtype(dtype)


def _leaf_dtype(path: tuple, p: Any, fmt: Any, real: bool) -> jnp.dtype:
  """The dtype of a float-format state leaf; refuses to drop an imaginary part."""
  dtype = _tree.dtype_of(p)
  if fmt is None:
    return _real_dtype(dtype) if real else dtype
  fmt = jnp.dtype(fmt)
  if (jnp.issubdtype(dtype, jnp.complexfloating) and not real
      and not jnp.issubdtype(fmt, jnp.complexfloating)):
    raise ValueError(
        f"the state dtype {fmt} cannot hold the complex leaf"
        f" {jax.tree_util.keystr(path)} ({dtype}): pass a complex dtype or None")
  return fmt


def check_storable(path: tuple, p: Any, fmt: Any) -> None:
  """Raises for a complex leaf in a format that cannot hold it (8-bit, bf16)."""
  if isinstance(fmt, (Int8Blocks, StochasticBfloat16)) and jnp.issubdtype(
      _tree.dtype_of(p), jnp.complexfloating):
    raise ValueError(
        f"{fmt} state cannot hold the complex leaf {jax.tree_util.keystr(path)}"
        f" ({_tree.dtype_of(p)}); use a float or complex dtype (or None)")


def zeros_like_tree(params: Any, fmt: Any, *, signed: bool, real: bool = False) -> Any:
  """Zero state shaped like ``params`` in format ``fmt``.

  ``real``: the state of a complex leaf is real-valued (a second moment
  |g|²), stored in the matching real dtype.
  """
  if isinstance(fmt, Int8Blocks):
    _validate.check_shaped_params(params, "int8 (block-quantized) state")
  jax.tree_util.tree_map_with_path(lambda path, p: check_storable(path, p, fmt), params)
  if isinstance(fmt, StochasticBfloat16):
    return optax.tree.zeros_like(params, jnp.bfloat16)
  if not isinstance(fmt, Int8Blocks):
    return jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p, _leaf_dtype(path, p, fmt, real)), params)

  def leaf(x):
    p = _tree.value_of(x)
    if isinstance(p, optax.MaskedNode):  # a variable optax.masked left out (NNX)
      return x
    if np.prod(p.shape, dtype=np.int64) < fmt.min_size:
      # float32 and parameter-shaped (a flax variable keeps its metadata), so
      # it takes its parameter's sharding like any moment.
      return jax.tree.map(lambda a: jnp.zeros_like(a, jnp.float32), x)
    zeros = quantize.quantized_zeros(
        tuple(p.shape), signed=signed, block_size=fmt.block_size)
    return _blocks_sharded_like(zeros, p)

  # Block codes are not shaped like their parameter: a sharding recipe's
  # placeholder cannot tell the two kinds of leaf apart, so the field is
  # marked as statistics there.
  if _tree.is_params_placeholder(params):
    return _tree.NOT_PARAMS
  return jax.tree.map(leaf, params, is_leaf=_tree.is_wrapped)


def full_like_tree(
    params: Any, value: float, fmt: Any, *, signed: bool, real: bool = False
) -> Any:
  """Like ``zeros_like_tree``, every element ``value``."""
  zeros = zeros_like_tree(params, fmt, signed=signed, real=real)
  if _validate.is_static_zero(value) or zeros is _tree.NOT_PARAMS:
    return zeros

  def fill(z):
    if isinstance(z, quantize.QuantizedArray):
      full = jnp.full(z.shape, value, jnp.float32)
      return store(full, z, fmt)
    return jnp.full_like(z, value)

  return jax.tree.map(
      fill, zeros, is_leaf=lambda x: isinstance(x, quantize.QuantizedArray))


def load(stored: Any, dtype: Any) -> jax.Array:
  """A stored state leaf as an array of ``dtype``."""
  if isinstance(stored, quantize.QuantizedArray):
    return quantize.dequantize_blockwise(stored, dtype)
  if jnp.iscomplexobj(stored) and not jnp.issubdtype(dtype, jnp.complexfloating):
    stored = jnp.real(stored)
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
    new = quantize.quantize_codes(
        value, stored.signed, stored.block_size, finite=True, lead_axes=stored.lead_axes)
    # Codes and scales keep the layout init gave them (explicit meshes).
    return jax.tree.map(_sharding.reshard_like, new, stored)
  if isinstance(fmt, StochasticBfloat16):
    salt = jnp.uint32((fmt.seed * 0x27D4EB2F + stream * 0x165667B1) % 2**32)
    return quantize.stochastic_round(value, quantize.mix32(seed ^ salt))
  return _sharding.reshard_like(value.astype(stored.dtype), stored)


def stored_and_used(
    value: jax.Array,
    stored: Any,
    fmt: Any,
    seed: Optional[jax.Array] = None,
    stream: int = 0,
) -> tuple[Any, jax.Array]:
  """(``store(value, ...)``, the value the step should use).

  Where the state is kept in a narrower float than it is computed in (bf16
  moments of bf16 parameters, ``mu_dtype=jnp.bfloat16``), the step uses the
  moment as stored, read back, as torch does with bf16 state: a step computed
  from the wider ``value`` makes XLA recompute it after the donated state
  buffer is overwritten, so it copies every such buffer first (a bf16 AdamW
  step peaked at 1.5x optax's). Elsewhere (same width; int8 blocks, whose
  transforms use the reset ``value``) it is ``value``.
  """
  new = store(value, stored, fmt, seed, stream)
  if isinstance(new, quantize.QuantizedArray):
    return new, value
  if isinstance(fmt, StochasticBfloat16):
    # Materialized once: XLA otherwise recomputes the rounding's bit
    # arithmetic after the donated buffer is overwritten, copying it first.
    new = jax.lax.optimization_barrier(new)
  if jnp.finfo(new.dtype).bits < jnp.finfo(value.dtype).bits:
    return new, new.astype(value.dtype)
  return new, value
