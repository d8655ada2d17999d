"""Smoke test of examples/char_lm.py: a tiny run, in-process, into a tmp dir."""

import importlib.util
import json
import math
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def char_lm_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("char_lm")
  char_lm = load_example("char_lm")
  results = char_lm.main([
      "--optimizers", "adamw,lion,sam", "--steps", "15", "--batch-size", "8",
      "--context", "32", "--d-model", "32", "--num-layers", "1",
      "--num-heads", "2", "--corpus-mb", "0.2", "--eval-every", "5",
      "--eval-batches", "2", "--out", str(out),
  ])
  return out, results


def test_char_lm_writes_plot_table_and_curves(char_lm_run):
  out, _ = char_lm_run
  assert (out / "char_lm.png").stat().st_size > 0
  assert (out / "char_lm.md").exists()
  curves = json.loads((out / "char_lm.json").read_text())
  assert set(curves["results"]) == {"adamw", "lion", "sam"}


def test_char_lm_table_has_one_row_per_optimizer(char_lm_run):
  out, _ = char_lm_run
  rows = [
      line for line in (out / "char_lm.md").read_text().splitlines()
      if line.startswith("| ") and not line.startswith("| optimizer")
  ]
  assert [row.split("|")[1].strip() for row in rows] == ["adamw", "lion", "sam"]


@pytest.mark.parametrize("name", ["adamw", "lion", "sam"])  # sam: grad_fn
def test_char_lm_losses_are_finite_and_decrease(char_lm_run, name):
  _, results = char_lm_run
  train = results[name]["train_loss"]
  assert len(train) == 15
  assert all(math.isfinite(x) for x in train + results[name]["val_loss"])
  assert sum(train[-3:]) / 3 < train[0]
  assert results[name]["state_bytes"] > 0
