"""The parameter-name lists and predicates in gradtx/_internal/names.py."""

import jax
import pytest
from flax import nnx

from gradtx._internal import names as _names


def _path(tree):
  """The key path of the one leaf of ``tree``."""
  ((path, _),) = jax.tree_util.tree_flatten_with_path(tree)[0]
  return path


@pytest.mark.parametrize("tree", [
    {"Block0": {"QKV": {"kernel": 0}}},
    {"block0/qkv/kernel": 0},
    {"block0.qkv": {"kernel": 0}},
], ids=["nested", "slashes", "dots"])
def test_path_names_are_lower_cased_and_split(tree):
  assert _names.path_names(_path(tree)) == ["block0", "qkv", "kernel"]


def test_path_names_of_attributes_indices_and_nnx_variables():
  assert _names.path_names(_path([{"w": 0}])) == ["0", "w"]
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  # The trailing ".value" of an nnx variable is dropped: the last name is the leaf's.
  assert sorted(_names.path_names(p) for p in paths) == [["bias"], ["kernel"]]
  assert _names.path_names(()) == []


@pytest.mark.parametrize("names, head, embedding", [
    (["lm_head", "kernel"], True, False),
    (["head", "kernel"], True, False),
    (["unembed", "kernel"], True, False),  # contains "embed", but is a head
    (["readout", "w"], True, False),
    (["classifier", "kernel"], True, False),  # a class-logit head (HF, the suite's ViT)
    (["embed", "embedding"], False, True),
    (["wte"], False, True),
    (["wpe"], False, True),
    (["position_embedding"], False, True),
    (["mlp", "dense", "kernel"], False, False),
    (["qa_outputs", "kernel"], True, False),  # HF's question-answering head
    (["classificationhead_0", "dense_0", "kernel"], True, False),
    # An attention head written as a module (nanoGPT's lecture code's Head):
    # its projections are hidden matrices; what else it holds is a head's.
    (["block_0", "multiheadattention_0", "head_0", "key", "kernel"], False, False),
    (["block_0", "multiheadattention_0", "head_0", "query", "kernel"], False, False),
    (["head_0", "dense_0", "kernel"], True, False),
    (["maphead_0", "multiheaddotproductattention_0", "query", "kernel"], False, False),
    # Outside an attention module a head's layers stay the head's, whatever
    # their names: an actor-critic's value output, a gated head, a router.
    (["head", "value", "kernel"], True, False),
    (["classifier", "keypoints", "kernel"], True, False),
    (["lm_head", "gate_proj", "kernel"], True, False),
    (["lm_head", "router", "kernel"], True, False),
])
def test_output_heads_and_embeddings(names, head, embedding):
  assert _names.is_output_head(names) == head
  assert _names.is_embedding(names) == embedding


@pytest.mark.parametrize("names, expected", [
    (["attn", "q", "kernel"], True),
    (["wk"], True),
    (["layer", "q_proj", "kernel"], True),
    (["c_attn", "w"], True),
    (["self_attn", "in_proj_weight"], True),
    (["attention", "query", "kernel"], True),
    (["v_proj", "kernel"], False),
    (["quantity"], False),  # "q" is an exact name, not a part
])
def test_query_key_projections(names, expected):
  assert _names.is_query_key(names) == expected


@pytest.mark.parametrize("names, expected", [
    (["dense", "bias"], True),
    (["norm", "scale"], True),
    (["ln1_bias"], True),
    (["bias_layer", "kernel"], False),  # only the leaf's own name counts
    (["kernel"], False),
    ([], False),
])
def test_vectors_are_named_by_their_last_name(names, expected):
  assert _names.is_vector(names) == expected


def test_heads_by_shape_needs_a_non_square_token_table():
  table, head, hidden = (["embed_0", "embedding"], (40, 16)), (["dense_2", "kernel"], (16, 40)), (
      ["dense_0", "kernel"], (16, 32))
  positions = (["pos"], (40, 16))
  assert _names.heads_by_shape([table, head, hidden]) == [False, True, False]
  # A learned position table of the same shape names no vocabulary.
  assert _names.heads_by_shape([positions, head]) == [False, False]
  square = (["embed", "embedding"], (16, 16))
  assert _names.heads_by_shape([square, (["dense", "kernel"], (16, 16))]) == [False, False]
  assert _names.is_embedding(["pos"]) and not _names.is_embedding(["transpose"])


def test_heads_by_shape_takes_the_tables_it_is_given():
  # A table its axis names mark (vocab, embed), whatever it is called.
  table, head = (["tok", "weight"], (40, 16)), (["dense_2", "kernel"], (16, 40))
  assert _names.heads_by_shape([table, head]) == [False, False]
  assert _names.heads_by_shape([table, head], [True, False]) == [False, True]
