"""model_records: record keys from parameter paths, the containers as pytrees, the error."""

import jax
import jax.numpy as jnp
import pytest

from gradtx import transforms as gt
from gradtx.flax_integration import model_records


def _path(tree, leaf_name):
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jax.tree_util.keystr(path).endswith(f"['{leaf_name}']"):
      return path
  raise KeyError(leaf_name)


def test_leaf_paths_split_into_module_key_and_leaf_name():
  params = {"blocks": [{"qkv": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}]}
  assert model_records.split_leaf_path(_path(params, "kernel")) == ("blocks/0/qkv", "kernel")
  assert model_records.split_leaf_path(_path(params, "bias")) == ("blocks/0/qkv", "bias")
  assert model_records.split_leaf_path(()) == ("", None)
  assert model_records.module_key(["blocks", 0, "qkv"]) == "blocks/0/qkv"


def test_flax_nnx_value_is_not_a_name():
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  keys = {model_records.split_leaf_path(path)
          for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
  assert keys == {("", "kernel"), ("", "bias")}


def test_records_are_pytrees_that_jit_and_map():
  records = gt.Records({"d": gt.DenseRecord(jnp.ones((4, 3)), jnp.ones((4, 2)))},
                       {"attn": jnp.ones(2)})
  doubled = jax.jit(lambda r: jax.tree.map(lambda x: 2 * x, r))(records)
  assert isinstance(doubled, gt.Records)
  assert float(doubled.dense["d"].inputs[0, 0]) == 2.0
  assert model_records.empty_records() == gt.Records({}, {})


def test_missing_record_error_names_leaf_and_remedy():
  error = model_records.missing_record_error("dense", None, "['d']['kernel']", "kfac")
  assert "no records were passed" in str(error) and "value_grad_and_records" in str(error)
  error = model_records.missing_record_error("dense", "d", "['d']['kernel']", "kfac")
  assert "no dense entry 'd'" in str(error)
