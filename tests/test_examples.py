"""The examples run: the main job (a tiny run, in-process, into a tmp dir), the
quickstart (README's example); and what the benchmarks take from them."""

import ast
import json
import math
import pathlib
import re
import runpy

import numpy as np
import pytest

from benchmarks import harness, kfac_vs_shampoo
from examples import char_lm

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def char_lm_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("char_lm")
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


# --------------------------------------------------------------- quickstart


def test_quickstart_prints_decreasing_losses(capsys):
  runpy.run_module("examples.quickstart", run_name="__main__")
  (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("losses:")]
  losses = [float(x) for x in line.split()[1:]]
  assert len(losses) == 6 and all(map(math.isfinite, losses))
  assert losses[-1] < losses[0]


def test_the_quickstarts_adamw_by_hand_is_go_adamw():
  """What its comment says: the chain at a constant rate is go.adamw, exactly."""
  import jax.numpy as jnp
  import optax

  from gradtx import optimizers as go
  from gradtx import transforms as gt
  by_hand = optax.chain(gt.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                        gt.decoupled_weight_decay(1e-2), gt.scale_by_learning_rate(3e-3))
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  trajectories = []
  for tx in (by_hand, go.adamw(3e-3, weight_decay=1e-2)):
    p, state = params, tx.init(params)
    for step in range(5):
      updates, state = tx.update({"w": jnp.cos(p["w"] * (step + 1))}, state, p)
      p = optax.apply_updates(p, updates)
    trajectories.append(p["w"])
  assert (trajectories[0] == trajectories[1]).all()


def _code_and_imports(source: str) -> tuple[list[str], set]:
  """The statements other than imports, and the (module, name, alias) imported."""
  body = ast.parse(source).body
  imports = {
      (getattr(node, "module", None), alias.name, alias.asname)
      for node in body if isinstance(node, (ast.Import, ast.ImportFrom))
      for alias in node.names
  }
  code = [ast.dump(node) for node in body
          if not isinstance(node, (ast.Import, ast.ImportFrom))]
  return code, imports


def test_quickstart_is_the_readme_example():
  """Same statements and imports; the script adds its docstring and a print."""
  readme = (ROOT / "README.md").read_text()
  (example,) = re.findall(r"^## Example\n.*?^```python\n(.*?)^```", readme, re.S | re.M)
  script_code, script_imports = _code_and_imports(
      (ROOT / "examples" / "quickstart.py").read_text())
  readme_code, readme_imports = _code_and_imports(example)
  assert script_imports == readme_imports
  assert script_code[1:-1] == readme_code  # [0]: docstring, [-1]: the print


# -------------------------------------------- what the benchmarks take from it
# (the registry and the race: tests/benchmarks/test_registry.py, test_race.py)


def test_harness_times_each_contender_once_a_round_in_shuffled_orders():
  calls = []
  contenders = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
  times = harness.time_round_robin(contenders, rounds=6, warmup=2)
  assert calls[:8] == list("aabbccdd")
  rounds = [calls[8 + 4 * i: 12 + 4 * i] for i in range(6)]
  assert all(sorted(r) == list("abcd") for r in rounds)
  assert len({tuple(r) for r in rounds}) > 1
  assert {name: len(t) for name, t in times.items()} == dict.fromkeys("abcd", 6)


def test_ratio_table_divides_min_by_min_and_median_by_median():
  times = {"optax": [1e-3, 2e-3, 9e-3], "gradtx": [3e-3, 3e-3, 4e-3]}
  table = harness.ratio_table(times, anchor="optax", columns={"note": {"gradtx": "x"}})
  header, _, optax_row, gradtx_row = table.splitlines()
  assert header.split(" | ")[3:5] == ["x optax (min)", "x optax (median)"]
  assert gradtx_row == "| gradtx | 3.00 | 3.00 | 3.00x | 1.50x | x |"
  assert optax_row == "| optax | 1.00 | 2.00 | 1.00x | 1.00x |  |"
  pairs = harness.ratio_table(
      {"lamb gradtx": [1.0], "lamb optax": [4.0]}, anchor={"lamb gradtx": "lamb optax"})
  assert "| lamb gradtx | lamb optax | 1000.00 | 1000.00 | 0.25x | 0.25x |" in pairs



def test_char_lm_on_a_mesh_splits_the_work_and_matches_one_device(tmp_path):
  """``--devices 4``: FSDP parameters, split batches, state laid out by
  gt.state_shardings; the same losses as one device, a quarter of the state
  per device, and the per-device cost table in the written table."""
  args = ["--optimizers", "adamw,muon", "--steps", "4", "--batch-size", "8",
          "--context", "16", "--d-model", "32", "--num-layers", "1",
          "--num-heads", "2", "--corpus-mb", "0.1", "--eval-every", "4",
          "--eval-batches", "1"]
  one = char_lm.main([*args, "--out", str(tmp_path / "one")])
  four = char_lm.main([*args, "--devices", "4", "--out", str(tmp_path / "four")])
  for name in ("adamw", "muon"):
    np.testing.assert_allclose(four[name]["train_loss"], one[name]["train_loss"],
                               rtol=1e-4)
    assert four[name]["state_ratio"] == pytest.approx(0.25, abs=0.01)
    # A tiny model: replicated small leaves and padding keep this above 1/4.
    assert four[name]["flops_ratio"] < 0.7, four[name]["flops_ratio"]
  table = (tmp_path / "four" / "char_lm.md").read_text()
  assert "| optimizer (4 devices) |" in table and "| muon |" in table


def test_char_lm_refuses_a_batch_the_mesh_does_not_divide():
  config = char_lm.parse_args(["--devices", "3", "--batch-size", "8"])
  with pytest.raises(ValueError, match="--batch-size 8 must be a multiple of --devices 3"):
    char_lm.make_mesh(config)


@pytest.mark.parametrize("options, message", [
    (["--eval-every", "0"], "must be positive: --eval-every 0"),
    (["--steps", "0"], "must be positive: --steps 0"),
    (["--lr-factors", "1,x"], "--lr-factors takes comma-separated floats"),
    (["--seeds", "0,1.5"], "--seeds takes comma-separated ints"),
    (["--corpus-mb", "0"], "--corpus-mb 0"),
    (["--lr-factors", "nan"], "--lr-factors must be positive finite numbers"),
    (["--lr-factors", "-1"], "--lr-factors must be positive finite numbers"),
    (["--optimizers", "adamw,muon@.x", "--seeds", "0"], "'muon@.x': an lr factor"),
])
def test_char_lm_refuses_settings_it_cannot_train_with(options, message, capsys):
  with pytest.raises(SystemExit):
    char_lm.parse_args(options)
  assert message in capsys.readouterr().err


def test_char_lm_runs_the_issue_14_entries_with_records(tmp_path):
  """kfac and muon:qk_clip read the train step's records (K-FAC's dense
  inputs and output gradients, QK-clip's per-head max logits); dion does not."""
  names = ["kfac", "muon:qk_clip", "dion"]
  results = char_lm.main([
      "--optimizers", ",".join(names), "--steps", "6", "--batch-size", "8",
      "--context", "16", "--d-model", "32", "--num-layers", "1",
      "--num-heads", "2", "--corpus-mb", "0.1", "--eval-every", "6",
      "--eval-batches", "1", "--out", str(tmp_path)])
  for name in names:
    train = results[name]["train_loss"]
    assert len(train) == 6 and all(math.isfinite(x) for x in train), name
    assert sum(train[-2:]) / 2 < train[0], (name, train)


def test_kfac_vs_shampoo_comparison_numbers():
  """benchmarks/kfac_vs_shampoo.py (the K-FAC vs Shampoo section of notebook 04)."""
  r = kfac_vs_shampoo.compare(steps=12, batch=32)
  # gradtx's Shampoo update is exactly (L^{1/4} ⊗ R^{1/4})⁻¹ ḡ of the numpy factors,
  assert r["shampoo_cosine_to_its_kronecker_form"] > 1 - 1e-9
  # K-FAC's is that of A ⊗ G up to its factored (π) split of the damping.
  assert 0.8 < r["kfac_cosine_to_its_kronecker_form"] < 1 - 1e-6
  # A ⊗ G is a (rough) approximation of the Fisher, a worse one of Σ ḡḡᵀ.
  assert 0 < r["kfac_error_vs_fisher"] < r["kfac_error_vs_gradient_sum"] < 1
  assert 0 < r["shampoo_error_vs_gradient_sum"] < 1
