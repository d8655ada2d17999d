"""The one matrix-view rule: Flax layers' parameters as matrices, overrides, round trips."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
from gradtx import transforms as gt
from gradtx.routing import matrix_view

V = gt.MatrixView


def _views(module, rule=gt.flax_matrix_view):
  state = nnx.state(module, nnx.Param)
  return {
      jax.tree_util.keystr(path): (leaf.shape, rule(path, leaf))
      for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
  }


def test_multi_head_attention_projections_are_in_by_heads_times_head_dim():
  attention = nnx.MultiHeadAttention(
      num_heads=8, in_features=64, qkv_features=64, decode=False, rngs=nnx.Rngs(0))
  views = _views(attention)
  for name in ("query", "key", "value"):
    shape, view = views[f"['{name}']['kernel'].value"]
    assert shape == (64, 8, 8) and view == V(rows=(0,), cols=(1, 2))
    assert view.matrix_shape(shape) == (1, 64, 64)
    assert views[f"['{name}']['bias'].value"] == ((8, 8), None)  # never a matrix
  assert views["['out']['kernel'].value"] == ((8, 8, 64), V(rows=(0, 1), cols=(2,)))
  assert views["['out']['bias'].value"][1] is None


def test_linear_embed_conv_and_norm_parameters():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(11, 6, rngs=rngs)
      self.conv = nnx.Conv(3, 5, (3, 3), rngs=rngs)
      self.dense = nnx.Linear(6, 4, rngs=rngs)
      self.norm = nnx.LayerNorm(4, rngs=rngs)

  views = _views(Net(nnx.Rngs(0)))
  assert views["['embed']['embedding'].value"][1] == V((0,), (1,))
  conv_shape, conv = views["['conv']['kernel'].value"]
  assert conv == V((0, 1, 2), (3,)) and conv.matrix_shape(conv_shape) == (1, 27, 5)
  assert views["['dense']['kernel'].value"][1] == V((0,), (1,))
  for name in ("['conv']['bias'].value", "['dense']['bias'].value",
               "['norm']['scale'].value", "['norm']['bias'].value"):
    assert views[name][1] is None


def test_scanned_layers_are_declared_with_stacked_matrix_view():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.lin = nnx.Linear(4, 6, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(
          num_heads=2, in_features=4, qkv_features=4, decode=False, rngs=rngs)

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def stack(rngs):
    return Block(rngs)

  views = _views(stack(nnx.Rngs(0)), gt.stacked_matrix_view())
  shape, view = views["['lin']['kernel'].value"]
  assert shape == (3, 4, 6) and view == V((1,), (2,), batch=(0,))
  assert view.matrix_shape(shape) == (3, 4, 6)
  shape, view = views["['attn']['query']['kernel'].value"]
  assert shape == (3, 4, 2, 2) and view == V((1,), (2, 3), batch=(0,))
  assert views["['lin']['bias'].value"][1] is None


def test_einsum_kernel_view_is_declared_from_its_spec():
  assert gt.einsum_matrix_view("bnd,ndh->bnh") == V((1,), (2,), batch=(0,))
  assert gt.einsum_matrix_view("btd,dnh->btnh") == V((0,), (1, 2))
  with pytest.raises(ValueError, match="spec"):
    gt.einsum_matrix_view("bd->bd")


@pytest.mark.parametrize("view, shape", [
    (V((0,), (1, 2)), (4, 3, 5)),
    (V((1,), (2, 0)), (4, 3, 5)),
    (V((2,), (0,), batch=(1,)), (4, 3, 5)),
    (V((0, 1, 2), (3,)), (3, 3, 2, 7)),
])
def test_to_and_from_matrices_round_trip(view, shape):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  m = view.to_matrices(x)
  assert m.shape == view.matrix_shape(shape)
  np.testing.assert_array_equal(view.from_matrices(m, shape), x)
  # Rows and columns are the named axes: element (b, i, j) of the stack.
  order = view.batch + view.rows + view.cols
  np.testing.assert_array_equal(
      np.asarray(m).ravel(), np.transpose(np.asarray(x), order).ravel())


def test_a_view_that_misses_an_axis_is_refused():
  with pytest.raises(ValueError, match="does not name every axis"):
    V((0,), (1,)).matrix_shape((2, 3, 4))


def test_empty_leaves_have_no_view():
  assert matrix_view.view_of((), jnp.zeros((0, 4)), None) is None
  assert matrix_view.view_of((), jnp.zeros((3, 4)), None) == V((0,), (1,))


def _msign(x):
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  return u @ vt


def test_muon_orthogonalizes_a_query_kernel_as_one_in_by_features_matrix():
  attention = nnx.MultiHeadAttention(
      num_heads=4, in_features=16, qkv_features=16, decode=False, rngs=nnx.Rngs(0))
  params = nnx.state(attention, nnx.Param)
  rng = np.random.default_rng(0)
  grads = jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
  # The cubic iteration converges to the exact msign; no momentum, no scale.
  tx = go.muon(1.0, beta=0.0, nesterov=False, coefficients="cubic", ns_steps=40,
               scale=None, eps=0.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  for name in ("query", "key", "value"):
    g = np.asarray(grads[name]["kernel"].get_value())
    u = np.asarray(updates[name]["kernel"].get_value())
    expected = -_msign(g.reshape(16, 16)).reshape(g.shape)
    np.testing.assert_allclose(u, expected, atol=1e-4)
  g_out = np.asarray(grads["out"]["kernel"].get_value())
  np.testing.assert_allclose(
      np.asarray(updates["out"]["kernel"].get_value()),
      -_msign(g_out.reshape(16, 16)).reshape(g_out.shape), atol=1e-4)
  # Biases go to AdamW: its first step is -lr·sign(g).
  bias = updates["query"]["bias"].get_value()
  np.testing.assert_allclose(
      bias, -np.sign(grads["query"]["bias"].get_value()), atol=1e-6)


def test_shampoo_and_muon_see_the_same_matrix():
  """Kronecker factors are built on the same view Newton–Schulz uses."""
  params = {"attn": {"query": {"kernel": jnp.zeros((12, 3, 4))}}}
  state = go.shampoo(1e-3, block_size=None).init(params)
  # One (12, 12) matrix: both factors 12x12 (not 12x3 / 4x4 as a stack).
  assert set(state[0].direction_state.left_stats) == {"12x12"}
  assert state[0].direction_state.left_stats["12x12"].shape == (1, 12, 12)
  assert state[0].direction_state.right_stats["12x12"].shape == (1, 12, 12)


def test_a_user_rule_overrides_the_default_per_leaf():
  def rule(path, leaf):
    if "experts" in jax.tree_util.keystr(path):
      return V((1,), (2,), batch=(0,))
    return gt.flax_matrix_view(path, leaf)

  params = {"experts": jnp.zeros((4, 6, 8)), "dense": jnp.zeros((6, 8))}
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
  tx = gt.clip_singular_values(1.0, 1.0, matrix_view=rule)
  out, _ = tx.update(grads, tx.init(params))
  for e in range(4):
    np.testing.assert_allclose(out["experts"][e], _msign(np.asarray(grads["experts"][e])),
                               atol=1e-5)
  np.testing.assert_allclose(out["dense"], _msign(np.asarray(grads["dense"])), atol=1e-5)
  views = gt.on_matrix_views(optax.identity(), rule)
  same, _ = views.update(grads, views.init(params))
  np.testing.assert_array_equal(same["experts"], grads["experts"])


def test_column_blocks_are_consecutive_slices_of_the_columns():
  x = jnp.arange(4 * 9.0).reshape(4, 9)
  m = V((0,), (1,), col_blocks=3).to_matrices(x)
  assert m.shape == (3, 4, 3)
  for i in range(3):
    np.testing.assert_array_equal(m[i], x[:, 3 * i:3 * i + 3])
  with pytest.raises(ValueError, match="col_blocks"):
    V((0,), (1,), col_blocks=2).matrix_shape((4, 9))
  stacked = V((1,), (2,), batch=(0,), col_blocks=2)
  y = jnp.arange(3 * 4 * 6.0).reshape(3, 4, 6)
  blocks = stacked.to_matrices(y)
  assert blocks.shape == (6, 4, 3)
  np.testing.assert_array_equal(blocks[2], y[1, :, :3])  # layer 1, block 0
  np.testing.assert_array_equal(blocks[3], y[1, :, 3:])
  np.testing.assert_array_equal(stacked.from_matrices(blocks, y.shape), y)


def test_fused_qkv_kernel_is_orthogonalized_as_three_matrices():
  """The reference Muon's treatment of q, k, v (modded-nanogpt): a fused
  (d, 3d) kernel under ``fused_qkv_matrix_view`` gets msign of each (d, d)
  block, by exact SVD; other leaves keep the default view."""
  rng = np.random.default_rng(0)
  grads = {"qkv": {"kernel": jnp.asarray(rng.standard_normal((8, 24)))},
           "up": {"kernel": jnp.asarray(rng.standard_normal((8, 24)))}}
  tx = gt.clip_singular_values(1.0, 1.0, matrix_view=gt.fused_qkv_matrix_view())
  out, _ = tx.update(grads, tx.init(grads))
  fused = np.asarray(grads["qkv"]["kernel"])
  expected = np.concatenate([_msign(fused[:, 8 * i:8 * i + 8]) for i in range(3)], axis=1)
  np.testing.assert_allclose(out["qkv"]["kernel"], expected, atol=1e-5)
  np.testing.assert_allclose(out["up"]["kernel"], _msign(np.asarray(grads["up"]["kernel"])),
                             atol=1e-5)
  with pytest.raises(ValueError, match="num_parts"):
    gt.fused_qkv_matrix_view(0)
  # Grouped-query attention's fused kernel (d, d + 2·d_kv) stays one matrix.
  gqa = jnp.zeros((8, 8 + 2 * 4))
  rule = gt.fused_qkv_matrix_view()
  assert rule((jax.tree_util.DictKey("qkv"), jax.tree_util.DictKey("kernel")), gqa) == V((0,), (1,))


def test_stacked_view_leaves_ordinary_kernels_their_own_view():
  """Issue 26: a model with a scanned stack keeps its 2-D kernels as matrices."""
  rule = gt.stacked_matrix_view()
  kernel = jax.ShapeDtypeStruct((16, 24), jnp.float32)
  stack = jax.ShapeDtypeStruct((4, 16, 24), jnp.float32)
  path = (jax.tree_util.DictKey("dense"), jax.tree_util.DictKey("kernel"))
  assert rule(path, kernel) == V((0,), (1,))
  assert rule(path, stack) == V((1,), (2,), batch=(0,))
  only = gt.stacked_matrix_view(where=lambda path, leaf: False)
  assert only(path, stack) == V((0, 1), (2,))  # the inner rule's view, un-stacked


def test_stacked_view_keeps_the_inner_rules_column_blocks():
  rule = gt.stacked_matrix_view(rule=gt.fused_qkv_matrix_view())
  path = (jax.tree_util.DictKey("qkv"), jax.tree_util.DictKey("kernel"))
  view = rule(path, jax.ShapeDtypeStruct((2, 4, 12), jnp.float32))
  assert view == V((1,), (2,), batch=(0,), col_blocks=3)
  assert view.matrix_shape((2, 4, 12)) == (6, 4, 4)


def _key_path(*names):
  return tuple(jax.tree_util.DictKey(n) for n in names)


def test_an_unnamed_3d_leaf_warns_once_and_strict_refuses(monkeypatch):
  monkeypatch.setattr(matrix_view, "_WARNED", set())
  leaf = jax.ShapeDtypeStruct((4, 8, 8), jnp.float32)
  path = _key_path("blocks", "kernel")
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match=r"\['blocks'\]\['kernel'\].*32x8.*"
                    r"stacked_matrix_view"):
    assert gt.flax_matrix_view(path, leaf) == V((0, 1), (2,))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    gt.flax_matrix_view(path, leaf)  # once only
  with pytest.raises(ValueError, match="stacked_matrix_view"):
    gt.flax_matrix_view(path, leaf, strict=True)


@pytest.mark.parametrize("names, shape, view", [
    (("conv", "kernel"), (3, 3, 4, 8), V((0, 1, 2), (3,))),
    (("Conv_0", "kernel"), (3, 4, 8), V((0, 1), (2,))),
    (("attn", "out", "kernel"), (2, 4, 8), V((0, 1), (2,))),
    (("moe", "experts_w1"), (8, 16, 32), V((1,), (2,), batch=(0,))),
], ids=["conv2d", "linen_conv1d", "attention_out", "experts"])
def test_named_3d_layouts_are_settled_silently(names, shape, view):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert gt.flax_matrix_view(_key_path(*names), jax.ShapeDtypeStruct(shape, jnp.float32)) == view


def test_batch_axes_read_names_expert_stacks_and_rules_without_guessing():
  key = jax.tree_util.DictKey
  leaf = jax.ShapeDtypeStruct((4, 16, 32), jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error", gt.AmbiguousMatrixViewWarning)
    # No names, no "expert": no batch axes, and no warning (no rows/cols guessed).
    assert matrix_view.batch_axes((key("blocks"), key("kernel")), leaf, None) == ()
    assert matrix_view.batch_axes((key("moe"), key("experts_in")), leaf, None) == (0,)
    names = {"['blocks']['kernel']": ((16, 4, 32), ("embed", "layers", "mlp"))}
    with matrix_view._axes.using(names):
      middle = jax.ShapeDtypeStruct((16, 4, 32), jnp.float32)
      assert matrix_view.batch_axes((key("blocks"), key("kernel")), middle, None) == (1,)
  rule = gt.stacked_matrix_view()
  assert matrix_view.batch_axes((key("blocks"), key("kernel")), leaf, rule) == (0,)
  assert matrix_view.batch_axes((key("b"),), jax.ShapeDtypeStruct((8,), jnp.float32), rule) == ()


class _EinsumModel(nnx.Module):
  def __init__(self, rngs):
    self.proj = nnx.Einsum("bd,dhk->bhk", (16, 4, 8), (4, 8), rngs=rngs)
    self.out = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    return self.out(self.proj(x).reshape(x.shape[0], -1))


def _ends_with(suffix):
  return lambda path: jax.tree_util.keystr(path).endswith(suffix)


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_a_users_rules_see_the_same_paths_at_init_and_update_under_nnx_optimizer(name):
  """nnx.Optimizer hands init the variables (paths ending in .value) and
  update plain arrays: a user's matrix_view and is_muon_param rules, keyed on
  the path's end, must route both alike (Shampoo and SOAP refused their own
  state; describe disagreed with training)."""
  is_proj = _ends_with("['proj']['kernel']")
  rule = lambda path, leaf: (gt.einsum_matrix_view("bd,dhk->bhk") if is_proj(path)
                             else gt.flax_matrix_view(path, leaf))
  kwargs = dict(matrix_view=rule)
  if name == "muon":
    kwargs["is_muon_param"] = lambda path, leaf: is_proj(path)
  model = _EinsumModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, getattr(go, name)(0.1, **kwargs), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.mean(m(jnp.ones((2, 16))) ** 2))(model)
  optimizer.update(model, grads)
  for tree in (nnx.state(model, nnx.Param), nnx.state(model, nnx.Param).to_pure_dict()):
    row = gt.describe(getattr(go, name)(0.1, **kwargs), tree)["['proj']['kernel']"]
    assert row.matrices == (1, 16, 32), row


def test_a_view_that_does_not_fit_its_leaf_names_the_leaf():
  params = {"proj": {"kernel": jnp.ones((16, 4, 8)), "bias": jnp.ones((4, 8))}}
  rule = lambda path, leaf: gt.einsum_matrix_view("bd,dhk->bhk")
  with pytest.raises(ValueError, match=r"matrix view of \['proj'\]\['bias'\]: .*\(4, 8\)"):
    go.muon(0.1, matrix_view=rule).init(params)


@pytest.mark.parametrize("path, shape", [
    ("attn/out/kernel", (3, 4, 8, 16)),  # a scanned flax attention output
    ("conv/kernel", (4, 3, 3, 8, 8)),  # scanned 2-D convolutions (or one 3-D)
])
def test_a_named_layout_with_more_axes_than_flaxs_is_a_guess(path, shape):
  """"out" settles flax's 3-D attention output and "conv" a 1- or 2-D
  convolution; with more axes they may be scanned layers, read as one
  matrix: that is a guess, which warns (it was silent, and strict passed)."""
  keys = tuple(jax.tree_util.DictKey(k) for k in path.split("/"))
  leaf = jax.ShapeDtypeStruct(shape, jnp.float32)
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match="stacked_matrix_view"):
    gt.flax_matrix_view(keys, leaf)
  with pytest.raises(ValueError, match="stacked_matrix_view"):
    gt.flax_matrix_view(keys, leaf, strict=True)
  flat = jax.ShapeDtypeStruct(shape[1:], jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert gt.flax_matrix_view(keys, flat) is not None  # flax's own layout: settled


def test_an_attention_output_named_like_a_query_warns():
  """flax's MultiHeadAttention gives its output projection kernel_init's axis
  names unless out_kernel_init is passed: (embed, heads, kv) on a (heads,
  head_dim, out) kernel, which the names made a 4x128 matrix, silently; now
  flax's layout is taken, with a warning."""
  init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "heads", "kv"))
  with nnx.use_eager_sharding(False):
    attention = nnx.MultiHeadAttention(num_heads=4, in_features=16, qkv_features=32,
                                       decode=False, kernel_init=init, rngs=nnx.Rngs(0))
    params = nnx.state(attention, nnx.Param)
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match=r"\['out'\]\['kernel'\].*out_kernel_init"):
    description = gt.describe(go.muon(0.1), params)
  # flax's layout, (heads, head_dim, out), is taken: one 32 x 16 matrix (the
  # names made it 4 x 128, an update 0.8 cos from Muon's).
  assert description["['out']['kernel']"].matrices == (1, 32, 16)
  with pytest.raises(ValueError, match="out_kernel_init"):
    gt.describe(go.muon(0.1), params, strict=True)
  # A scanned stack of them: the layer axis first, then the same names.
  with nnx.use_eager_sharding(False):
    stacked = {"out": {"kernel": nnx.Param(jnp.zeros((3, 4, 8, 16)),
                                           out_sharding=("layers", "embed", "heads", "kv"))}}
    with pytest.warns(gt.AmbiguousMatrixViewWarning, match="out_kernel_init"):
      description = gt.describe(go.muon(0.1), stacked)
  assert description["['out']['kernel']"].matrices == (3, 32, 16)


def test_a_5d_convolution_kernel_warns_with_the_rule_that_keeps_a_3d_convolution():
  keys = (jax.tree_util.DictKey("Conv_0"), jax.tree_util.DictKey("kernel"))
  leaf = jax.ShapeDtypeStruct((3, 3, 3, 4, 8), jnp.float32)
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match=r"MatrixView\(rows=\(0, 1, 2, 3\)"):
    assert gt.flax_matrix_view(keys, leaf).rows == (0, 1, 2, 3)


def test_the_stacked_view_keeps_the_view_axis_names_give():
  """``stacked_matrix_view()`` gave its inner rule the shape without the stack
  axis and no names: an expert stack named (layers, exp, embed, mlp) became
  one (experts·embed) x mlp matrix per layer, orthogonalized across experts."""
  init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("layers", "exp", "embed", "mlp"))
  with nnx.use_eager_sharding(False):
    params = {"w_in": nnx.Param(init(jax.random.key(0), (3, 4, 32, 48))),
              "up": nnx.Param(jnp.zeros((3, 32, 48)))}  # a stack without names
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", gt.AmbiguousMatrixViewWarning)
    description = gt.describe(go.muon(0.02, matrix_view=gt.stacked_matrix_view()), params)
  assert description["['w_in']"].matrices == (12, 32, 48)
  assert description["['up']"].matrices == (3, 32, 48)


@pytest.mark.parametrize("rule", [
    gt.flax_matrix_view, gt.stacked_matrix_view(), gt.fused_qkv_matrix_view(),
    gt.matrix_view_from_axes({})], ids=["flax", "stacked", "fused_qkv", "from_axes"])
def test_a_rule_handed_to_inject_hyperparams_as_a_schedule_says_static_args(rule):
  """optax.inject_hyperparams calls a callable hyperparameter with the step
  count: the rule failed with "missing 1 required positional argument: 'leaf'"."""
  params = {"w": jnp.ones((3, 8, 16))}
  with pytest.raises(TypeError, match=r"static_args=\('matrix_view',\)"):
    optax.inject_hyperparams(go.muon)(learning_rate=0.02, matrix_view=rule).init(params)
  tx = optax.inject_hyperparams(go.muon, static_args=("matrix_view",))(
      learning_rate=0.02, matrix_view=rule)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", gt.AmbiguousMatrixViewWarning)
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("num_axes", [0, -1, 1.5, True])
def test_the_stacked_view_refuses_a_number_of_stack_axes_that_is_no_count(num_axes):
  """0 or 1.5 merged a (2, 4, 3) stack into one matrix, -1 sent it to AdamW."""
  with pytest.raises(ValueError, match=r"num_axes must be an integer >= 1"):
    gt.stacked_matrix_view(num_axes=num_axes)


def _scanned_attention_tree(layers=3, d=16, heads=2, head_dim=8):
  f = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {"layers": {"attn": {
      "query": {"kernel": f(layers, d, heads, head_dim)},
      "key": {"kernel": f(layers, d, heads, head_dim)},
      "value": {"kernel": f(layers, d, heads, head_dim)},
      "out": {"kernel": f(layers, heads, head_dim, d)}}}}


def test_a_scanned_multi_head_attention_is_one_matrix_per_layer():
  """nnx.scan over flax's MultiHeadAttention: 4-D query/key/value (layers,
  in, heads, head_dim) and out (layers, heads, head_dim, out) kernels. They
  were read as one (layers·in·heads) x head_dim matrix, with a warning."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rows = {r.path: r.matrices for r in gt.describe(go.muon(0.02), _scanned_attention_tree(),
                                                    strict=True)}
  assert set(rows.values()) == {(3, 16, 16)}, rows


def test_scanned_attention_steps_as_its_layers_do_one_by_one():
  tree = jax.tree.map(lambda s: jnp.cos(jnp.arange(np.prod(s.shape)).reshape(s.shape)),
                      _scanned_attention_tree())
  per_layer = [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(3)]  # 3-D kernels
  tx = go.muon(0.02)
  stacked, _ = tx.update(tree, tx.init(tree), tree)
  for i, layer in enumerate(per_layer):
    alone, _ = tx.update(layer, tx.init(layer), layer)
    for x, y in zip(jax.tree.leaves(jax.tree.map(lambda u, i=i: u[i], stacked)),
                    jax.tree.leaves(alone)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_a_four_d_expert_stack_is_one_matrix_per_layer_and_expert():
  tree = {"layers": {"moe": {"experts_in": jax.ShapeDtypeStruct((3, 4, 16, 32), jnp.float32)}}}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    (row,) = gt.describe(go.muon(0.02), tree, strict=True)
  assert row.matrices == (12, 16, 32)


@pytest.mark.parametrize("module, shape", [
    ("o_proj", (3, 16, 16)), ("out_proj", (3, 16, 16)),  # torch's names of 2-D linear layers
    ("out", (3, 32, 16)),  # an MLP's output layer, no attention beside it
])
def test_a_stacked_linear_named_like_an_attention_output_is_a_guess(module, shape):
  """nnx.vmap/scan over plain nnx.Linear layers named o_proj or out: each is
  read as one (layers·in) x out matrix, silently (strict passed them)."""
  f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  tree = {"up": {"kernel": f(3, 16, 32)}, module: {"kernel": f(*shape)}}
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match=rf"\['{module}'\]\['kernel'\]"):
    description = gt.describe(go.muon(0.02), tree)
  assert f"['{module}']['kernel']" in description.ambiguous
  with pytest.raises(ValueError, match=module):
    gt.describe(go.muon(0.02), tree, strict=True)


def test_flaxs_attention_output_beside_its_projections_stays_settled():
  f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  tree = {"attn": {"query": {"kernel": f(16, 2, 8)}, "key": {"kernel": f(16, 2, 8)},
                   "value": {"kernel": f(16, 2, 8)}, "out": {"kernel": f(2, 8, 16)}}}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rows = {r.path: r.matrices for r in gt.describe(go.muon(0.02), tree, strict=True)}
  assert rows["['attn']['out']['kernel']"] == (1, 16, 16)


def test_a_four_d_query_conv_without_an_attention_output_keeps_the_convolution_view():
  """A 1x1 convolution named query (self-attention GANs): no 4-D out beside
  it, so not a scanned attention; read as a convolution kernel, a guess."""
  tree = {"query": {"kernel": jax.ShapeDtypeStruct((1, 1, 64, 8), jnp.float32)}}
  with pytest.warns(gt.AmbiguousMatrixViewWarning):
    (row,) = gt.describe(go.muon(0.02), tree)
  assert row.matrices == (1, 64, 8)


def test_a_convolution_in_an_expert_or_beside_scanned_attention_keeps_its_view():
  """The 4-D expert and scanned-attention readings are for those kernels
  only: a 2-D convolution inside an expert module, or beside a scanned
  attention's projections, stays one (kh·kw·in) x out matrix."""
  f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  attention = _scanned_attention_tree()["layers"]["attn"]
  tree = {"expert_0": {"Conv_0": {"kernel": f(3, 3, 16, 32)}},
          "attn": {**attention, "conv": {"kernel": f(3, 4, 32, 32)}}}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    rows = {r.path: r.matrices for r in gt.describe(go.muon(0.02), tree)}
  assert rows["['expert_0']['Conv_0']['kernel']"] == (1, 144, 32)
  assert rows["['attn']['conv']['kernel']"] == (1, 384, 32)
  assert rows["['attn']['query']['kernel']"] == (3, 16, 16)


def test_a_one_d_convolution_in_an_expert_is_one_matrix_not_one_per_tap():
  """An expert's own 1-D convolution (k, in, out) is a (k·in) x out kernel as
  it is outside one; a 3-D leaf of the expert module itself is the stack."""
  model = nnx.Module()
  model.experts = nnx.List([_ConvExpert(nnx.Rngs(i)) for i in range(2)])
  tree = nnx.state(model, nnx.Param)
  with warnings.catch_warnings():
    warnings.simplefilter("error", gt.AmbiguousMatrixViewWarning)
    rows = {r.path: r.matrices for r in gt.describe(go.muon(0.02), tree)}
    rows.update({r.path: r.matrices for r in gt.describe(
        go.muon(0.02), {"experts": {"w": jax.ShapeDtypeStruct((4, 8, 16), jnp.float32)}})})
  assert rows["['experts'][0]['conv']['kernel']"] == (1, 24, 16)
  assert rows["['experts']['w']"] == (4, 8, 16)
  conv = jnp.ones((3, 8, 16))
  path = jax.tree_util.tree_flatten_with_path({"experts": [{"conv": {"kernel": conv}}]})[0][0][0]
  assert matrix_view.batch_axes(path, conv, None) == ()


class _ConvExpert(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(8, 16, kernel_size=(3,), rngs=rngs)


def test_an_attention_output_beside_a_fused_qkv_kernel_is_settled():
  f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  tree = {"attn": {"qkv": {"kernel": f(32, 3, 4, 8)}, "out": {"kernel": f(4, 8, 32)}}}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    description = gt.describe(go.muon(0.02), tree)
  assert "['attn']['out']['kernel']" not in description.ambiguous


def test_adam_minis_blocks_read_a_scanned_attention_as_muon_does():
  """Adam-mini built its blocks outside the tree's attention context: on a
  scanned MultiHeadAttention its blocks spanned the layers, with warnings."""
  tree = jax.tree.map(lambda s: jnp.zeros(s.shape), _scanned_attention_tree())
  with warnings.catch_warnings():
    warnings.simplefilter("error", gt.AmbiguousMatrixViewWarning)
    go.adam_mini(1e-3).init(tree)


def test_on_matrix_views_refuses_an_inner_that_keeps_arrays():
  """A stateful inner (optax.trace) was accepted: its momentum, built on the
  leaves at init, came back from the first step laid out like their views
  ((8, 4) -> (1, 8, 4)) and the bias's as None, with no error. A step count
  alone is kept."""
  params = {"w": jnp.ones((8, 4)), "b": jnp.ones(4)}
  with pytest.raises(ValueError, match="runs a stateless inner transform"):
    gt.on_matrix_views(optax.trace(0.9)).init(params)
  counted = gt.on_matrix_views(optax.scale_by_schedule(lambda count: 1.0 / (count + 1)))
  updates, _ = counted.update(params, counted.init(params))
  np.testing.assert_array_equal(updates["w"], params["w"])
  with pytest.raises(ValueError, match="inner must be an optax.GradientTransformation"):
    gt.on_matrix_views(optax.adam)


@pytest.mark.parametrize("make", [lambda v: go.muon(0.02, matrix_view=v),
                                  lambda v: go.soap(0.01, matrix_view=v),
                                  lambda v: gt.orthogonalize_newton_schulz(matrix_view=v)])
def test_a_matrix_view_that_is_no_rule_is_named(make):
  """A string or a number passed as matrix_view failed at init with "'str'
  object is not callable", naming no argument."""
  params = {"w": jnp.ones((8, 4)), "b": jnp.ones(4)}
  for bad in ("stacked", 1.0):
    tx = make(bad)
    with pytest.raises(ValueError, match="matrix_view must be None or a rule"):
      tx.update(params, tx.init(params), params)  # at init, or the first update
