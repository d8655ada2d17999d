"""benchmarks.revisions: the library at another revision, next to the working tree's."""

import inspect
import pathlib
import warnings

import pytest

from benchmarks import revisions
from benchmarks.harness import ROOT
from gradtx import optimizers as go


def _defined_under(fn) -> pathlib.Path:
  return pathlib.Path(inspect.getfile(fn)).resolve()


def test_forwarded_names_stay_the_revisions():
  # go.adamuon_lm is forwarded to gradtx.contrib on first use: a revision's
  # must be that revision's code, not the working tree's.
  old_gt, old_go = revisions.at_revision("HEAD")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    current = go.adamuon_lm
  assert ROOT.resolve() not in _defined_under(old_go.adamuon_lm).parents
  assert ROOT.resolve() in _defined_under(current).parents
  assert ROOT.resolve() not in _defined_under(old_go.muon).parents
  assert ROOT.resolve() not in _defined_under(old_gt.scale_by_adam).parents


def test_an_unknown_revision_is_named_with_gits_message():
  with pytest.raises(ValueError, match="revision 'no-such-rev': git ls-tree failed: .*no-such-rev"):
    revisions.at_revision("no-such-rev")


def test_imports_made_at_call_time_are_the_revisions():
  """The revision's validate imports its storage module inside a function:
  resolved to the working tree's, its isinstance check did not know the
  revision's QuantizedArray and refused the revision's own 8-bit state."""
  import jax
  import jax.numpy as jnp

  _, old_go = revisions.at_revision("HEAD")
  tx = old_go.adamw_8bit(1e-3)
  params = {"w": jnp.ones((64, 64)), "b": jnp.ones(64)}
  updates, _ = jax.eval_shape(tx.update, params, tx.init(params), params)
  assert jax.tree.map(lambda x: x.shape, updates) == {"w": (64, 64), "b": (64,)}
  assert ROOT.resolve() not in _defined_under(
      type(tx.init(params)[0].nu["w"]).dequantize).parents
