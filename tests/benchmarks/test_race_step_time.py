"""benchmarks/race_step_time.py's command line."""

import pytest

from benchmarks import race_step_time


def test_refuses_a_window_longer_than_the_rounds(capsys):
  with pytest.raises(SystemExit):
    race_step_time.main(["--rounds", "5", "--window", "10"])
  assert "--window must be in [1, --rounds = 5], got 10" in capsys.readouterr().err
