"""gradtx._internal.threefry: jax.random's numbers, written out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx._internal import threefry

KEYS = [jax.random.PRNGKey(0), jax.random.PRNGKey(7),
        jnp.array([0xFFFFFFFF, 0x12345678], jnp.uint32)]


@pytest.mark.parametrize("key, counter, expected", [
    # Random123's known-answer vectors for Threefry-2x32, 20 rounds (kat_vectors).
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_hash_pairs_gives_the_known_answers(key, counter, expected):
  y1, y2 = threefry.hash_pairs(np.array(key, np.uint32), *np.array(counter, np.uint32))
  assert (int(y1), int(y2)) == expected


@pytest.mark.parametrize("key", KEYS)
def test_fold_in_is_jax_random_fold_in(key):
  for data in (0, 1, 5, 2**31 - 1, 2**32 - 1):
    np.testing.assert_array_equal(threefry.fold_in(key, np.uint32(data)),
                                  jax.random.fold_in(key, np.uint32(data)))
  data = jnp.arange(6, dtype=jnp.uint32)
  np.testing.assert_array_equal(jax.vmap(lambda d: threefry.fold_in(key, d))(data),
                                jax.vmap(lambda d: jax.random.fold_in(key, d))(data))


@pytest.mark.parametrize("shape", [(), (7,), (3, 4), (2, 3, 5), (64, 96)])
@pytest.mark.parametrize("key", KEYS)
def test_normal_is_jax_random_normal_bit_for_bit(key, shape):
  np.testing.assert_array_equal(threefry.normal(key, shape), jax.random.normal(key, shape))
  ours = jax.jit(lambda k: threefry.normal(k, shape))(key)
  np.testing.assert_array_equal(ours, jax.jit(lambda k: jax.random.normal(k, shape))(key))
  keys = jax.random.split(key, 3)
  np.testing.assert_array_equal(jax.vmap(lambda k: threefry.normal(k, shape))(keys),
                                jax.vmap(lambda k: jax.random.normal(k, shape))(keys))


def test_other_dtypes_are_jax_random_normal():
  key = KEYS[1]
  for dtype in (jnp.bfloat16, jnp.float16):
    ours = threefry.normal(key, (4, 5), dtype)
    assert ours.dtype == dtype
    np.testing.assert_array_equal(ours, jax.random.normal(key, (4, 5), dtype))


def test_a_draw_compiles_without_a_loop():
  # jax's own threefry is a while loop per call on CPU; this one is fused.
  draw = lambda key: threefry.normal(threefry.fold_in(key, np.uint32(3)), (16, 24))
  program = jax.jit(draw).lower(KEYS[0]).compile().as_text()
  assert " while(" not in program
  assert np.all(np.isfinite(jax.jit(draw)(KEYS[0])))
