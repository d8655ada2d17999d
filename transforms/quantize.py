"""Memory-lean optimizer state: block-wise 8-bit codes and stochastic bf16.

Two storage formats for a state leaf besides a plain dtype, selected by the
``mu_dtype`` / ``nu_dtype`` arguments of the transforms that keep moments
(``scale_by_adam``, ``ema``, ...):

* ``"int8"`` or ``Int8Blocks(block_size, min_size)``: the leaf is flattened,
  cut into blocks of ``block_size`` elements and stored as one int8 code per
  element plus one float32 absmax per block (a ``QuantizedArray``). A code
  indexes a non-linear "dynamic" map of 256 values in [-1, 1] (signed, for
  first moments) or [0, 1] (unsigned, for second moments) with exactly one
  zero, so a zero state, and every zero inside a block, round-trips exactly.
  Leaves with fewer than ``min_size`` elements (4096, as in bitsandbytes)
  stay float32: their codes would save little and cost accuracy.
* ``StochasticBfloat16(seed)``: bfloat16 storage rounded stochastically, with
  random bits that depend only on the seed, the step count and the leaf, so a
  run is reproducible.

The transforms load (dequantize) a state leaf, update it in at least float32
and store (requantize) it leaf by leaf inside their jitted update, so no
float32 copy of the whole state tree exists at once.

Sharding: ``codes`` has shape (num_blocks, block_size), the row-major
flattened leaf in blocks, and ``scales`` shape (num_blocks,); both shard along
their first axis. A parameter sharded along its first axis maps onto whole
blocks when each shard's size is a multiple of ``block_size``.

Reference: Dettmers et al., "8-bit Optimizers via Block-wise Quantization",
ICLR 2022 (the dynamic map is bitsandbytes' ``create_dynamic_map``).
"""

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradtx.transforms import _tree


@functools.lru_cache(maxsize=None)
def dynamic_code_map(signed: bool) -> np.ndarray:
  r"""The 256 sorted values of the 8-bit dynamic map, in [-1, 1] or [0, 1].

  Decade :math:`k = 0..6` covers magnitudes :math:`10^{k-6}\,[0.1, 1]` with
  :math:`2^k` (signed) or :math:`2^{k+1}` (unsigned) equal-width bins, each
  represented by its midpoint; 0 and 1 are added. Precision is thus relative:
  about 3 significant bits near the block maximum, fewer below, down to
  :math:`3\cdot 10^{-7}` of the maximum. The signed map is symmetric except
  for its extra +1 (its most negative value is -0.99297).

  Args:
    signed: the map for signed values (first moments) or non-negative ones.

  Returns:
    A float32 array of 256 increasing values with exactly one zero.
  """
  values = [0.0, 1.0]
  for k in range(7):
    edges = np.linspace(0.1, 1.0, (2**k if signed else 2 ** (k + 1)) + 1)
    mids = 10.0 ** (k - 6) * (edges[:-1] + edges[1:]) / 2
    values.extend(mids)
    if signed:
      values.extend(-mids)
  return np.sort(np.asarray(values, np.float32))


@functools.lru_cache(maxsize=None)
def _thresholds(signed: bool) -> np.ndarray:
  """Midpoints between consecutive codes: the rounding boundaries."""
  table = dynamic_code_map(signed)
  return (table[:-1] + table[1:]) / 2


@jax.tree_util.register_pytree_node_class
class QuantizedArray:
  """A block-wise 8-bit quantized array (a pytree: ``codes`` and ``scales``).

  Attributes:
    codes: int8, shape (num_blocks, block_size): the 8 bits of each element's
      index into ``dynamic_code_map(signed)``; the tail of the last block is
      padding (code of zero).
    scales: float32, shape (num_blocks,): each block's absmax.
    shape: the shape of the represented array (static).
    signed: which code map the codes index (static).
  """

  def __init__(self, codes: Any, scales: Any, shape: tuple, signed: bool):
    self.codes = codes
    self.scales = scales
    self.shape = tuple(shape)
    self.signed = signed

  @property
  def block_size(self) -> int:
    return self.codes.shape[-1]

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
    return dequantize_blockwise(self, dtype)

  def tree_flatten(self):
    return (self.codes, self.scales), (self.shape, self.signed)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  def __repr__(self) -> str:
    return (
        f"QuantizedArray(codes={self.codes!r}, scales={self.scales!r},"
        f" shape={self.shape}, signed={self.signed})"
    )


def _zero_code(signed: bool) -> int:
  index = int(np.flatnonzero(dynamic_code_map(signed) == 0)[0])
  return int(np.array(index, np.uint8).view(np.int8))


def quantized_zeros(
    shape: tuple, *, signed: bool, block_size: int = 256
) -> QuantizedArray:
  """The ``QuantizedArray`` of an all-zero array of ``shape``."""
  num_blocks = max(1, -(-int(np.prod(shape, dtype=np.int64)) // block_size))
  codes = jnp.full((num_blocks, block_size), _zero_code(signed), jnp.int8)
  return QuantizedArray(codes, jnp.zeros(num_blocks, jnp.float32), shape, signed)


def quantize_blockwise(x: jax.Array, *, signed: bool, block_size: int = 256) -> QuantizedArray:
  r"""Rounds ``x`` block-wise to the nearest code of the dynamic map.

  .. math::
    s_b = \max_{i \in b} |x_i|,\qquad
    c_i = \operatorname{argmin}_c |T_c - x_i / s_b|

  with :math:`T` = ``dynamic_code_map(signed)``. Zeros map to the zero code
  and the block maximum to ±1, both exactly. Nearest rounding on a map with
  a single zero never flips a sign (a value may round to zero).

  Non-finite entries do not spoil their block: the scale is the largest
  *finite* magnitude, ±inf saturate to the extreme codes and NaN becomes 0.
  The optimizer transforms go further and reset a coordinate with a
  non-finite gradient (see ``scale_by_adam``).

  Args:
    x: the array to quantize (any shape; at least float32 arithmetic).
    signed: use the signed map; otherwise ``x`` must be non-negative.
    block_size: elements per block, >= 1.

  Returns:
    A ``QuantizedArray`` with ``ceil(x.size / block_size)`` blocks.
  """
  shape = jnp.shape(x)
  flat = jnp.ravel(x).astype(jnp.float32)
  num_blocks = max(1, -(-flat.size // block_size))
  flat = jnp.pad(flat, (0, num_blocks * block_size - flat.size))
  blocks = flat.reshape(num_blocks, block_size)
  magnitude = jnp.abs(blocks)
  scales = jnp.max(jnp.where(jnp.isfinite(magnitude), magnitude, 0), axis=1)
  normalized = blocks / jnp.where(scales > 0, scales, 1)[:, None]
  normalized = jnp.where(jnp.isnan(normalized), 0, normalized)
  index = jnp.searchsorted(
      jnp.asarray(_thresholds(signed)), normalized, method="scan_unrolled"
  )
  codes = jax.lax.bitcast_convert_type(index.astype(jnp.uint8), jnp.int8)
  return QuantizedArray(codes, scales, shape, signed)


def dequantize_blockwise(q: QuantizedArray, dtype: Any = jnp.float32) -> jax.Array:
  r"""The array a ``QuantizedArray`` represents: :math:`T_{c_i} s_b`."""
  index = jax.lax.bitcast_convert_type(q.codes, jnp.uint8).astype(jnp.int32)
  table = jnp.asarray(dynamic_code_map(q.signed))
  values = table.at[index].get(mode="promise_in_bounds") * q.scales[:, None]
  return values.reshape(-1)[: q.size].reshape(q.shape).astype(dtype)


def stochastic_round(
    x: jax.Array, key: jax.Array, dtype: Any = jnp.bfloat16
) -> jax.Array:
  r"""Rounds float32 ``x`` to bfloat16 up or down at random, without bias.

  Adds 16 uniformly random bits to the low half of the float32 bit pattern
  and truncates it: the magnitude rounds up with probability equal to the
  discarded fraction, so :math:`E[\operatorname{round}(x)] = x`. Values
  exactly representable in bfloat16 are unchanged; NaN and ±inf pass
  through.

  Args:
    x: the values to round (cast to float32 first).
    key: a ``jax.random`` key; equal keys give equal roundings.
    dtype: must be ``jnp.bfloat16`` (the 16-bit truncation is bf16's).

  Returns:
    ``x`` in bfloat16.
  """
  if jnp.dtype(dtype) != jnp.bfloat16:
    raise ValueError(f"stochastic rounding supports bfloat16 only, got {dtype}")
  x = jnp.asarray(x, jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  noise = jax.random.bits(key, x.shape, jnp.uint32) >> 16
  truncated = (bits + noise) & jnp.uint32(0xFFFF0000)
  rounded = jax.lax.bitcast_convert_type(truncated, jnp.float32).astype(dtype)
  return jnp.where(jnp.isfinite(x), rounded, x.astype(dtype))


# State formats ---------------------------------------------------------------


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
    for name, low in (("block_size", 1), ("min_size", 0)):
      value = getattr(self, name)
      if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


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


def needs_key(*formats: Any) -> bool:
  """Whether storing in one of ``formats`` consumes random bits."""
  return any(isinstance(f, StochasticBfloat16) for f in formats)


def is_quantized(*formats: Any) -> bool:
  return any(isinstance(f, Int8Blocks) for f in formats)


def rounding_keys(tree: Any, count: jax.Array) -> Any:
  """One random key per leaf of ``tree``, a function of ``count`` only."""
  leaves, treedef = jax.tree.flatten(tree)
  step_key = jax.random.fold_in(jax.random.key(0), count)
  return treedef.unflatten(
      [jax.random.fold_in(step_key, i) for i in range(len(leaves))]
  )


def zeros_like_tree(params: Any, fmt: Any, *, signed: bool) -> Any:
  """Zero state shaped like ``params`` in format ``fmt``."""
  if isinstance(fmt, StochasticBfloat16):
    return _tree.zeros_like_tree(params, jnp.bfloat16)
  if not isinstance(fmt, Int8Blocks):
    return _tree.zeros_like_tree(params, fmt)

  def leaf(p):
    shape = jnp.shape(p)
    if np.prod(shape, dtype=np.int64) < fmt.min_size:
      return jnp.zeros(shape, jnp.float32)
    return quantized_zeros(shape, signed=signed, block_size=fmt.block_size)

  return jax.tree.map(leaf, params)


def load(stored: Any, dtype: Any) -> jax.Array:
  """A stored state leaf as an array of ``dtype``."""
  if isinstance(stored, QuantizedArray):
    return dequantize_blockwise(stored, dtype)
  return stored.astype(dtype)


def store(
    value: jax.Array, stored: Any, fmt: Any, key: Optional[jax.Array] = None
) -> Any:
  """``value`` in the format of the state leaf ``stored`` it replaces."""
  if isinstance(stored, QuantizedArray):
    return quantize_blockwise(value, signed=stored.signed, block_size=stored.block_size)
  if isinstance(fmt, StochasticBfloat16):
    return stochastic_round(value, jax.random.fold_in(key, fmt.seed))
  return value.astype(stored.dtype)
