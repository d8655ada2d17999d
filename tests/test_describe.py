"""gradtx.describe (gradtx/describe.py): routing, views, blocks and state per leaf,
read from the optimizer, checked against routing written out by hand on real
Flax modules (Linen with automatic names, an NNX scanned stack, an expert stack)."""

import doctest
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradtx.describe
from gradtx import contrib
from gradtx import optimizers as go
from gradtx import transforms as gt
from gradtx._internal.routing import leaf_key
from gradtx.routing import matrix_view
from tests.support.cases import CASES, STRUCTURED

V = gt.MatrixView
F32 = 4


def _nbytes(tree):
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _routing(description):
  return {r.path: (r.branch, r.matrices) for r in description}


class _LinenLM(nn.Module):
  """Linen names its layers itself: Embed_0, Dense_0, Dense_1, Dense_2 (the head)."""

  @nn.compact
  def __call__(self, tokens):
    h = nn.Embed(40, 16)(tokens)
    h = nn.Dense(16)(nn.relu(nn.Dense(32)(h)))
    return nn.Dense(40)(h)


def _linen_params():
  return jax.eval_shape(_LinenLM().init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


P = "['params']"
LINEN_BY_HAND = {  # path: (label, matrices) with the vocabulary head on AdamW
    f"{P}['Dense_0']['kernel']": ("matrix", (1, 32, 16)),  # Dense(16), built first
    f"{P}['Dense_1']['kernel']": ("matrix", (1, 16, 32)),
    f"{P}['Dense_2']['kernel']": ("adam", None),
    f"{P}['Embed_0']['embedding']": ("embedding", None),
    **{f"{P}['Dense_{i}']['bias']": ("adam", None) for i in range(3)},
}


@pytest.mark.parametrize("factory, matrix, embedding", [
    (go.muon, "muon", "adam"), (contrib.adamuon_lm, "adamuon", "embedding"),
], ids=["muon", "adamuon_lm"])
def test_linen_auto_named_lm_routes_its_head_to_adamw(factory, matrix, embedding):
  params = _linen_params()
  names = {"matrix": matrix, "embedding": embedding}
  expected = {p: (names.get(label, label), m) for p, (label, m) in LINEN_BY_HAND.items()}
  default = gt.describe(factory(0.02), params)
  assert _routing(default) == expected
  hidden = {p for p, (label, _) in LINEN_BY_HAND.items() if label == "matrix"}
  explicit = gt.describe(factory(0.02, is_muon_param=lambda path, _: leaf_key(path) in hidden),
                         params)
  assert _routing(explicit) == _routing(default)
  assert "Dense_2" in str(default) and matrix in str(default)


@pytest.mark.parametrize("factory, hidden", [(go.muonh, "muonh"), (go.adamh, "adamh")])
def test_hyperball_finds_the_linen_head_by_its_shape(factory, hidden):
  """Marin's routing on Linen's names: the head Dense_2 (16, 40), beside the
  (40, 16) Embed_0, takes AdamH's step (MuonH: not Newton-Schulz), the
  embedding and biases AdamW."""
  branch = {"matrix": hidden, "adam": "output_head"}
  expected = {p: (branch[label], m or (1, 16, 40)) if "kernel" in p else (label, m)
              for p, (label, m) in LINEN_BY_HAND.items()}
  expected[f"{P}['Embed_0']['embedding']"] = ("adam", None)
  assert _routing(gt.describe(factory(0.02), _linen_params())) == expected


def test_state_bytes_are_each_leafs_own_and_add_up_to_the_state():
  params = _linen_params()
  description = gt.describe(go.muon(0.02), params)
  for row in description:
    size = math.prod(row.shape) * F32
    # Muon keeps one momentum per matrix, AdamW two moments per leaf.
    assert row.state_bytes == (size if row.branch == "muon" else 2 * size), row.path
  state = jax.eval_shape(go.muon(0.02).init, params)
  assert description.state_bytes == _nbytes(state)
  assert 0 < description.shared_bytes < 100  # the step counts


@pytest.mark.parametrize("case", CASES + STRUCTURED, ids=lambda c: c.name)
def test_every_optimizer_is_described_leaf_by_leaf(case):
  """One row per parameter leaf, each on a named branch; the rows' state
  bytes plus the shared state's are the whole state's, for every optimizer
  of the batteries (tests/support/cases.py)."""
  params = _linen_params()
  description = gt.describe(case.make(), params)
  assert [r.path for r in description] == [
      jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert all(r.branch for r in description), case.name
  state = jax.eval_shape(case.make().init, params)
  assert description.state_bytes == _nbytes(state), case.name
  assert sum(r.state_bytes for r in description) + description.shared_bytes == _nbytes(state)


@pytest.mark.parametrize("wrap, extra", [
    (lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx), 0),
    (lambda tx: optax.MultiSteps(tx, every_k_schedule=2), 1),  # the gradient accumulator
    (lambda tx: go.lookahead(tx), 1),  # the slow weights
    (lambda tx: go.parameter_ema(tx, decay=0.9), 1),  # the average
    (lambda tx: go.sam(tx), None),  # update(..., grad_fn=) below
    (lambda tx: optax.masked(tx, lambda p: jax.tree.map(lambda _: True, p)), 0),
], ids=["chain", "multi_steps", "lookahead", "parameter_ema", "sam", "masked"])
def test_wrappers_keep_the_routing_and_add_their_own_state(wrap, extra):
  params = _linen_params()
  bare = gt.describe(go.muon(0.02), params)
  wrapped = gt.describe(wrap(go.muon(0.02)), params, grad_fn=lambda p: p)
  assert _routing(wrapped) == _routing(bare)
  assert not wrapped.notes
  for b, w in zip(bare, wrapped):
    if extra is not None:
      assert w.state_bytes == b.state_bytes + extra * math.prod(b.shape) * F32, b.path
  state = jax.eval_shape(wrap(go.muon(0.02)).init, params)
  assert wrapped.state_bytes == _nbytes(state)


def test_leaves_optax_masked_leaves_out_are_shown_unchanged():
  """optax.masked passes the masked-out leaves' gradients through untouched
  (no learning rate): describe called them Muon's ``adam`` branch."""
  params = {"hidden": {"kernel": jax.ShapeDtypeStruct((16, 32), jnp.float32)},
            "out": {"kernel": jax.ShapeDtypeStruct((32, 16), jnp.float32),
                    "bias": jax.ShapeDtypeStruct((16,), jnp.float32)}}
  mask = {"hidden": {"kernel": True}, "out": {"kernel": False, "bias": False}}
  for tx, kept in [(go.muon(0.02), "muon"), (go.adamw(1e-3), "element-wise")]:
    branches = {r.path: r.branch for r in gt.describe(optax.masked(tx, mask), params)}
    assert branches == {"['hidden']['kernel']": kept, "['out']['bias']": "unchanged",
                        "['out']['kernel']": "unchanged"}
    grads = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)
    masked = optax.masked(tx, mask)
    updates, _ = masked.update(grads, masked.init(grads), grads)
    assert bool(jnp.all(updates["out"]["kernel"] == 1.0))  # the gradient itself
  # A lone transform's untouched leaves (Newton-Schulz passes 1-D through);
  # a learning rate on them is not "unchanged".
  lone = {r.path: r.branch for r in gt.describe(gt.orthogonalize_newton_schulz(), params)}
  assert lone["['out']['bias']"] == "unchanged" and lone["['out']['kernel']"] == "matrix"
  assert "unchanged" not in {r.branch for r in gt.describe(go.muon(0.02), params)}


@pytest.mark.parametrize("factory", [
    lambda: go.sgd(1e-2, momentum=0.9), lambda: go.adamw(1e-2), lambda: go.muon(1e-2),
    lambda: go.shampoo(1e-2), lambda: go.lamb(1e-2), lambda: go.soap(1e-2)],
    ids=["sgd", "adamw", "muon", "shampoo", "lamb", "soap"])
def test_a_tuple_of_parameters_reads_as_the_same_list(factory):
  """A chain's state is a tuple of its transforms' states: with as many
  parameters in a tuple it was read as theirs (all of AdamW's state on the
  first leaf; Muon's head on its matrix branch)."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  for leaves in [(s(6, 5), s(5)), (s(6, 5), s(5, 4), s(5)), (s(6, 5), s(5, 4), s(4, 3), s(3))]:
    as_tuple = [(r.branch, r.state_bytes) for r in gt.describe(factory(), leaves)]
    as_list = [(r.branch, r.state_bytes) for r in gt.describe(factory(), list(leaves))]
    assert as_tuple == as_list, len(leaves)
    assert sum(b for _, b in as_tuple) > 0


@pytest.mark.parametrize("wrap", [lambda x: x, lambda x: nn.Partitioned(x, ("a", "b")),
                                  lambda x: nnx.Param(x)], ids=["array", "linen_box", "nnx_param"])
@pytest.mark.parametrize("factory, branch", [
    (lambda: go.muon(1e-2), "muon"), (lambda: go.dion(1e-2), "dion"),
    (lambda: go.adamw(1e-2), "element-wise"), (lambda: go.psgd_kron(1e-2), None),
    (lambda: go.shampoo(1e-2), "matrix")],
    ids=["muon", "dion", "adamw", "psgd_kron", "shampoo"])
def test_a_single_array_reads_as_the_one_leaf_of_a_dict(factory, branch, wrap):
  """A bare array's structure matches any node of the state: Muon's whole
  chain was read as its moment and the leaf described as ``adam``, while
  the update was Muon's (also for one Linen box or NNX variable, whose
  unwrapped structure is one leaf); Shampoo's stacks were counted twice. All
  of its state is the leaf's."""
  x = wrap(jnp.zeros((64, 32)))
  described = gt.describe(factory(), x)
  (bare,) = described
  (named,) = gt.describe(factory(), {"w": x})
  assert bare.branch == named.branch
  assert branch is None or bare.branch == branch
  state = factory().init(x)
  assert bare.state_bytes == sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  assert described.shared_bytes == 0


def test_a_chain_without_step_counts_and_a_tree_with_an_integer_leaf_read_per_leaf():
  """The chain test looks for a moment laid out like the parameters: a
  momentum chain (no step count) on a 2-tuple was read as the leaves'; a
  0-d integer parameter made every leaf's bytes shared."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  momentum = [(r.path, r.state_bytes) for r in gt.describe(
      optax.sgd(0.1, momentum=0.9), (s(16, 32), s(32)))]
  assert momentum == [("[0]", 2048), ("[1]", 128)]
  params = {"w": s(16, 32), "b": s(32), "n": jax.ShapeDtypeStruct((), jnp.int32)}
  described = gt.describe(optax.adam(1e-3), params)
  assert {r.path: r.state_bytes for r in described} == {
      "['b']": 256, "['n']": 8, "['w']": 4096}


def test_inject_hyperparams_keeps_the_routing():
  params = _linen_params()
  injected = optax.inject_hyperparams(go.muon)(learning_rate=0.02)
  assert _routing(gt.describe(injected, params)) == _routing(gt.describe(go.muon(0.02), params))


class _Block(nnx.Module):
  def __init__(self, rngs):
    self.mlp = nnx.Linear(8, 8, rngs=rngs)


class _Scanned(nnx.Module):
  """Four identical blocks stacked by nnx.vmap, between ordinary layers."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(40, 8, rngs=rngs)

    @nnx.split_rngs(splits=4)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs):
      return _Block(rngs)

    self.layers = blocks(rngs)
    self.proj = nnx.Linear(8, 12, rngs=rngs)
    self.unembed = nnx.Linear(12, 40, rngs=rngs)


SCANNED_BY_HAND = {  # path: (view, goes to Muon)
    "['embed']['embedding']": (V((0,), (1,)), False),
    "['layers']['mlp']['kernel']": (V((1,), (2,), batch=(0,)), True),
    "['proj']['kernel']": (V((0,), (1,)), True),
    "['unembed']['kernel']": (V((0,), (1,)), False),
}


def _by_hand(table):
  views = {path: view for path, (view, _) in table.items()}
  muon = {path for path, (_, on) in table.items() if on}
  return (lambda path, leaf: views.get(leaf_key(path)),
          lambda path, leaf: leaf_key(path) in muon)


def _same_first_update(a, b, params):
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * jnp.arange(p.size).reshape(p.shape)), params)

  @jax.jit  # one program for both
  def both(grads, params):
    return (a.update(grads, a.init(params), params)[0],
            b.update(grads, b.init(params), params)[0])

  ua, ub = both(grads, params)
  for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_nnx_scanned_stack_default_routing_equals_the_rules_by_hand():
  params = nnx.state(_Scanned(nnx.Rngs(0)), nnx.Param)
  default = go.muon(0.02, matrix_view=gt.stacked_matrix_view())
  view, is_muon = _by_hand(SCANNED_BY_HAND)
  explicit = go.muon(0.02, matrix_view=view, is_muon_param=is_muon)
  description = gt.describe(default, params)
  assert _routing(description) == _routing(gt.describe(explicit, params))
  assert description["layers']['mlp']['kernel"].matrices == (4, 8, 8)
  assert description["['proj']['kernel']"].matrices == (1, 8, 12)  # not taken away
  assert {r.path for r in description if r.branch == "muon"} == {
      p for p, (_, on) in SCANNED_BY_HAND.items() if on}
  _same_first_update(default, explicit, params)
  # Abstract parameters describe the same way.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  assert tuple(gt.describe(default, abstract)) == tuple(description)


def test_an_undeclared_stack_is_listed_as_a_guess_and_strict_refuses_it(monkeypatch):
  monkeypatch.setattr(matrix_view, "_WARNED", set())
  params = nnx.state(_Scanned(nnx.Rngs(0)), nnx.Param)
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match="layers"):
    description = gt.describe(go.muon(0.02), params)
  assert description["mlp']['kernel"].matrices == (1, 32, 8)
  assert list(description.ambiguous) == ["['layers']['mlp']['kernel']"]
  assert "guessed view" in str(description)
  with pytest.raises(ValueError, match="stacked_matrix_view"):
    gt.describe(go.muon(0.02), params, strict=True)


class _MoE(nnx.Module):
  def __init__(self, rngs):
    self.router = nnx.Linear(16, 8, rngs=rngs)
    self.experts = nnx.Param(jax.random.normal(rngs.params(), (8, 16, 32)) * 0.1)
    self.norm = nnx.RMSNorm(16, rngs=rngs)


def test_moe_expert_stack_is_one_matrix_per_expert_by_default():
  params = nnx.state(_MoE(nnx.Rngs(0)), nnx.Param)
  by_hand = {"['experts']": (V((1,), (2,), batch=(0,)), True),
             "['router']['kernel']": (V((0,), (1,)), True)}
  view, is_muon = _by_hand(by_hand)
  default, explicit = go.muon(0.02), go.muon(0.02, matrix_view=view, is_muon_param=is_muon)
  description = gt.describe(default, params)
  assert _routing(description) == _routing(gt.describe(explicit, params))
  assert description["['experts']"].matrices == (8, 16, 32)
  assert description["['experts']"].branch == "muon"
  assert description["['norm']['scale']"].branch == "adam"
  assert not description.ambiguous
  _same_first_update(default, explicit, params)


def test_kronecker_blocks_diagonal_fallback_and_stacked_state():
  params = {"w": jax.ShapeDtypeStruct((24, 8), jnp.float32),
            "b": jax.ShapeDtypeStruct((8,), jnp.float32)}
  description = gt.describe(gt.kronecker_precondition(block_size=8), params)
  w, b = description["['w']"], description["['b']"]
  assert (w.branch, b.branch) == ("matrix", "diagonal")
  assert (w.blocks.row_blocks, w.blocks.col_blocks, w.blocks.block_rows) == (3, 1, 8)
  # Three 8x8 blocks, each with L and R statistics and roots.
  assert w.state_bytes == 3 * 2 * (8 * 8 + 8 * 8) * F32
  assert b.state_bytes == 8 * F32
  assert "3x1 of 8x8" in str(description)


def test_soap_muon_stacks_are_its_matrix_leaves_state():
  params = _linen_params()
  description = gt.describe(go.soap_muon(0.02), params)
  hidden = [r for r in description if r.branch == "soap_muon"]
  assert {r.path for r in hidden} == {p for p, (label, _) in LINEN_BY_HAND.items()
                                      if label == "matrix"}
  assert all(r.state_bytes > 0 for r in hidden)
  assert description.state_bytes == _nbytes(jax.eval_shape(go.soap_muon(0.02).init, params))


def test_kfac_roles_and_an_update_that_needs_records():
  params = {"dense": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32),
                      "bias": jax.ShapeDtypeStruct((2,), jnp.float32)},
            "norm": {"scale": jax.ShapeDtypeStruct((2,), jnp.float32)}}
  description = gt.describe(gt.kfac_precondition(damping=1.0), params)
  assert [r.branch for r in description] == ["dense bias", "dense", "diagonal"]
  # A (fan_in + 1 for the bias) and G, and their inverses; the bias shares them.
  assert description["kernel"].state_bytes == 2 * (4 * 4 + 2 * 2) * F32
  assert description["bias"].state_bytes == 0
  assert description["scale"].state_bytes == 2 * F32
  assert any("records" in note for note in description.notes)



def test_psgd_kron_shows_each_axis_factor_and_adam_mini_its_blocks():
  params = {"w": jax.ShapeDtypeStruct((16, 300), jnp.float32),
            "b": jax.ShapeDtypeStruct((16,), jnp.float32)}
  kron = gt.describe(go.psgd_kron(1e-3, max_size_triangular=256), params)
  assert kron["['w']"].branch == "kron 16x300 (tri, diag)"  # 300 > max_size_triangular
  assert kron["['b']"].branch == "kron 16 (diag)"
  assert kron["['w']"].state_bytes == (16 * 16 + 300 + 16 * 300) * F32  # Q's and momentum
  mini = gt.describe(go.adam_mini(1e-3, num_heads=4), params)
  # A hidden matrix: one block per output neuron; a vector: one block.
  assert (mini["['w']"].branch, mini["['b']"].branch) == ("300 blocks of 16", "1 block of 16")
  assert mini["['w']"].state_bytes == (16 * 300 + 300) * F32

def test_the_docstring_example_runs():
  result = doctest.testmod(gradtx.describe, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted and not result.failed


class _LinenScanned(nn.Module):
  """Three scanned Linen layers whose kernels carry logical axis names."""

  @nn.compact
  def __call__(self, h):
    class Block(nn.Module):
      @nn.compact
      def __call__(self, h, _):
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        return h + nn.Dense(16, kernel_init=init)(h), None

    scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=3, metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned()(h, None)[0]


@pytest.mark.parametrize("factory", [go.muon, go.soap, go.psgd_kron])
def test_a_look_changes_no_training(factory):
  """A state built from the unboxed parameters (a TrainState's) fits the
  updates after ``describe`` has read the boxed ones, which give the same
  leaves three 16x16 matrices where the plain arrays are one 48x16: the look
  leaves no names behind, and its notes say how training would see them."""
  boxed = _LinenScanned().init(jax.random.key(0), jnp.ones((2, 16)))["params"]
  params = nn.unbox(boxed)
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                       params)
  tx = factory(0.01)
  state = tx.init(params)
  before, _ = tx.update(grads, state, params)
  description = gt.describe(tx, boxed)
  assert any("matrix_view_from_axes" in note for note in description.notes)
  after, _ = tx.update(grads, state, params)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(x, y)
  key = "['ScanBlock_0']['Dense_0']['kernel']"
  named, plain = description[key], gt.describe(tx, params)[key]
  assert (named.branch, named.matrices) != (plain.branch, plain.matrices)
  assert "3 entries" in named.branch or named.matrices == (3, 16, 16)


def test_adafactors_factored_leaves_say_over_which_axes():
  """Adafactor factors the second moment over the two largest axes (optax's
  rule, so an attention kernel's d × head_dim with heads a batch): describe
  names the two sizes; an unfactored leaf stays element-wise."""
  params = {"q": jnp.zeros((256, 4, 128)), "w": jnp.zeros((256, 512)), "b": jnp.zeros(512)}
  rows = {r.path: r.branch for r in gt.describe(go.adafactor(), params)}
  state = go.adafactor().init(params)
  assert rows == {"['q']": "factored 128x256", "['w']": "factored 256x512",
                  "['b']": "element-wise"}
  factored = next(s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "nu_row"))
                  if hasattr(s, "nu_row"))
  assert {factored.nu_row["q"].shape, factored.nu_col["q"].shape} == {(256, 4), (4, 128)}


def test_arguments_in_the_wrong_order_or_a_model_are_refused_by_name():
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  with pytest.raises(TypeError, match="tx must be an optax.GradientTransformation, got State"):
    gt.describe(params, go.muon(0.02))
  with pytest.raises(TypeError, match=r"nnx.Linear itself .* nnx.state\(model, nnx.Param\)"):
    gt.describe(go.muon(0.02), model)
  optimizer = nnx.Optimizer(model, go.muon(0.02), wrt=nnx.Param)
  with pytest.raises(TypeError, match="nnx.Optimizer itself"):
    gt.describe(go.muon(0.02), optimizer)
