"""The race (benchmarks/race.py, ``examples/char_lm.py --lr-factors --seeds``):
the summary at each optimizer's best lr, and runs resumed from the run file."""

import dataclasses
import json
import pathlib

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


def _tiny_config(tmp_path, **changes):
  config = char_lm.Config(
      optimizers=("adamw",), steps=6, batch_size=4, context=16, d_model=16, num_layers=1,
      num_heads=2, corpus_mb=0.1, eval_every=6, eval_batches=1, seed=0, out=tmp_path,
      lr_factors=(1.0,), seeds=(0,))
  return dataclasses.replace(config, **changes)


def _record(tmp_path, lines):
  (tmp_path / "char_lm_race_runs.jsonl").write_text("".join(line + "\n" for line in lines))


def test_a_run_made_with_other_settings_is_refused_not_scored(tmp_path):
  settings = race.run_settings(_tiny_config(tmp_path))
  made = json.dumps({"seed": 0, "label": "adamw", "train_loss": [3.0] * 6,
                     "settings": {**settings, "steps": 10}})
  _record(tmp_path, [made])
  with pytest.raises(ValueError, match=r"steps=10 \(this race: 6\)"):
    race.read_runs(tmp_path / "char_lm_race_runs.jsonl", settings)
  # A run file from before runs kept their settings: checked by its curve's length.
  _record(tmp_path, [json.dumps({"seed": 0, "label": "adamw", "train_loss": [3.0] * 10})])
  with pytest.raises(ValueError, match="steps=10"):
    race.read_runs(tmp_path / "char_lm_race_runs.jsonl", settings)
  _record(tmp_path, [json.dumps({"seed": 0, "label": "adamw", "train_loss": [3.0] * 6})])
  assert len(race.read_runs(tmp_path / "char_lm_race_runs.jsonl", settings)) == 1


def test_a_run_file_cut_short_drops_its_last_run_and_names_a_bad_line(tmp_path):
  settings = race.run_settings(_tiny_config(tmp_path))
  good = json.dumps({"seed": 0, "label": "adamw", "train_loss": [3.0] * 6,
                     "settings": settings})
  _record(tmp_path, [good, good[:40]])
  with pytest.warns(UserWarning, match=":2: the last run is cut short"):
    assert len(race.read_runs(tmp_path / "char_lm_race_runs.jsonl", settings)) == 1
  _record(tmp_path, [good[:40], good])
  with pytest.raises(ValueError, match=":1 is not a JSON run record"):
    race.read_runs(tmp_path / "char_lm_race_runs.jsonl", settings)
  _record(tmp_path, [json.dumps({"seed": 0, "label": "adamw"})])
  with pytest.raises(ValueError, match="lacks \\['train_loss'\\]"):
    race.read_runs(tmp_path / "char_lm_race_runs.jsonl", settings)


def test_the_committed_race_files_resume_under_the_settings_they_were_run_with():
  """Their curves are as long as the races' 400 steps (README's commands)."""
  root = pathlib.Path(race.__file__).parent / "race"
  for path in root.rglob("char_lm_race_runs.jsonl"):
    assert race.read_runs(path, {"steps": 400})


def test_the_header_names_the_factors_each_best_lr_was_chosen_among():
  """A run file resumed with ``--lr-factors 1`` over 0.5x/2x runs chose AdamW's
  best among all three while the header said "lr factors [1.0]"."""
  runs = {seed: {"adamw": {}, "adamw@0.5x": {}, "adamw@2x": {}, "muon": {}} for seed in (0, 1)}
  del runs[1]["adamw@2x"]  # not on every seed: not a candidate
  assert race.factors_run(runs, ["adamw", "muon"]) == "adamw 0.5/1x; muon 1x"
