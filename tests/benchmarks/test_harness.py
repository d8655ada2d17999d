"""The timing helpers' arithmetic (no timing: synthetic seconds)."""

import re
import statistics

import numpy as np
import pytest

from benchmarks import harness


def test_amortized_pays_for_a_refresh_the_median_drops():
  # A step of 1 s with a 10 s refresh every 10th step, as SOAP's basis refresh.
  seconds = [10.0 if i % 10 == 3 else 1.0 for i in range(80)]
  assert statistics.median(seconds) == 1.0
  assert harness.amortized(seconds, 10) == pytest.approx(1.9)


def test_amortized_keeps_a_load_spike_out():
  seconds = [1.0] * 80
  seconds[41] = 500.0  # one call slowed by something else on the machine
  assert np.mean(seconds) > 7
  assert harness.amortized(seconds, 10) == 1.0


def test_amortized_leaves_a_partial_window_out():
  assert harness.amortized([1.0] * 10 + [9.0] * 5, 10) == 1.0  # kept, it would be 5


@pytest.mark.parametrize("window", [0, 81])
def test_amortized_refuses_a_window_outside_the_calls(window):
  with pytest.raises(ValueError, match=r"window must be in \[1, 80\]"):
    harness.amortized([1.0] * 80, window)


@pytest.mark.parametrize("content, message", [
    (b'{"a": 1}\n123\n{"a": 2}\n', ":2 is not a JSON run record (JSON int, not an object)"),
    (b'["a"]\n{"a": 1}\n', ":1 is not a JSON run record (JSON list, not an object)"),
    (b'{"a": 1}\n\xff\xfe\n', "is not a text file of JSON run records"),
    (b'{"b": 1}\n{"a": 1}\n', ":1: the run record lacks ['a']"),
])
def test_a_run_file_that_is_not_records_is_an_error_naming_it(tmp_path, content, message):
  """A JSON line that is not an object gave a bare TypeError, bytes that are
  not text a bare UnicodeDecodeError."""
  path = tmp_path / "runs.jsonl"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=re.escape(message)):
    harness.read_records(path, ["a"])
