"""benchmarks.compile_time: compile seconds against the number of layers."""

import os

import jax
import pytest

from benchmarks import compile_time


def test_layered_tree_holds_four_kernels_per_layer_and_optional_biases():
  tree = compile_time.layered_tree(3, 8)
  kernels = compile_time.layered_tree(3, 8, biases=False)
  assert len(jax.tree.leaves(tree)) == 24 and len(jax.tree.leaves(kernels)) == 12
  assert all(leaf.ndim == 2 for leaf in jax.tree.leaves(kernels))


def test_table_gives_ratios_growth_and_cost_per_added_matrix():
  # Made-up figures: the table's arithmetic, checked by hand (nothing is timed).
  figures = {"anchor": {1: 1.0, 3: 2.0}, "other": {1: 2.0, 3: 6.0}}
  text = compile_time.table(figures, [1, 3], "anchor")
  row = next(line for line in text.splitlines() if line.startswith("| other"))
  # 2.0 s at 4 matrices (2x the anchor), 6.0 s at 12 (3x), growth 3x,
  # (6 - 2) s over 8 added matrices: 500 ms each.
  assert [c.strip() for c in row.strip("|").split("|")] == [
      "other", "2.00", "2.00x", "6.00", "3.00x", "3.00x", "500.0"]


def test_transforms_mode_compiles_every_matrix_transform(capsys):
  compile_time.main(["--transforms", "--layers", "1", "2", "--d", "8"])
  out = capsys.readouterr().out
  for name in compile_time.TRANSFORMS:
    assert f"| {name} |" in out
  assert "ms per added matrix" in out


def test_transforms_mode_refuses_the_optimizer_only_options():
  with pytest.raises(SystemExit):
    compile_time.main(["--transforms", "--against", "HEAD"])


def test_scanned_tree_holds_one_stacked_leaf_per_kernel_and_bias():
  tree = compile_time.layered_tree(3, 8, scanned=True)
  leaves = jax.tree.leaves(tree)
  assert len(leaves) == 8 and all(leaf.shape[0] == 3 for leaf in leaves)
  assert sorted(leaf.ndim for leaf in leaves) == [2] * 4 + [3] * 4


def test_scanned_mode_gives_the_matrix_optimizers_a_per_layer_view(capsys, monkeypatch):
  """Each gradtx optimizer that takes a matrix view is built with
  ``gt.stacked_matrix_view()``; optax.contrib.muon, which has none, is left out."""
  views = []
  monkeypatch.setattr(compile_time.gt, "stacked_matrix_view",
                      lambda: views.append("stacked") or (lambda path, leaf: None))
  saved = dict(compile_time.OPTIMIZERS)
  try:
    compile_time.main(["--scanned", "--layers", "1", "2", "--d", "8", "--optimizers",
                       "muon", "adamw", "optax.contrib.muon"])
  finally:
    compile_time.OPTIMIZERS.clear()
    compile_time.OPTIMIZERS.update(saved)
  out = capsys.readouterr().out
  assert "| muon |" in out and "| adamw |" in out
  assert "optax.contrib.muon" not in out
  assert views == ["stacked"]
  assert "scanned" in out


def test_all_adds_every_gradtx_optimizer_built_from_a_learning_rate(monkeypatch):
  """``--all``: the default contenders plus every other optimizer of
  ``gradtx.optimizers`` that takes only a learning rate, each one built
  (the compile itself is replaced: nothing is timed)."""
  seen = {}

  def fake_measure(builders, layers, d, repeats, **kwargs):
    seen.update({name: build() for name, build in builders.items()})
    return {name: {n: 1.0 for n in layers} for name in builders}

  monkeypatch.setattr(compile_time, "measure", fake_measure)
  compile_time.main(["--layers", "1", "--d", "8"])
  default = set(seen)
  seen.clear()
  compile_time.main(["--all", "--layers", "1", "--d", "8"])
  assert set(seen) == default | set(compile_time.MORE_OPTIMIZERS)
  assert not default & set(compile_time.MORE_OPTIMIZERS)
  assert all(hasattr(tx, "update") for tx in seen.values())


def test_fsdp_sharding_splits_rows_over_the_axis_and_keeps_what_it_does_not_divide():
  mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
  spec = lambda shape, scanned=False: compile_time.fsdp_sharding(shape, mesh, scanned).spec
  P = jax.sharding.PartitionSpec
  assert spec((16, 48)) == P("d", None)
  assert spec((48,)) == P("d")
  assert spec((12, 16)) == P(None, None)  # 8 does not divide 12 rows
  assert spec((3, 16, 48), scanned=True) == P(None, "d", None)


def test_devices_mode_compiles_and_steps_on_a_sharded_tree(capsys):
  """``--devices 8`` (the test process has 8 fake devices): the tree's leaves
  are sharded, every contender compiles and steps on the mesh."""
  compile_time.main(["--devices", "8", "--layers", "1", "--d", "8", "--optimizers",
                     "muon", "--step-rounds", "1"])
  out = capsys.readouterr().out
  assert "FSDP-sharded over 8 fake devices" in out
  assert "| muon |" in out and "| optax.adamw |" in out
  assert "step time" in out


def test_devices_mode_refuses_a_count_jax_does_not_run_on():
  with pytest.raises(SystemExit):
    compile_time.main(["--devices", "3", "--layers", "1"])
  assert "=3" not in os.environ.get("XLA_FLAGS", "")  # the flag is not left behind


def test_step_table_gives_median_and_amortized_ratios():
  refresh_every_10 = [30.0 if i % 10 == 7 else 10.0 for i in range(30)]
  text = compile_time.step_table({compile_time.ANCHOR: [5.0] * 29 + [50.0],
                                  "shampoo": refresh_every_10})
  row = next(line for line in text.splitlines() if line.startswith("| shampoo"))
  # min 10 / 5, median 10 / 5, amortized (one 30 ms step in ten) 12 / 5: the
  # anchor's one slow step is a window of three, left out by the median
  assert [c.strip() for c in row.strip("|").split("|")] == [
      "shampoo", "10.00", "10.00", "2.00x", "2.00x", "12.00", "2.40x"]
  assert "amortized" not in compile_time.step_table({compile_time.ANCHOR: [5.0] * 29})


def test_all_covers_every_optimizer_built_from_a_learning_rate_alone():
  """``--all`` is every optimizer of ``gradtx.optimizers`` whose first argument is
  the learning rate and whose others have defaults: a factory added to the
  package without an entry here would be left out of the compile-time table."""
  import inspect

  from gradtx import optimizers as go

  def from_a_learning_rate(factory):
    parameters = list(inspect.signature(factory).parameters.values())
    return (parameters and parameters[0].name == "learning_rate"
            and all(p.default is not inspect.Parameter.empty for p in parameters[1:]))

  expected = {name for name in go.__all__
              if inspect.isfunction(getattr(go, name)) and from_a_learning_rate(getattr(go, name))}
  covered = {make.factory for make in compile_time.gradtx_optimizers(go).values()}
  # K-FAC's update reads the forward pass's records (go.value_grad_and_records).
  assert expected - covered == {"kfac"}
  assert {"adamax", "schedule_free_adamw", "sm3"} <= covered
