"""jax.random's threefry numbers, written out as straight-line arithmetic.

``fold_in(key, data)`` and ``normal(key, shape, dtype)`` of a raw threefry
key (uint32[2]) give the very numbers of ``jax.random.fold_in`` and
``jax.random.normal`` (jax's default, partitionable threefry; the tests compare
them bit for bit). On CPU jax lowers each threefry call to a while loop of its
own, which keeps one program's code small; a program that draws once per
distinct leaf shape (PSGD Kron's probes) then compiles one loop per shape and
per key derivation. Here the twenty rounds of Threefry-2x32 (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011) are element-wise
``uint32`` operations that XLA fuses into the draw's kernel (as jax's own
lowering for GPUs unrolls them): on a 2-core CPU the seven draws of a
48-layer transformer's stacks compile in 0.52 s against 1.29 s and run in
19 against 77 ms (``python -m benchmarks.probe_draws``). The arithmetic is
exact (integer) up to the uniform-to-normal transform, which is jax's,
operation for operation.

Float32 draws only: other dtypes (and ``jax_threefry_partitionable=False``)
are handed to ``jax.random`` itself.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Threefry-2x32's rotation constants, the two halves of its eight-round cycle.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
# The key-schedule parity constant of Threefry (Skein's C240, 32-bit).
PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def hash_pairs(key: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 (20 rounds) of the counter pairs (x1, x2) under ``key``.

  Key schedule k = (k_0, k_1, k_0 ⊕ k_1 ⊕ C); five groups of four rounds
  (x_0 ← x_0 + x_1, x_1 ← rotl(x_1, r) ⊕ x_0), each followed by the injection
  x_0 += k_{i+1}, x_1 += k_{i+2} + i + 1 (indices mod 3), after x += (k_0, k_1).
  """
  key = jnp.asarray(key, jnp.uint32)
  schedule = (key[..., 0], key[..., 1], key[..., 0] ^ key[..., 1] ^ PARITY)
  x1 = jnp.asarray(x1, jnp.uint32) + schedule[0]
  x2 = jnp.asarray(x2, jnp.uint32) + schedule[1]
  for group in range(5):
    for bits in ROTATIONS[group % 2]:
      x1 = x1 + x2
      x2 = _rotate_left(x2, bits) ^ x1
    x1 = x1 + schedule[(group + 1) % 3]
    x2 = x2 + schedule[(group + 2) % 3] + np.uint32(group + 1)
  return x1, x2


def fold_in(key: jax.Array, data: Any) -> jax.Array:
  """``jax.random.fold_in`` of a raw threefry ``key`` and a uint32 ``data``:
  the hash of the pair (0, data)."""
  y1, y2 = hash_pairs(key, jnp.zeros_like(jnp.asarray(data, jnp.uint32)), data)
  return jnp.stack([y1, y2], axis=-1)


def _bits(key: jax.Array, shape: tuple) -> jax.Array:
  """``jax.random.bits`` (32-bit, partitionable): the hash of (0, i) for
  each flat index i, its two words xor-ed."""
  index = jax.lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64))).reshape(shape)
  y1, y2 = hash_pairs(key, jnp.zeros_like(index), index)
  return y1 ^ y2


def normal(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
  """``jax.random.normal(key, shape, dtype)`` of a raw threefry ``key``:
  √2 · erfinv(u), u uniform on [nextafter(−1, 0), 1) from the bits'
  top 23 mantissa bits."""
  dtype = jnp.dtype(dtype)
  shape = tuple(shape)
  if (dtype != jnp.float32 or not jax.config.jax_threefry_partitionable
      or np.prod(shape, dtype=np.int64) >= 2**32):
    return jax.random.normal(key, shape, dtype)
  low = np.nextafter(np.float32(-1), np.float32(0), dtype=np.float32)
  mantissa = (_bits(key, shape) >> np.uint32(32 - 23)) | np.float32(1).view(np.uint32)
  floats = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1)
  uniform = jnp.maximum(low, floats * (np.float32(1) - low) + low)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(uniform)
