"""Block-wise 8-bit quantization with a dynamic code map, and stochastic bf16.

A ``QuantizedArray`` stores an array flattened and cut into blocks of
``block_size`` elements: one int8 code per element plus one float32 absmax
per block. A code indexes a non-linear "dynamic" map of 256 values in [-1, 1]
(signed, for first moments) or [0, 1] (unsigned, for second moments) with
exactly one zero, so a zero array, and every zero inside a block, round-trips
exactly. ``stochastic_round`` rounds float32 to bfloat16 without bias, with
counter-based random bits. How optimizer states use them is
``gradtx.storage.state_format``.

Layout: the blocks are those of the row-major flattened array, and the
codes keep as many of its leading axes as are whole blocks
(``block_lead_axes``): a (4, 512, 512) stack of layers has codes of shape
(4, 512, 2, 256) and scales (4, 512, 2), a (1000, 16) leaf codes (63, 256)
(the last block padded). The blocks are the same either way; keeping the
leading axes lets codes split like their parameter over those axes on a
device mesh (rows, layers of a scanned stack, tensor-parallel columns), a
reshape with no data moved.

Reference: Dettmers et al., "8-bit Optimizers via Block-wise Quantization",
ICLR 2022 (the dynamic map is bitsandbytes' ``create_dynamic_map``, computed
here in float64 then rounded: about a third of its entries differ from
bitsandbytes' float32 ones by 1-2 ulp).
"""

import functools
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._internal import validate as _validate


@functools.lru_cache(maxsize=None)
def dynamic_code_map(signed: bool) -> np.ndarray:
  r"""The 256 sorted values of the 8-bit dynamic map, in [-1, 1] or [0, 1].

  Decade :math:`k = 0..6` covers magnitudes :math:`10^{k-6}\,[0.1, 1]` with
  :math:`2^k` (signed) or :math:`2^{k+1}` (unsigned) equal-width bins, each
  represented by its midpoint; 0 and 1 are added. Rounding errors are thus
  at most ±0.7% (signed; ±0.35% unsigned) of the block maximum near it and
  about ±14% (±7%) of a value at 1% of it; the smallest non-zero code is
  :math:`3.25\cdot 10^{-7}` (unsigned) or :math:`5.5\cdot 10^{-7}` (signed)
  of the maximum. The signed map is symmetric except
  for its extra +1 (its most negative value is -0.99297).

  Args:
    signed: the map for signed values (first moments) or non-negative ones.

  Returns:
    A float32 array of 256 increasing values with exactly one zero.
  """
  if not isinstance(signed, (bool, np.bool_)):
    raise ValueError(f"signed must be True or False, got {signed!r}")
  values = [0.0, 1.0]
  for k in range(7):
    edges = np.linspace(0.1, 1.0, (2**k if signed else 2 ** (k + 1)) + 1)
    mids = 10.0 ** (k - 6) * (edges[:-1] + edges[1:]) / 2
    values.extend(mids)
    if signed:
      values.extend(-mids)
  return np.sort(np.asarray(values, np.float32))


# The rank of a magnitude a in [0, 1] among the codes is read from a table
# indexed by the top 17 bits of its float32 pattern (exponent and 8 mantissa
# bits): each key spans [lo, lo·(1 + 2⁻⁸)), narrower than the gap between any
# two rounding thresholds, so at most one threshold t lies inside it, and
# inside it a > t compares the low 15 bits only. An entry holds
# (rank below the interval) · 2¹⁵ + (2¹⁵ − 1 − t's low bits), so adding a's
# low bits carries into the rank exactly when a > t: one gather and one add
# give the exact round-to-nearest.
_KEY_SHIFT = 15
_LOW_BITS = (1 << _KEY_SHIFT) - 1


@functools.lru_cache(maxsize=None)
def _rank_table(signed: bool) -> np.ndarray:
  """Per key: the rank below its interval · 2¹⁵ + the complement of the next
  threshold's low 15 bits (0 when that threshold lies above the interval,
  which no magnitude of the interval then exceeds)."""
  table = dynamic_code_map(signed)
  magnitudes = table[table >= 0]
  thresholds = np.append((magnitudes[:-1] + magnitudes[1:]) / 2, np.inf)
  thresholds = thresholds.astype(np.float32)
  keys = np.arange((np.float32(1).view(np.uint32) >> _KEY_SHIFT) + 1, dtype=np.uint32)
  lo = (keys << _KEY_SHIFT).view(np.float32)
  hi = ((keys + 1) << _KEY_SHIFT).view(np.float32)
  below = np.searchsorted(thresholds, lo, side="left")
  assert np.all(thresholds[np.minimum(below + 1, len(thresholds) - 1)] >= hi)
  next_threshold = thresholds[below]
  low = np.where(next_threshold < hi, next_threshold.view(np.uint32) & _LOW_BITS, _LOW_BITS)
  return ((below.astype(np.int64) << _KEY_SHIFT) + _LOW_BITS - low).astype(np.int32)


def _encode(normalized: jax.Array, signed: bool) -> jax.Array:
  """Index of the code nearest to each value in [-1, 1] (ties round down);
  on the unsigned map a positive value is at least the smallest positive code."""
  table = jnp.asarray(_rank_table(signed))
  magnitude = jnp.minimum(jnp.abs(normalized), 1)
  bits = jax.lax.bitcast_convert_type(magnitude, jnp.int32)
  # out_sharding: a gather from a replicated table is sharded like its
  # indices (explicit-sharding meshes ask for it).
  entry = table.at[bits >> _KEY_SHIFT].get(
      mode="promise_in_bounds", out_sharding=jax.typeof(bits).sharding)
  rank = (entry + (bits & _LOW_BITS)) >> _KEY_SHIFT
  if not signed:  # code 0 is the value 0: only a zero is stored as zero
    return jnp.maximum(rank, (bits > 0).astype(rank.dtype))
  zero = _zero_index(True)
  negative = zero - jnp.minimum(rank, zero)  # the signed map has no -1
  return jnp.where(normalized < 0, negative, zero + rank)


@jax.tree_util.register_pytree_with_keys_class
class QuantizedArray:
  """A block-wise 8-bit quantized array (a pytree: ``codes`` and ``scales``).

  Attributes:
    codes: int8, shape (*shape[:k], blocks, block_size) with k =
      ``block_lead_axes(shape, block_size)``: the 8 bits of each element's
      index into ``dynamic_code_map(signed)``, the row-major flattened array
      in blocks; with k = 0 the tail of the last block is padding (code of
      zero).
    scales: float32, shape ``codes.shape[:-1]``: each block's absmax.
    shape: the shape of the represented array (static).
    signed: which code map the codes index (static).
  """

  def __init__(self, codes: Any, scales: Any, shape: tuple, signed: bool):
    register_with_flax()  # every state built or stepped after flax's import
    self.codes = codes
    self.scales = scales
    self.shape = tuple(shape)
    self.signed = signed

  @property
  def block_size(self) -> int:
    return self.codes.shape[-1]

  @property
  def lead_axes(self) -> int:
    """How many leading axes of ``shape`` the codes keep."""
    return np.ndim(self.codes) - 2

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
    return dequantize_blockwise(self, dtype)

  def tree_flatten(self):
    return (self.codes, self.scales), (self.shape, self.signed)

  def tree_flatten_with_keys(self):
    # Named paths (``.codes``, ``.scales``) for path-based rules and orbax.
    keys = (jax.tree_util.GetAttrKey("codes"), jax.tree_util.GetAttrKey("scales"))
    return tuple(zip(keys, (self.codes, self.scales))), (self.shape, self.signed)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  def __repr__(self) -> str:
    return (
        f"QuantizedArray(codes={self.codes!r}, scales={self.scales!r},"
        f" shape={self.shape}, signed={self.signed})"
    )


def register_with_flax() -> None:
  """Registers ``QuantizedArray`` with ``flax.serialization`` (``to_bytes``,
  msgpack, a ``TrainState``'s checkpoints: ``{"codes", "scales", "shape"}``,
  restored onto the target's code map after checking the shapes), once, if
  flax is already imported.

  Called when gradtx is imported and whenever a ``QuantizedArray`` is made
  (a state built or stepped), so a Flax program has it before any
  ``to_bytes``; only a state built before flax was first imported and saved
  before any step needs an explicit call. gradtx itself never imports flax,
  nor fails on a flax that cannot import.
  """
  global _REGISTERED_WITH_FLAX
  if _REGISTERED_WITH_FLAX or "flax" not in sys.modules:
    return
  try:
    from flax import serialization
  except ImportError:
    return
  serialization.register_serialization_state(
      QuantizedArray,
      lambda q: {"codes": serialization.to_state_dict(q.codes),
                 "scales": serialization.to_state_dict(q.scales),
                 "shape": np.asarray(q.shape, np.int64)},
      _restore_from_flax, override=True)
  _REGISTERED_WITH_FLAX = True


def _restore_from_flax(target: "QuantizedArray", state: Any) -> "QuantizedArray":
  """``target`` with the codes and scales of a saved state dict; raises
  ``ValueError`` where the saved moment is not 8-bit or not of this shape."""
  from flax import serialization

  where = f"the 8-bit state at {serialization.current_path() or '/'}"
  if not (isinstance(state, dict) and {"codes", "scales"} <= set(state)):
    raise ValueError(
        f"{where} (shape {target.shape}) cannot restore from a saved"
        f" {type(state).__name__} of shape {np.shape(state)}: was it saved with"
        " another mu_dtype / nu_dtype (a float moment)?")
  saved = tuple(int(n) for n in state["shape"]) if "shape" in state else None
  codes, scales = np.shape(state["codes"]), np.shape(state["scales"])
  blocks = lambda s: int(np.prod(s[:-1], dtype=np.int64)) if s else 0
  if saved == target.shape and codes[-1:] != np.shape(target.codes)[-1:]:
    raise ValueError(
        f"{where} (shape {target.shape}) has blocks of {target.block_size} but was saved"
        f" with blocks of {codes[-1] if codes else '?'}: build the target with the block"
        " size it was saved with (gt.Int8Blocks(block_size=...))")
  if (saved not in (None, target.shape) or blocks(codes) != blocks(np.shape(target.codes))
      or codes[-1:] != np.shape(target.codes)[-1:]
      or int(np.prod(scales, dtype=np.int64)) != blocks(codes)):
    raise ValueError(
        f"{where} is for shape {target.shape} ({blocks(np.shape(target.codes))} blocks)"
        f" but was saved for {'shape ' + str(saved) if saved else 'another shape'}"
        f" ({blocks(codes)} blocks): is the parameter the one saved?")
  # The same blocks in another layout (codes saved before they kept the
  # leading axes, ``block_lead_axes``): a reshape.
  return QuantizedArray(
      serialization.from_state_dict(
          target.codes, np.reshape(state["codes"], np.shape(target.codes))),
      serialization.from_state_dict(
          target.scales, np.reshape(state["scales"], np.shape(target.scales))),
      target.shape, target.signed)


_REGISTERED_WITH_FLAX = False
register_with_flax()


def _zero_index(signed: bool) -> int:
  return int(np.flatnonzero(dynamic_code_map(signed) == 0)[0])


def _zero_code(signed: bool) -> int:
  return int(np.array(_zero_index(signed), np.uint8).view(np.int8))


def block_lead_axes(shape: tuple, block_size: int) -> int:
  """How many leading axes of an array of ``shape`` its codes keep: the most
  k below its rank whose trailing sub-arrays (``shape[k:]``) are whole
  blocks, 0 if none is (or the array is empty)."""
  if not int(np.prod(shape, dtype=np.int64)):
    return 0
  for k in range(len(shape) - 1, 0, -1):
    trailing = int(np.prod(shape[k:], dtype=np.int64))
    if trailing and trailing % block_size == 0:
      return k
  return 0


def codes_shape(shape: tuple, block_size: int, lead_axes: int) -> tuple:
  """The shape of the codes of an array of ``shape`` keeping ``lead_axes``
  leading axes (its scales' is this without the last axis)."""
  if lead_axes:
    blocks = int(np.prod(shape[lead_axes:], dtype=np.int64)) // block_size
    return (*shape[:lead_axes], blocks, block_size)
  return (max(1, -(-int(np.prod(shape, dtype=np.int64)) // block_size)), block_size)


def quantized_zeros(
    shape: tuple, *, signed: bool, block_size: int = 256
) -> QuantizedArray:
  """The ``QuantizedArray`` of an all-zero array of ``shape``."""
  register_with_flax()
  codes = codes_shape(tuple(shape), block_size, block_lead_axes(tuple(shape), block_size))
  return QuantizedArray(jnp.full(codes, _zero_code(signed), jnp.int8),
                        jnp.zeros(codes[:-1], jnp.float32), shape, signed)


@_validate.checks_arguments
def quantize_blockwise(
    x: jax.Array, *, signed: bool, block_size: int = 256
) -> QuantizedArray:
  r"""Rounds ``x`` block-wise to the nearest code of the dynamic map.

  .. math::
    s_b = \max_{i \in b} |x_i|,\qquad
    c_i = \operatorname{argmin}_c |T_c - x_i / s_b|

  with :math:`T` = ``dynamic_code_map(signed)``. Zeros map to the zero code
  and the block maximum to ±1, both exactly. Nearest rounding on a map with
  a single zero never flips a sign. A signed value may round to zero; an
  unsigned (second-moment) value rounds to zero only if it is zero: below
  half the smallest positive code (:math:`1.6\cdot 10^{-7}` of its block's
  maximum) it takes that code. bitsandbytes' CUDA kernel rounds it to zero,
  and Adam's step :math:`\hat m/(\sqrt{\hat v} + ε)` for such a coordinate
  is then :math:`\hat m/ε` once its gradient is zero (a rarely used embedding
  row): :math:`4\cdot 10^4\,η` on a Zipf-sampled (1000, 64) embedding, where
  float32 AdamW's steps stay under :math:`2.1\,η`. Stored at the smallest code
  instead, such a :math:`v` is over-estimated, and its step only smaller.
  (Float32 arithmetic on CPU flushes subnormals: a value under
  :math:`2^{-126}`, or under :math:`2^{-126}` of its block's maximum, is
  stored as 0; and a block whose maximum is above :math:`2^{126}\approx
  8.5\cdot 10^{37}` is stored as zeros, the reciprocal of its scale being
  flushed. Only an unbounded statistic gets there: an Adagrad accumulator
  of gradients near :math:`10^{19}`, or Adam's v at β₂ < 0.75; float32 state
  overflows soon after.)

  Non-finite entries do not spoil their block: the scale is the largest
  *finite* magnitude, ±inf saturate to the extreme codes and NaN becomes 0.
  The optimizer transforms go further and reset a coordinate with a
  non-finite gradient (see ``scale_by_adam``).

  Args:
    x: the array to quantize (any shape; at least float32 arithmetic).
    signed: use the signed map; otherwise ``x`` must be non-negative.
    block_size: elements per block, >= 1.

  Returns:
    A ``QuantizedArray`` with ``ceil(x.size / block_size)`` blocks, laid out
    as the module docstring says.
  """
  block_size = _validate.check_integer("block_size", block_size)
  return quantize_codes(x, signed, block_size, finite=False)


def quantize_codes(x, signed: bool, block_size: int, finite: bool,
                   lead_axes: Optional[int] = None) -> QuantizedArray:
  """``quantize_blockwise``; ``finite=True`` promises finite ``x``.

  The promise saves the masking pass, which XLA cannot fuse into the
  block-max reduction: one float32 temporary per quantized leaf.
  ``lead_axes``: the layout of the codes (``block_lead_axes`` by default).
  """
  shape = jnp.shape(x)
  if lead_axes is None:
    lead_axes = block_lead_axes(shape, block_size)
  blocked = codes_shape(shape, block_size, lead_axes)
  if lead_axes:
    blocks = _reshape_trailing(jnp.asarray(x).astype(jnp.float32), lead_axes, blocked)
  else:
    flat = jnp.ravel(x).astype(jnp.float32)
    flat = jnp.pad(flat, (0, blocked[0] * block_size - flat.size))
    blocks = flat.reshape(blocked)
  magnitude = jnp.abs(blocks)
  if not finite:
    magnitude = jnp.where(jnp.isfinite(magnitude), magnitude, 0)
  scales = jnp.max(magnitude, axis=-1)
  # XLA divides by the scale as a product with its reciprocal, subnormal for
  # a scale above 2^126 and flushed to zero on CPU (the docstring's limit):
  # scaling such blocks down first cost the 8-bit step ~10% more compile.
  normalized = blocks / jnp.where(scales > 0, scales, 1)[..., None]
  if not finite:
    normalized = jnp.where(jnp.isnan(normalized), 0, normalized)
  index = _encode(normalized, signed)
  codes = jax.lax.bitcast_convert_type(index.astype(jnp.uint8), jnp.int8)
  return QuantizedArray(codes, scales, shape, signed)


def _decode(index: jax.Array, signed: bool) -> jax.Array:
  """``dynamic_code_map(signed)[index]``: a gather from the 256-entry table.

  bitsandbytes' dequantization (a lookup times the block's absmax; its map
  differs by 1-2 ulp, see the module docstring). XLA:CPU fuses the gather
  into its consumers (an arithmetic decode, tried before, agreed with the
  table to 1 ulp and made each quantized leaf's program ~2x longer to compile).
  """
  table = jnp.asarray(dynamic_code_map(signed))
  # out_sharding as in _encode: the values are laid out like the codes.
  return table.at[index].get(
      mode="promise_in_bounds", out_sharding=jax.typeof(index).sharding)


def dequantize_blockwise(
    q: QuantizedArray, dtype: Any = jnp.float32
) -> jax.Array:
  r"""The array a ``QuantizedArray`` represents: :math:`T_{c_i} s_b`."""
  index = jax.lax.bitcast_convert_type(q.codes, jnp.uint8).astype(jnp.int32)
  values = _decode(index, q.signed) * q.scales[..., None]
  if q.lead_axes:  # whole blocks: no padding
    return _reshape_trailing(values, q.lead_axes, q.shape).astype(dtype)
  return values.reshape(-1)[: q.size].reshape(q.shape).astype(dtype)


def _reshape_trailing(x: jax.Array, lead_axes: int, shape: tuple) -> jax.Array:
  """``x`` reshaped to ``shape``, which keeps its first ``lead_axes`` axes, in
  two steps: the trailing axes merged into one, then split. Explicit-sharding
  meshes type a merge or a split of axes (the first of them sharded), not a
  regrouping of several, such as (4, 256) into (32, 32)."""
  merged = x.reshape(*x.shape[:lead_axes], -1)
  return merged.reshape(shape)


def mix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def random_bits(shape: tuple, seed: jax.Array) -> jax.Array:
  """Uniform uint32 bits, a hash of (element index, ``seed``).

  A counter-based generator as cheap as two multiplies per element (threefry
  costs ~40x more on CPU); good enough to dither roundings, not for
  statistics.
  """
  index = jax.lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64)))
  seed = jnp.asarray(seed).astype(jnp.uint32)
  return mix32(index * jnp.uint32(0x9E3779B9) + mix32(seed)).reshape(shape)


def stochastic_round(
    x: jax.Array, seed: jax.Array, dtype: Any = jnp.bfloat16
) -> jax.Array:
  r"""Rounds ``x`` to bfloat16 up or down at random, without bias.

  Adds 16 random bits to the low half of the float32 bit pattern and
  truncates it: the magnitude rounds up with probability equal to the
  discarded fraction, so :math:`E[\operatorname{round}(x)] = x`. Values
  exactly representable in bfloat16 are unchanged; NaN and ±inf pass
  through.

  Args:
    x: the values to round (cast to float32 first).
    seed: a uint32 scalar; equal seeds give equal roundings.
    dtype: must be ``jnp.bfloat16`` (the 16-bit truncation is bf16's).

  Returns:
    ``x`` in bfloat16.
  """
  if jnp.dtype(dtype) != jnp.bfloat16:
    raise ValueError(f"stochastic rounding supports bfloat16 only, got {dtype}")
  x = jnp.asarray(x, jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  noise = random_bits(x.shape, seed) >> 16
  truncated = (bits + noise) & jnp.uint32(0xFFFF0000)
  rounded = jax.lax.bitcast_convert_type(truncated, jnp.float32).astype(dtype)
  return jnp.where(jnp.isfinite(x), rounded, x.astype(dtype))
