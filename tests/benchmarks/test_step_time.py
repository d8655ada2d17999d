"""benchmarks/step_time.py's command line."""

import pytest

from benchmarks import step_time


def test_quick_refuses_sizes_it_would_ignore(capsys):
  """--quick runs its own sizes: with --sizes it ran those silently."""
  with pytest.raises(SystemExit):
    step_time.main(["--quick", "--sizes", "256K"])
  assert "--quick sets its own sizes" in capsys.readouterr().err
