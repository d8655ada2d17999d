"""benchmarks.probe_draws: both draws run, on every stack, with the same numbers."""

from benchmarks import probe_draws


def test_stacks_are_a_transformers_distinct_shapes():
  shapes = probe_draws.stack_shapes(layers=3, d=8)
  assert len(set(s[1:] for s in shapes)) == len(shapes) == 7
  assert sum(s[0] for s in shapes if len(s) == 3) == 4 * 3  # one leaf per kernel per layer


def test_main_prints_both_draws(capsys):
  probe_draws.main(["--layers", "2", "--d", "8", "--repeats", "1", "--rounds", "1"])
  out = capsys.readouterr().out
  assert "the same numbers from both" in out
  for name in probe_draws.DRAWS:
    assert out.count(f"| {name} |") == 2  # the compile table and the run table
