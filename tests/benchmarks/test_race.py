"""The race (benchmarks/race.py, ``examples/char_lm.py --lr-factors --seeds``):
the summary at each optimizer's best lr, and runs resumed from the run file."""

import numpy as np
import pytest

from benchmarks import race
from examples import char_lm


def _curve(final, steps=100, start=4.0):
  """A loss curve falling linearly from ``start`` to ``final``."""
  return list(np.linspace(start, final, steps))


def test_race_summary_picks_the_best_lr_and_counts_steps_to_adamw():
  """Synthetic runs: adamw is best at 1x (final 2.0 on both seeds), fast at 2x
  (final 1.0 and 1.2); fast@2x's steps to 2.0 are where its line crosses 2.0
  (the trailing 10-step window lags by 4.5 steps)."""
  runs = {s: {"adamw": {"train_loss": _curve(2.0), "ms_per_step": 10.0},
              "adamw@2x": {"train_loss": _curve(2.5), "ms_per_step": 10.0},
              "fast": {"train_loss": _curve(1.8), "ms_per_step": 20.0},
              "fast@2x": {"train_loss": _curve(1.0 + 0.2 * s), "ms_per_step": 20.0}}
          for s in (0, 1)}
  summary = race.race_summary(runs, ["adamw", "fast"], 100)
  assert summary["adamw"]["lr_factor"] == 1.0 and summary["fast"]["lr_factor"] == 2.0
  expected = [int(np.flatnonzero(char_lm.smooth(runs[s]["fast@2x"]["train_loss"], 10)
                                 <= char_lm.smooth(_curve(2.0), 10)[-1] + 1e-9)[0]) + 1
              for s in (0, 1)]
  assert summary["fast"]["steps"] == expected and expected[0] < expected[1] < 100
  assert summary["fast"]["steps_ratio"] == pytest.approx(np.median(expected) / 100)
  assert summary["fast"]["seconds_ratio"] == pytest.approx(
      np.median(expected) * 20.0 / (100 * 10.0))
  table = race.race_table(summary, 100)
  assert "| fast | 2 | " in table and f"{min(expected)}/" in table


def test_race_runs_resume_from_the_run_file(tmp_path):
  tiny = ["--steps", "6", "--batch-size", "4", "--context", "16", "--d-model", "16",
          "--num-layers", "1", "--num-heads", "2", "--corpus-mb", "0.1",
          "--eval-every", "6", "--eval-batches", "1", "--out", str(tmp_path)]
  first = char_lm.main(["--optimizers", "adamw,muon", "--lr-factors", "1,2",
                        "--seeds", "0,1", *tiny])
  lines = (tmp_path / "char_lm_race_runs.jsonl").read_text().splitlines()
  assert len(lines) == 2 * 2 * 2 and set(first) == {"adamw", "muon"}
  second = char_lm.main(["--optimizers", "muon,adamuon@2x", "--lr-factors", "1,2",
                         "--seeds", "0,1", *tiny])
  lines = (tmp_path / "char_lm_race_runs.jsonl").read_text().splitlines()
  assert len(lines) == 8 + 2  # only adamuon@2x on each seed is new
  assert second["muon"]["final_loss"] == first["muon"]["final_loss"]
  assert second["adamuon"]["lr_factor"] == 2.0
  assert (tmp_path / "char_lm_race.md").read_text().count("\n| ") == 4
