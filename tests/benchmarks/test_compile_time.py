"""benchmarks.compile_time: compile seconds against the number of layers."""

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
