"""The reports the transforms make to gradtx.describe (gradtx/_internal/routing.py)."""

import jax
import jax.numpy as jnp
from flax import nnx

from gradtx._internal import routing


def test_reports_outside_a_recording_are_dropped_and_inside_are_kept():
  tree = {"w": jnp.zeros((2, 3))}
  routing.report_per_leaf(tree, "roles", ["diagonal"])  # no recording: nothing to keep
  with routing.recording() as recorder:
    routing.report_per_leaf(tree, "roles", ["diagonal"])
    routing.report_per_leaf(tree, "roles", ["diagonal"])  # the same report once
    routing.report_per_leaf(tree, "views", [None])  # None: nothing to report
  assert recorder.leaves["['w']"].roles == ["diagonal"]
  assert recorder.leaves["['w']"].views == []
  with routing.recording() as fresh:
    pass
  assert not fresh.leaves


def test_stack_bytes_count_at_init_only():
  path = (jax.tree_util.DictKey("w"),)
  with routing.recording() as recorder:
    routing.report_stack_bytes([path], [96])
    recorder.phase = routing.UPDATE
    routing.report_stack_bytes([path], [96])  # e.g. a wrapper re-initialising in update
  assert recorder.leaves["['w']"].stack_bytes == 96


def test_a_leaf_has_one_key_in_nnx_variables_and_plain_arrays():
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  plain = jax.tree.map(lambda x: x, {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)})
  keys = lambda tree: sorted(
      routing.leaf_key(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0])
  nnx_keys, plain_keys = keys(state), keys(plain)
  assert nnx_keys == plain_keys == ["['bias']", "['kernel']"]
