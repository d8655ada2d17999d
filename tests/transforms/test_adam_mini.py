"""Adam-mini's block-shared second moments: partition rule and update rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx import transforms as gt

D, HEADS, VOCAB = 8, 2, 11


def _params():
  shapes = {
      "embed/embedding": (VOCAB, D),
      "layer0/q_proj/kernel": (D, D),
      "layer0/v_proj/kernel": (D, D),
      "layer0/qkv/kernel": (D, 3 * D),
      "layer0/mlp/up/kernel": (D, 4 * D),
      "layer0/mlp/up/bias": (4 * D,),
      "layer0/norm/scale": (D,),
      "attention/query/kernel": (D, HEADS, D // HEADS),
      "conv/kernel": (3, 3, 2, 5),
      "lm_head/kernel": (D, VOCAB),
      "unembed/kernel": (D, VOCAB),
  }
  return {k: jnp.ones(s) for k, s in shapes.items()}


def test_default_partition():
  state = gt.scale_by_adam_mini(num_heads=HEADS).init(_params())
  expected = {
      "embed/embedding": (VOCAB, 1),  # per token
      "layer0/q_proj/kernel": (1, HEADS, 1),  # per head
      "layer0/v_proj/kernel": (1, D),  # per output neuron
      "layer0/qkv/kernel": (1, 3 * HEADS, 1),  # q, k and v heads
      "layer0/mlp/up/kernel": (1, 4 * D),
      "layer0/mlp/up/bias": (4 * D,),  # per element
      "layer0/norm/scale": (1,),  # one per tensor
      "attention/query/kernel": (1, HEADS, 1),
      "conv/kernel": (1, 1, 1, 5),  # per output channel
      "lm_head/kernel": (1, VOCAB),  # per token, flax layout
      "unembed/kernel": (1, VOCAB),
  }
  assert {k: v.shape for k, v in state.nu.items()} == expected
  assert all(v.dtype == jnp.float32 for v in state.nu.values())
  without_heads = gt.scale_by_adam_mini().init(_params())
  assert without_heads.nu["layer0/q_proj/kernel"].shape == (1, D)
  assert without_heads.nu["layer0/qkv/kernel"].shape == (1, 3 * D)


def test_partition_reads_nested_and_nnx_style_paths():
  params = {"block": {"k_proj": {"kernel": jnp.ones((D, D))}, "ln": {"bias": jnp.ones(D)}}}
  nu = gt.scale_by_adam_mini(num_heads=4).init(params).nu
  assert nu["block"]["k_proj"]["kernel"].shape == (1, 4, 1)
  assert nu["block"]["ln"]["bias"].shape == (D,)


def test_update_rule_by_hand_per_head():
  b1, b2, eps = 0.5, 0.75, 1e-3
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=(4, 6)) for _ in range(3)]
  tx = gt.scale_by_adam_mini(
      b1=b1, b2=b2, eps=eps, blocks=lambda p, x: gt.Blocks.per_head(x.shape, 2))
  state = tx.init(jnp.zeros((4, 6)))
  m, v = 0, 0
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    block = (g.reshape(4, 3, 2) ** 2).mean(axis=(0, 2), keepdims=True)
    v = b2 * v + (1 - b2) * block
    expected = (m.reshape(4, 3, 2) / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    u, state = tx.update(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(u, expected.reshape(4, 6), rtol=1e-5)
  np.testing.assert_allclose(state.nu, v, rtol=1e-6)


def test_one_block_per_element_is_adam():
  grads = jax.random.normal(jax.random.key(0), (10, 5, 7))
  adam, mini = gt.scale_by_adam(0.8, 0.999, 1e-6), gt.scale_by_adam_mini(
      b1=0.8, b2=0.999, eps=1e-6, blocks=lambda path, leaf: gt.Blocks.per_element(leaf.shape)
  )
  s_adam, s_mini = adam.init(grads[0]), mini.init(grads[0])
  for g in grads:
    u_adam, s_adam = adam.update(g, s_adam)
    u_mini, s_mini = mini.update(g, s_mini)
    # A few ulps: both form 1 − b and the bias corrections in double
    # precision (in float32, 1 − 0.999ᵗ is off by ~1e-5 relative).
    np.testing.assert_allclose(u_mini, u_adam, rtol=1e-6)


def test_int8_first_moment():
  params = {"w": jnp.zeros((64, 128))}
  tx = gt.scale_by_adam_mini(mu_dtype="int8")
  ref = gt.scale_by_adam_mini()
  s, s_ref = tx.init(params), ref.init(params)
  assert isinstance(s.mu["w"], gt.QuantizedArray)
  for g in jax.random.normal(jax.random.key(1), (10, 64, 128)):
    u, s = tx.update({"w": g}, s)
    u_ref, s_ref = ref.update({"w": g}, s_ref)
  error = jnp.linalg.norm(u["w"] - u_ref["w"]) / jnp.linalg.norm(u_ref["w"])
  assert float(error) < 0.03


def test_bad_partition_is_refused_at_init():
  bad = gt.scale_by_adam_mini(blocks=lambda path, leaf: gt.Blocks((3,), (0,)))
  with pytest.raises(ValueError, match=r"partition of \['w'\] \(shape \(2, 2\)\)"):
    bad.init({"w": jnp.zeros((2, 2))})


def test_a_scanned_stack_with_axis_names_gets_blocks_per_layer():
  """An (layers, embed, mlp) kernel named by its Flax metadata: one block per
  layer and output neuron (3 x 16); unnamed, the same 3-D leaf is read as one
  tall matrix, whose 16 blocks each span all layers."""
  from flax import nnx

  with nnx.use_eager_sharding(False):  # axis names without a mesh
    named = nnx.Param(jnp.ones((3, 8, 16)), out_sharding=("layers", "embed", "mlp"))
  tx = gt.scale_by_adam_mini()
  state = tx.init(nnx.State({"kernel": named}))
  assert jax.tree.leaves(state.nu)[0].shape == (3, 1, 16)
  u, _ = tx.update(nnx.State({"kernel": named}), state)
  assert jax.tree.leaves(u)[0].shape == (3, 8, 16)
  with pytest.warns(gt.AmbiguousMatrixViewWarning):
    plain = tx.init({"other": jnp.ones((3, 8, 16))})
  assert jax.tree.leaves(plain.nu)[0].shape == (1, 1, 16)
