"""benchmarks/suite/step_time.py: the suite's training steps timed side by side."""

import math

import numpy as np
import pytest

from benchmarks.suite import WORKLOADS, step_time
from benchmarks.suite import train as suite_train


def test_a_contender_is_the_first_chunk_of_a_run_and_carries_on():
  workload = WORKLOADS["tabular_mlp"](steps=8, hidden=8)
  chunks = step_time.contenders(workload, ["adamw", "muon"], chunk=4)
  for name, chunk in chunks.items():
    chunk()
    # The same losses as the first 4 steps of the suite's own run from seed 0.
    tx = suite_train.make_optimizer(name, 1.0, "warmup_cosine", workload.steps)
    run = suite_train.train(workload, tx, seed=0, eval_every=4)
    np.testing.assert_allclose(np.asarray(chunk.losses), run["train_loss"][:4], rtol=1e-6)
  adamw = chunks["adamw"]
  first = np.array(adamw.params["hidden1"]["kernel"][...])
  adamw()  # a second call goes on from the first's weights
  assert not np.array_equal(first, np.array(adamw.params["hidden1"]["kernel"][...]))


def test_step_milliseconds_has_one_figure_per_round():
  workload = WORKLOADS["tabular_mlp"](steps=8, hidden=8)
  ms = step_time.step_milliseconds(workload, ["adamw", "sgd"], chunk=2, rounds=3)
  assert set(ms) == {"adamw", "sgd"}
  assert all(len(ts) == 3 for ts in ms.values())  # one figure a round, no bound on it


def test_wall_clock_is_steps_times_step_time_over_adamws():
  summary = {"adamw": {"steps": [100, 120, 110]}, "muon": {"steps": [50, 60, None]},
             "soap": {"steps": [None, None, 40]}}
  ms = {"adamw": 2.0, "muon": 3.0, "soap": 1.0}
  assert step_time.wall_clock_ratio(summary, "muon", ms) == (60 * 3.0) / (110 * 2.0)
  assert math.isinf(step_time.wall_clock_ratio(summary, "soap", ms))  # median not reached


def test_a_fixed_summary_divides_by_tuned_adamw_not_by_the_fixed_one():
  summary = {"adamw": {"steps": [None]}, "tuned adamw": {"steps": [100]},
             "muon": {"steps": [50]}}
  ms = {"adamw": 2.0, "muon": 4.0}
  assert step_time.wall_clock_ratio(summary, "muon", ms) == 1.0


def test_table_divides_by_adamws_step_and_marks_misses():
  milliseconds = {"w": {"adamw": [2.0, 3.0], "muon": [4.0, 5.0], "soap": [1.0, 1.5]}}
  summaries = {"w": {"adamw": {"steps": [100]}, "muon": {"steps": [40]},
                     "soap": {"steps": [None]}}}
  rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]]
          for line in step_time.table(milliseconds, summaries).splitlines()[2:]}
  assert rows["muon"] == ["4.00", "4.50", "2.00x", "0.40x", "0.80x"]
  assert rows["soap"][-2:] == ["not reached", "not reached"]
  assert "x AdamW's wall-clock" not in step_time.table(milliseconds, None)


def test_optimizers_must_start_with_adamw():
  try:
    step_time.parse_args(["--optimizers", "muon,adamw"])
  except SystemExit:
    return
  raise AssertionError("parse_args accepted a list that does not start with adamw")


@pytest.mark.parametrize("options, message", [
    (["--workloads", "tabular_mlp,nosuch"], "unknown names: nosuch"),
    (["--optimizers", "adamw,nosuch"], "unknown names: nosuch"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--summary", "/no/such/summary.json"], "--summary: no file"),
])
def test_options_it_could_not_use_are_refused_before_timing(options, message, capsys):
  """They failed after every workload was timed (KeyError, FileNotFoundError)."""
  with pytest.raises(SystemExit):
    step_time.parse_args(options)
  assert message in capsys.readouterr().err
