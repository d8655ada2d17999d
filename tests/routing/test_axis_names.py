"""Flax axis names as the first source of truth of matrix views and routing
(gradtx/routing/axis_names.py), on real Flax modules: NNX with
``nnx.with_partitioning`` and the ``layers`` axis of ``nnx.vmap``, an expert
stack, Linen's logical partitioning and ``nn.scan``; each checked against the
routing written out by hand, leaf by leaf, and in ``gt.describe``'s table."""

import doctest
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
from gradtx import transforms as gt
from gradtx._internal.routing import leaf_key
from gradtx.routing import axis_names

V = gt.MatrixView


@pytest.mark.parametrize("names, reading", [
    (("layers", "embed", "mlp"), ((0,), (1,), (2,), "matrix")),
    (("embed", "heads", "kv"), ((), (0,), (1, 2), "matrix")),
    (("heads", "kv", "embed"), ((), (0, 1), (2,), "matrix")),
    (("exp", "mlp", "embed"), ((0,), (1,), (2,), "matrix")),
    (("embed", "num_activations", "mlp"), ((1,), (0,), (2,), "matrix")),
    (("embed", "exp"), ((), (0,), (1,), "matrix")),  # a router
    (("layers", "embed", "exp"), ((0,), (1,), (2,), "matrix")),  # a scanned router
    (("layers", "exp"), ((0, 1), None, None, "vector")),  # a stacked experts' bias
    (("layers", "mlp"), ((0,), None, None, "vector")),  # a stacked bias
    (("layers", "norm"), ((0,), None, None, "vector")),
    (("vocab", "embed"), ((), None, None, "embedding")),
    (("embed", "vocab"), ((), (0,), (1,), "output_head")),
    (("layers", None, None), ((0,), None, None, None)),  # left to the shape
    (("embed", None), ((), None, None, None)),
    (("embed", ("fsdp", "mlp")), ((), (0,), (1,), "matrix")),  # several mesh axes
    # On a 2-D leaf, an expert mesh axis reused for FSDP is no stack, on either
    # axis; on a 3-D one, experts split over expert x fsdp (or layers over a
    # pipeline) are.
    ((("fsdp", "expert"), "tensor"), ((), None, None, None)),
    (("tensor", ("fsdp", "expert")), ((), None, None, None)),
    ((("expert",), "embed", "mlp"), ((0,), (1,), (2,), "matrix")),
    ((("expert", "fsdp"), None, "tensor"), ((0,), None, None, None)),
    ((("expert", "data"), "embed", "mlp"), ((0,), (1,), (2,), "matrix")),
    ((("layers", "pipeline"), None, None), ((0,), None, None, None)),
])
def test_what_the_names_settle(names, reading):
  assert tuple(axis_names.read(names)) == reading


def test_add_axis_names_recognises_more_and_checks_the_role(monkeypatch):
  monkeypatch.setattr(axis_names, "_ROLE_OF", dict(axis_names._ROLE_OF))
  assert axis_names.read(("my_blocks", "embed", "mlp")).role is None
  gt.add_axis_names("batch", "my_blocks")
  assert tuple(axis_names.read(("my_blocks", "embed", "mlp")))[:3] == ((0,), (1,), (2,))
  with pytest.raises(ValueError, match="role must be one of"):
    gt.add_axis_names("stack", "my_blocks")


def _partitioned(names, init=None):
  return nnx.with_partitioning(init or nnx.initializers.lecun_normal(), names)


class _Block(nnx.Module):
  def __init__(self, rngs):
    self.up = nnx.Linear(16, 32, kernel_init=_partitioned(("embed", "mlp")), rngs=rngs)
    self.down = nnx.Linear(32, 16, kernel_init=_partitioned(("mlp", "embed")), rngs=rngs)
    self.norm = nnx.RMSNorm(16, scale_init=_partitioned(("norm",), nnx.initializers.ones),
                            rngs=rngs)


class _ScannedLM(nnx.Module):
  """Embedding, four blocks stacked by nnx.vmap with a 'layers' axis, a head.

  The head is called ``out``: no name says it is one, its 'vocab' axis does.
  """

  def __init__(self, rngs, vocab=50):
    self.embed = nnx.Embed(vocab, 16, embedding_init=_partitioned(
        ("vocab", "embed"), nnx.initializers.normal()), rngs=rngs)

    @nnx.split_rngs(splits=4)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def blocks(rngs):
      return _Block(rngs)

    self.blocks = blocks(rngs)
    self.out = nnx.Linear(16, vocab, kernel_init=_partitioned(("embed", "vocab")), rngs=rngs)


SCANNED_BY_HAND = {  # path: (view, goes to Muon); no view: not a matrix
    "['blocks']['up']['kernel']": (V((1,), (2,), batch=(0,)), True),
    "['blocks']['down']['kernel']": (V((1,), (2,), batch=(0,)), True),
    "['embed']['embedding']": (V((0,), (1,)), False),
    "['out']['kernel']": (V((0,), (1,)), False),
}


def _by_hand(table):
  views = {path: view for path, (view, _) in table.items()}
  muon = {path for path, (_, on) in table.items() if on}
  return (lambda path, leaf: views.get(leaf_key(path)),
          lambda path, leaf: leaf_key(path) in muon)


def _rows(description):
  return [(r.path, r.branch, r.view) for r in description]


def _assert_routed_as_by_hand(params, table, matrix_view=None):
  """describe(go.muon) of the default equals that of the rules by hand, leaf by leaf."""
  view, is_muon = _by_hand(table)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no guessed view, no deprecation
    default = gt.describe(go.muon(0.02, matrix_view=matrix_view), params)
  explicit = gt.describe(go.muon(0.02, matrix_view=view, is_muon_param=is_muon), params)
  assert not default.ambiguous
  # Read from Linen boxes, the names come with a note on training unboxed.
  assert all("Linen boxes" in note for note in default.notes)
  for row, by_hand in zip(default, explicit, strict=True):
    assert (row.path, row.branch, row.view) == (by_hand.path, by_hand.branch, by_hand.view)
  for path, (_, on) in table.items():
    assert default[path].branch == ("muon" if on else "adam"), path
  return default


def _table_line(description, path):
  return next(line.split() for line in str(description).splitlines()
              if line.startswith(path + " "))


def _nnx_model(cls, **kwargs):
  with nnx.use_eager_sharding(False):  # sharding names without a mesh
    return cls(nnx.Rngs(0), **kwargs)


def test_nnx_scanned_stack_routes_by_its_axis_names():
  model = _nnx_model(_ScannedLM)
  description = _assert_routed_as_by_hand(nnx.state(model, nnx.Param), SCANNED_BY_HAND)
  assert _table_line(description, "['blocks']['up']['kernel']")[1:4] == [
      "4x16x32", "float32", "muon"]
  assert _table_line(description, "['blocks']['up']['kernel']")[4] == "4x16x32"
  assert _table_line(description, "['out']['kernel']")[3] == "adam"
  assert description["['blocks']['norm']['scale']"].view is None  # (layers, norm)
  # Abstract parameters (nnx.eval_shape) read the same names.
  with nnx.use_eager_sharding(False):
    abstract = nnx.state(nnx.eval_shape(lambda: _ScannedLM(nnx.Rngs(0))), nnx.Param)
  assert _rows(gt.describe(go.muon(0.02), abstract)) == _rows(description)


def _same_update(a, b, params, grads, params_b=None, grads_b=None):
  ua = a.update(grads, a.init(params), params)[0]
  ub = b.update(grads if grads_b is None else grads_b,
                b.init(params if params_b is None else params_b), params)[0]
  for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _loss(model):
  return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_nnx_optimizer_reads_the_names_its_update_does_not_see():
  # nnx.Optimizer hands tx.init variables and tx.update plain arrays: the
  # update reads the names its init met, with no other tree met and nothing
  # warned of before (conftest's fresh_routing_memory). Muon's inner transform
  # sees only the leaves optax.masked keeps, a part of the tree init met.
  model = _nnx_model(_ScannedLM, vocab=37)
  view, is_muon = _by_hand(SCANNED_BY_HAND)
  by_hand = go.muon(0.02, matrix_view=view, is_muon_param=is_muon)
  plain = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  grads = nnx.to_pure_dict(nnx.grad(_loss)(model))
  expected = by_hand.update(grads, by_hand.init(plain), plain)[0]
  optimizer = nnx.Optimizer(model, go.muon(0.02), wrt=nnx.Param)
  with warnings.catch_warnings():
    warnings.simplefilter("error", gt.AmbiguousMatrixViewWarning)
    optimizer.update(model, nnx.grad(_loss)(model))
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for x, p, u in zip(jax.tree.leaves(after), jax.tree.leaves(plain),
                     jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(x, p + u, rtol=1e-5, atol=1e-6)



class _Projected(nnx.Module):
  """A hidden layer and a 16 -> 40 projection whose kernel has ``names`` (or none)."""

  def __init__(self, names):
    rngs = nnx.Rngs(0)
    init = nnx.initializers.lecun_normal()
    self.a = nnx.Linear(16, 16, rngs=rngs)
    self.proj = nnx.Linear(16, 40, rngs=rngs, kernel_init=(
        nnx.with_partitioning(init, names) if names else init))

  def __call__(self, x):
    return self.proj(jax.nn.relu(self.a(x)))


@pytest.mark.parametrize("jitted", [False, True])
def test_another_model_with_the_same_paths_and_shapes_leaves_an_optimizers_routing(jitted):
  """Model B, with model A's paths and shapes and other names, was read by A's
  later plain updates: A's head went to Muon, which no longer fit A's state
  (a crash naming the wrong cause). Each optimizer keeps what its init read."""
  x = jnp.linspace(-1.0, 1.0, 64).reshape(4, 16)

  def make(names):
    with nnx.use_eager_sharding(False):
      model = _Projected(names)
    return model, nnx.Optimizer(model, go.muon(0.02, adam_learning_rate=0.02), wrt=nnx.Param)

  def step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

  step = nnx.jit(step) if jitted else step

  def run(build_another):
    model, optimizer = make(("embed", "vocab"))  # proj is an output head: AdamW
    if build_another:
      other, other_optimizer = make(("embed", "mlp"))  # proj is hidden: Muon
      step(other, other_optimizer)
    step(model, optimizer)
    step(model, optimizer)
    return np.asarray(model.proj.kernel.value)

  np.testing.assert_array_equal(run(build_another=True), run(build_another=False))


def test_a_model_whose_variables_carry_no_names_reads_no_other_models_names():
  """Model B's variables carry no axis names; model A, built first, has B's
  paths and shapes and names B's proj an output head. B's proj was routed by
  A's names (AdamW), silently: B's own variables say what B names (nothing)."""
  with nnx.use_eager_sharding(False):
    named = _Projected(("embed", "vocab"))
  nnx.Optimizer(named, go.muon(0.02), wrt=nnx.Param)
  plain = _Projected(None)
  routing = {r.path: r.branch for r in gt.describe(go.muon(0.02), nnx.state(plain, nnx.Param))}
  assert routing["['proj']['kernel']"] == "muon"
  state = nnx.Optimizer(plain, go.muon(0.02), wrt=nnx.Param).opt_state
  assert "proj" in state.inner_states["muon"].inner_state[0].mu
  with axis_names.reading(nnx.state(plain, nnx.Param)):  # what a plain tree of B's reads next
    assert _names_now(nnx.to_pure_dict(nnx.state(plain, nnx.Param))) is None


def test_one_optimizer_shared_by_two_models_of_other_names_warns():
  """Its update finds the names by the tree's paths and shapes: two
  nnx.Optimizers sharing it route both models by the latest init's names
  (a named model then stepped as the unnamed one), silently before."""
  tx = go.muon(0.02)
  with nnx.use_eager_sharding(False):
    named = _Projected(("embed", "vocab"))
  plain = _Projected(None)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    nnx.Optimizer(named, tx, wrt=nnx.Param)
    nnx.Optimizer(named, tx, wrt=nnx.Param)  # the same names again: nothing to say
  with pytest.warns(UserWarning, match="one optimizer per model"):
    nnx.Optimizer(plain, tx, wrt=nnx.Param)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    nnx.Optimizer(plain, go.muon(0.02), wrt=nnx.Param)  # its own optimizer


def test_keeps_init_names_reads_no_names_where_init_read_none():
  """A plain tree at init (no names, none met) keeps reading none at update,
  whatever named tree with its paths and shapes is met in between."""
  plain = {"proj": {"kernel": jnp.zeros((16, 40))}}
  seen = []
  probe = optax.GradientTransformation(
      lambda p: seen.append(_names_now(p)) or optax.EmptyState(),
      lambda u, s, p=None: (seen.append(_names_now(u)) or u, s))
  tx = gt.keeps_init_names(probe)
  tx.init(plain)
  with nnx.use_eager_sharding(False):
    named = nnx.state(_Projected(("embed", "vocab")), nnx.Param)
  with axis_names.reading({"proj": {"kernel": named["proj"]["kernel"]}}):
    pass
  tx.update(plain, optax.EmptyState())
  assert seen == [None, None]
  with axis_names.reading(plain):  # outside the transform: the tree met
    assert _names_now(plain) == ("embed", "vocab")


def _names_now(tree):
  with axis_names.reading(tree):
    return axis_names.names_at(jax.tree_util.tree_flatten_with_path(tree)[0][0][0], (16, 40))

def test_a_part_of_a_tree_met_reads_its_names():
  # optax.masked hands its inner transform the leaves it keeps: a part of the
  # tree met reads the names of its leaves; a leaf of another shape or path,
  # or a tree with one, reads none.
  abstract = nnx.state(_nnx_model(_ScannedLM, vocab=23), nnx.Param)
  with axis_names.reading(abstract):
    pass
  plain = jax.tree.map(lambda v: jnp.zeros(v.shape), nnx.to_pure_dict(abstract))
  down = plain["blocks"]["down"]["kernel"]
  key = lambda *keys: tuple(jax.tree_util.DictKey(k) for k in keys)
  kernels = {"blocks": {k: {"kernel": plain["blocks"][k]["kernel"]} for k in ("up", "down")}}
  with axis_names.reading(kernels):
    assert axis_names.names_at(key("blocks", "up", "kernel"), (4, 16, 32)) == (
        "layers", "embed", "mlp")
    assert axis_names.names_at(key("blocks", "down", "kernel"), (4, 32, 16)) == (
        "layers", "mlp", "embed")
  other = {"blocks": {"up": {"kernel": jnp.zeros((4, 16, 33))}, "down": {"kernel": down}}}
  with axis_names.reading(other):
    assert axis_names.names_at(key("blocks", "down", "kernel"), (4, 32, 16)) is None
  with axis_names.reading({"down": {"kernel": down}}):
    assert axis_names.names_at(key("down", "kernel"), (4, 32, 16)) is None


def test_psgd_kron_reads_the_layers_axis_too():
  # PSGD Kron keeps factors per axis, not per matrix: it reads only the
  # batch axes. Through nnx.Optimizer (names at init, plain arrays at the
  # update) every named leaf under 'blocks' (the kernels and the norm scale;
  # nnx.Linear's biases carry no names) has one set of factors per layer and
  # the step a rule giving that axis by hand gives.
  model = _nnx_model(_ScannedLM, vocab=41)
  plain = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  grads = nnx.to_pure_dict(nnx.grad(_loss)(model))
  named = ("['blocks']['up']['kernel']", "['blocks']['down']['kernel']",
           "['blocks']['norm']['scale']")
  layers = lambda path, leaf: (V(tuple(range(1, jnp.ndim(leaf))), (), batch=(0,))
                               if leaf_key(path) in named else None)
  by_hand = go.psgd_kron(1e-2, matrix_view=layers)
  state = by_hand.init(plain)
  expected = by_hand.update(grads, state, plain)[0]
  optimizer = nnx.Optimizer(model, go.psgd_kron(1e-2), wrt=nnx.Param)
  shapes = lambda tree: sorted(jnp.shape(x) for x in jax.tree.leaves(tree))
  assert shapes(optimizer.opt_state) == shapes(state)
  assert (4, 32, 32) in shapes(state) and (4, 16) in shapes(state)  # per layer
  optimizer.update(model, nnx.grad(_loss)(model))
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for x, p, u in zip(jax.tree.leaves(after), jax.tree.leaves(plain),
                     jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(x, p + u, rtol=1e-5, atol=1e-6)


class _MoE(nnx.Module):
  """MaxText's layout: a router (embed, None), experts (exp, embed, mlp) and
  (exp, mlp, embed) under names that do not say "expert"."""

  def __init__(self, rngs):
    self.gate = nnx.Linear(16, 8, kernel_init=_partitioned(("embed", None)), rngs=rngs)
    self.wi = nnx.Param(jax.random.normal(rngs.params(), (8, 16, 32)) * 0.1,
                        out_sharding=("exp", "embed", "mlp"))
    self.wo = nnx.Param(jax.random.normal(rngs.params(), (8, 32, 16)) * 0.1,
                        out_sharding=("exp", "mlp", "embed"))


MOE_BY_HAND = {
    "['gate']['kernel']": (V((0,), (1,)), True),
    "['wi']": (V((1,), (2,), batch=(0,)), True),
    "['wo']": (V((1,), (2,), batch=(0,)), True),
}


def test_moe_expert_stack_is_one_matrix_per_expert_by_its_axis_names():
  model = _nnx_model(_MoE)
  params = nnx.state(model, nnx.Param)
  description = _assert_routed_as_by_hand(params, MOE_BY_HAND)
  assert _table_line(description, "['wi']")[3:5] == ["muon", "8x16x32"]
  assert _table_line(description, "['wo']")[3:5] == ["muon", "8x32x16"]
  view, is_muon = _by_hand(MOE_BY_HAND)
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
  _same_update(go.muon(0.02), go.muon(0.02, matrix_view=view, is_muon_param=is_muon),
               params, grads)


def _logical(names, init=None):
  return nn.with_logical_partitioning(init or nn.initializers.lecun_normal(), names)


class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    h = nn.Dense(32, kernel_init=_logical(("embed", "mlp")))(x)
    return nn.Dense(16, kernel_init=_logical(("mlp", "embed")))(h), None


class _LinenScannedLM(nn.Module):
  """Linen's automatic names; a head called Dense_0 that its 'vocab' axis marks."""

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(50, 16, embedding_init=_logical(("vocab", "embed"),
                                                 nn.initializers.normal()))(tokens)
    x, _ = nn.scan(_LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=3, metadata_params={nn.PARTITION_NAME: "layers"})()(x, None)
    return nn.Dense(50, kernel_init=nn.with_partitioning(
        nn.initializers.lecun_normal(), ("embed", "vocab")))(x)


LINEN_BY_HAND = {
    "['Dense_0']['kernel']": (V((0,), (1,)), False),
    "['Embed_0']['embedding']": (V((0,), (1,)), False),
    "['Scan_LinenBlock_0']['Dense_0']['kernel']": (V((1,), (2,), batch=(0,)), True),
    "['Scan_LinenBlock_0']['Dense_1']['kernel']": (V((1,), (2,), batch=(0,)), True),
}


def _linen_boxed():
  return jax.eval_shape(_LinenScannedLM().init, jax.random.key(0),
                        jnp.zeros((2, 5), jnp.int32))["params"]


def test_linen_boxes_and_nn_scan_route_by_their_axis_names():
  boxed = _linen_boxed()
  description = _assert_routed_as_by_hand(boxed, LINEN_BY_HAND)
  assert _table_line(description, "['Scan_LinenBlock_0']['Dense_1']['kernel']")[3:5] == [
      "muon", "3x32x16"]
  assert _table_line(description, "['Dense_0']['kernel']")[3] == "adam"
  # The boxes reach the optimizer in init and update alike.
  params = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), boxed)
  grads = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size).reshape(x.shape)), params)
  view, is_muon = _by_hand(LINEN_BY_HAND)
  _same_update(go.muon(0.02), go.muon(0.02, matrix_view=view, is_muon_param=is_muon),
               params, grads, nn.unbox(params), nn.unbox(grads))


def test_matrix_view_from_axes_gives_unboxed_parameters_their_names():
  boxed = _linen_boxed()
  rule = gt.matrix_view_from_axes(boxed)
  _assert_routed_as_by_hand(nn.unbox(boxed), LINEN_BY_HAND, matrix_view=rule)
  fused = gt.fused_qkv_matrix_view(rule=rule)
  _assert_routed_as_by_hand(nn.unbox(boxed), LINEN_BY_HAND, matrix_view=fused)
  # Without them the stack is a guess and the head is found by its shape only.
  with pytest.warns(gt.AmbiguousMatrixViewWarning):
    plain = gt.describe(go.muon(0.02), nn.unbox(boxed))
  assert plain["['Scan_LinenBlock_0']['Dense_0']['kernel']"].matrices == (1, 48, 32)


def _boxed(names, shape):
  return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32), names)


def test_names_settle_a_stack_axis_that_is_not_leading():
  # nn.scan(variable_axes={"params": 1}): the layer axis second.
  path = (jax.tree_util.DictKey("w"),)
  rule = gt.matrix_view_from_axes({"w": _boxed(("embed", "layers", "mlp"), (8, 3, 16))})
  assert rule(path, jnp.zeros((8, 3, 16))) == V((0,), (2,), (1,))
  # Names that settle the stack only: the rest by shape, around it.
  rule = gt.matrix_view_from_axes({"w": _boxed((None, "layers", None), (8, 3, 16))})
  assert rule(path, jnp.zeros((8, 3, 16))) == V((0,), (2,), (1,))
  # Another shape at that path is not the named leaf.
  with pytest.warns(gt.AmbiguousMatrixViewWarning):
    assert rule(path, jnp.zeros((3, 8, 16))) == V((0, 1), (2,))


def test_a_vocabulary_axis_outranks_names_and_shapes():
  # A kernel named like a hidden layer whose last axis is the vocabulary is a
  # head; a table named "proj" whose first axis is the vocabulary is an embedding.
  boxed = {"proj": _boxed(("vocab", "embed"), (40, 8)),
           "hidden": _boxed(("embed", "vocab"), (8, 40)),
           "mlp": {"kernel": jax.ShapeDtypeStruct((8, 8), jnp.float32)}}
  tx = go.muon(0.02, embedding_learning_rate=0.1)
  branches = {r.path: r.branch for r in gt.describe(tx, boxed)}
  assert branches == {"['hidden']": "adam", "['mlp']['kernel']": "muon",
                      "['proj']": "embedding"}


def test_the_docstring_example_runs():
  result = doctest.testmod(axis_names, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted and not result.failed


def test_optax_transforms_keep_the_names_of_variables():
  # scale_by_adam's moments are variables too: names reach every transform.
  model = _nnx_model(_MoE)
  mu = optax.scale_by_adam().init(nnx.state(model, nnx.Param)).mu
  assert axis_names.axis_names_of(mu)["['wi']"] == ((8, 16, 32), ("exp", "embed", "mlp"))


def test_adam_mini_gives_each_layer_of_a_stacked_norm_scale_its_block():
  """A norm scale stacked by ``nnx.vmap`` (layers, norm) is one block per
  layer, as the unstacked model's scale is one block, not one across layers."""
  params = nnx.state(_nnx_model(_ScannedLM), nnx.Param)
  rows = {r.path: r for r in gt.describe(go.adam_mini(1e-3), params)}
  assert "4 blocks of 16" in str(rows["['blocks']['norm']['scale']"])


class _Stacked(nnx.Module):
  """A (4, 16, 40) parameter with ``names`` (a scanned stack, or not)."""

  def __init__(self, names):
    self.w = nnx.Param(jnp.linspace(-1.0, 1.0, 4 * 16 * 40).reshape(4, 16, 40),
                       sharding_names=names)


@pytest.mark.parametrize("make", [lambda: go.soap(1e-2, precondition_every=1),
                                  lambda: go.shampoo(1e-2), lambda: go.psgd_kron(1e-2)],
                         ids=["soap", "shampoo_grafted", "psgd_kron"])
def test_another_model_leaves_the_stacked_views_of_an_optimizer(make):
  """The same for the transforms that read stacked views (SOAP's statistics,
  Shampoo's grafting blocks): a second model naming the axes otherwise made
  SOAP refuse its state and Shampoo's grafting norms differ, silently."""
  loss = lambda m: jnp.sum(jnp.sin(m.w.value))

  def run(build_another):
    with nnx.use_eager_sharding(False):
      model = _Stacked(("layers", "embed", "mlp"))
    optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)
    if build_another:
      with nnx.use_eager_sharding(False):
        other = _Stacked(("embed", "heads", "kv"))
      nnx.Optimizer(other, make(), wrt=nnx.Param)
    for _ in range(2):
      optimizer.update(model, nnx.grad(loss)(model))
    return np.asarray(model.w.value)

  np.testing.assert_array_equal(run(build_another=True), run(build_another=False))


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap", "psgd_kron", "dion"])
def test_optimizers_that_keep_init_names_ship_with_cloudpickle(name):
  """Ray, submitit and joblib ship an optimizer with cloudpickle, which could
  not copy the ContextVars keeps_init_names' closures referred to."""
  import cloudpickle

  params = {"embed": jnp.ones((50, 16)), "b": jnp.zeros(64),
            "h": {"kernel": jnp.linspace(0.0, 1.0, 1024).reshape(16, 64)}}
  tx = getattr(go, name)(1e-2)
  shipped = cloudpickle.loads(cloudpickle.dumps(tx))
  ours = tx.update(params, tx.init(params), params)[0]
  theirs = shipped.update(params, shipped.init(params), params)[0]
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_keeps_init_names_refuses_unknown_keywords_of_a_plain_transform():
  tx = gt.keeps_init_names(optax.scale(2.0))
  with pytest.raises(TypeError, match="bogus"):
    tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.ones(3)}), bogus=1)


def test_names_one_short_of_a_stacked_leaf_say_what_stacked_it():
  """nnx.vmap without transform_metadata keeps a layer's two names on its
  stacked (layers, embed, mlp) kernel: the names were dropped silently and
  the warning that followed told the user to add the names they had."""

  class Block(nnx.Module):
    def __init__(self, rngs):
      init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
      self.lin = nnx.Linear(8, 16, kernel_init=init, rngs=rngs)

  with nnx.use_eager_sharding(False):
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return Block(rngs)

    model = create(nnx.Rngs(0))
  with pytest.warns(UserWarning, match=r"\('embed', 'mlp'\), one fewer than its axes.*"
                                        r"transform_metadata=\{nnx.PARTITION_NAME: 'layers'\}"):
    gt.describe(go.muon(0.02), nnx.state(model, nnx.Param))
