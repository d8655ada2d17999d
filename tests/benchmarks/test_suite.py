"""The workload suite (benchmarks/suite): workloads train, the runner resumes, profiles score."""

import json
import math
import warnings
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import harness
from benchmarks.suite import WORKLOADS, run, scoring
from benchmarks.suite import train as suite_train
from gradtx import transforms as gt

# Each workload at a size that compiles and steps in seconds.
TINY = {
    "stdlib_lm": dict(d_model=16, corpus_mb=0.05),
    "docs_lm": dict(d_model=16, num_layers=1),
    "linen_lm": dict(d_model=16, num_layers=1),
    "digits_cnn": {},
    "digits_vit": dict(d_model=16, num_layers=1),
    "tabular_mlp": dict(hidden=16),
    "scan_lm": dict(d_model=16, num_layers=2, corpus_mb=0.05),
    "moe_lm": dict(d_model=16, hidden=16, num_layers=1),
}
STEPS = 8


def test_every_workload_has_a_tiny_size():
  assert set(TINY) == set(WORKLOADS)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_workload_trains(name, optimizer):
  workload = WORKLOADS[name](steps=STEPS, **TINY[name])
  tx = suite_train.make_optimizer(optimizer, 2.0, "constant", STEPS, workload.matrix_view)
  result = suite_train.train(workload, tx, seed=0, eval_every=STEPS)
  losses = result["train_loss"]
  assert len(losses) == STEPS and np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < losses[0]
  assert math.isfinite(result["eval_loss"][-1]) and 0 <= result["eval_accuracy"][-1] <= 1


def test_schedule_free_is_evaluated_at_its_averaged_point():
  """The held-out metric of a Schedule-Free run reads x (its eval point), any
  other optimizer's the parameters themselves."""
  from gradtx import optimizers as go

  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.25, -1.0])}
  for name in ("schedule_free_adamw", "schedule_free_sgd", "adamw"):
    tx = suite_train.make_optimizer(name, 1.0, "warmup_cosine", 20)
    state, y = tx.init(params), params
    for _ in range(5):
      updates, state = tx.update(grads, state, y)
      y = jax.tree.map(jnp.add, y, updates)
    point = suite_train.evaluation_point(state, y)
    if name == "adamw":
      assert point is y
    else:
      expected = go.schedule_free_eval_params(state, y)
      np.testing.assert_array_equal(point["w"], expected["w"])
      assert np.abs(point["w"] - y["w"]).max() > 1e-4


@pytest.mark.parametrize("name", ["schedule_free_adamw", "schedule_free_sgd"])
def test_schedule_free_entries_hold_their_scaled_peak_under_either_schedule(name):
  """Schedule-Free's entries warm up, then hold the peak (times the factor):
  the suite's ``constant`` schedule does not touch them, nor does cosine decay."""
  from benchmarks import registry

  peak = {"schedule_free_adamw": 1.5e-2, "schedule_free_sgd": 0.1}[name]
  for schedule in ("warmup_cosine", "constant"):
    with mock.patch.object(registry.go, name, side_effect=lambda lr, **kw: lr) as factory:
      rate = suite_train.make_optimizer(name, 2.0, schedule, 100)
    assert factory.called
    assert [float(rate(t)) for t in (0, 5, 10, 99)] == pytest.approx(
        [0.0, peak, 2 * peak, 2 * peak], rel=1e-6)


@pytest.mark.parametrize("schedule, expected", [("constant", 2 * 3e-4), ("warmup_cosine", None)])
def test_constant_schedule_holds_the_scaled_peak(schedule, expected):
  # signsgd's update is lr * sign(momentum): its size is the learning rate.
  tx = suite_train.make_optimizer("signsgd", 2.0, schedule, 100)
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  update = jax.jit(lambda s: tx.update({"w": jnp.ones(3)}, s, params))
  for _ in range(60):
    updates, state = update(state)
  size = float(jnp.abs(updates["w"][0]))
  if expected is None:
    assert 0 < size < 2 * 3e-4 * 0.9
  else:
    assert size == pytest.approx(expected, rel=1e-5)


def test_make_optimizer_refuses_an_unknown_schedule():
  with pytest.raises(ValueError, match="schedule must be"):
    suite_train.make_optimizer("adamw", 1.0, "linear", 10)


def _fake_train(calls):
  def train(workload, tx, seed, eval_every):
    calls.append(seed)
    losses = np.linspace(2.0, 1.0 - 0.1 * len(calls), workload.steps).tolist()
    return {"train_loss": losses, "eval_step": [workload.steps], "eval_loss": [1.0],
            "eval_accuracy": [0.5], "ms_per_step": 1.0, "seconds": 0.1}

  return train


def _smoke_argv(tmp_path, optimizers: str, factors: str, seeds: str) -> list:
  """A 10-step tabular_mlp run of the suite, constant schedule, into ``tmp_path``."""
  return ["--workloads", "tabular_mlp", "--optimizers", optimizers, "--factors", factors,
          "--seeds", seeds, "--steps", "10", "--schedules", "constant", "--out", str(tmp_path)]


def test_runner_resumes_from_its_run_files(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(suite_train, "train", _fake_train(calls))
  argv = _smoke_argv(tmp_path, "adamw,muon", "1", "0,1")
  run.main(argv)
  assert len(calls) == 4
  run.main(argv)
  assert len(calls) == 4  # nothing rerun
  summaries = run.main([*argv[:5], "1,2", *argv[6:]])
  assert len(calls) == 8  # only the new factor's runs
  lines = (tmp_path / "runs.jsonl").read_text().splitlines()
  assert len(lines) == 8 and {json.loads(line)["factor"] for line in lines} == {1.0, 2.0}
  assert set(summaries["constant"]["tabular_mlp"]) == {"adamw", "muon"}
  assert (tmp_path / "profiles_tuned_constant.png").exists()
  assert "score (steps)" in (tmp_path / "table_tuned_constant.md").read_text()


@pytest.mark.parametrize("options, message", [
    (["--optimizers", "adamw,sam"], "grad_fn or records"),
    (["--optimizers", "adamw,muon:qk_clip"], "grad_fn or records"),
    (["--schedules", "constant,foo"], "--schedules: unknown foo"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),
    (["--seeds", "0,x"], "--seeds takes comma-separated ints"),
    (["--factors", ","], "--factors is empty"),
    (["--optimizers", "adamw,muon@2x"], "muon@2x: a name@Fx factor is the fixed ruleset's"),
    (["--optimizers", "muon"], "--optimizers must include adamw"),
    # -1 trained uphill and was scored, nan never matched its own run key.
    (["--factors", "-1"], "--factors must be positive finite numbers"),
    (["--factors", "1,nan"], "--factors must be positive finite numbers"),
    (["--target-factors", "0"], "--target-factors must be positive finite numbers"),
    # muon@0x ran muon at 1x.
    (["--ruleset", "fixed", "--optimizers", "adamw,muon@0x"], "'muon@0x': an lr factor"),
    (["--ruleset", "fixed", "--optimizers", "adamw,muon@1.5.x"], "'muon@1.5.x': an lr factor"),
    # The 2x was dropped silently.
    (["--ruleset", "fixed", "--optimizers", "adamw,muon@2x,muon@1x"], "names muon more than once"),
])
def test_options_the_runs_could_not_use_are_refused_before_the_first_run(
    options, message, capsys):
  with pytest.raises(SystemExit):
    run.parse_args(options)
  assert message in capsys.readouterr().err


def test_runs_record_their_revision_and_a_resume_over_another_warns(tmp_path, monkeypatch):
  """Records carried no revision: a resume after a routing change scored old
  and new curves of one optimizer together, silently."""
  calls = []
  monkeypatch.setattr(suite_train, "train", _fake_train(calls))
  argv = _smoke_argv(tmp_path, "adamw", "1", "0")
  run.main(argv)
  record = json.loads((tmp_path / "runs.jsonl").read_text())
  assert record["revision"] == harness.git_revision(exclude=[tmp_path])
  (tmp_path / "runs.jsonl").write_text(json.dumps({**record, "revision": "0ld"}) + "\n")
  with pytest.warns(UserWarning, match="made at 0ld, the new ones at"):
    run.main(_smoke_argv(tmp_path, "adamw", "1,2", "0"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    run.main(_smoke_argv(tmp_path, "adamw", "1,2", "0"))  # nothing to run: nothing mixed


def test_a_workload_without_adamws_runs_is_named(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(suite_train, "train", _fake_train([]))
  run.main(_smoke_argv(tmp_path, "adamw", "1", "0"))
  run.main([*_smoke_argv(tmp_path, "adamw", "1", "0,1"), "--score-only"])
  assert "tabular_mlp, constant: not scored, AdamW has no runs on every seed [0, 1]" in (
      capsys.readouterr().out)


def test_a_run_file_cut_short_is_resumed_and_a_bad_record_named(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(suite_train, "train", _fake_train(calls))
  argv = _smoke_argv(tmp_path, "adamw", "1,2", "0")
  run.main(argv)
  path = tmp_path / "runs.jsonl"
  first, second = path.read_text().splitlines()
  path.write_text(first + "\n" + second[:50])  # killed mid-write
  with pytest.warns(UserWarning, match="runs.jsonl:2: the last run is cut short"):
    run.main(argv)
  assert len(calls) == 3  # the cut run made again, on a line of its own
  assert [json.loads(line)["factor"] for line in path.read_text().splitlines()] == [1.0, 2.0]
  record = json.loads(first)
  del record["train_loss"]
  path.write_text(json.dumps(record) + "\n")
  with pytest.raises(ValueError, match="runs.jsonl:1: the run record lacks \\['train_loss'\\]"):
    run.main(argv)


def test_a_partial_run_does_not_overwrite_tables_that_score_more(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(suite_train, "train", _fake_train(calls))
  argv = ["--optimizers", "adamw,muon", "--factors", "1", "--seeds", "0", "--steps", "10",
          "--schedules", "constant", "--out", str(tmp_path)]
  run.main(["--workloads", "tabular_mlp,digits_cnn", *argv])
  table = tmp_path / "table_tuned_constant.md"
  both = table.read_text()
  run.main(["--workloads", "tabular_mlp", *argv])
  assert table.read_text() == both  # still scores digits_cnn
  run.main(["--workloads", "tabular_mlp", "--replace-tables", *argv])
  assert table.read_text() != both and "digits_cnn" not in table.read_text()


def test_fixed_ruleset_runs_one_factor_and_adamws_grid():
  args = run.parse_args(["--ruleset", "fixed", "--optimizers", "adamw,muon@3x",
                         "--factors", "0.5,1", "--seeds", "0", "--schedules", "constant",
                         "--workloads", "tabular_mlp"])
  plans = run.planned(args, {"tabular_mlp": WORKLOADS["tabular_mlp"](steps=10)})
  assert sorted((p["optimizer"], p["factor"]) for p in plans) == [
      ("adamw", 0.5), ("adamw", 1.0), ("muon", 3.0)]


def test_performance_profile_on_a_hand_made_table():
  # Best times per workload: 1, 1, 4; the last workload nobody but b solves.
  times = {"a": [1.0, 2.0, None], "b": [2.0, 1.0, 4.0], "c": [3.0, math.inf, math.inf]}
  taus = np.array([1.0, 1.5, 2.0, 3.0, 4.0])
  profiles = scoring.performance_profile(times, taus)
  np.testing.assert_allclose(profiles["a"], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
  np.testing.assert_allclose(profiles["b"], [2 / 3, 2 / 3, 1, 1, 1])
  np.testing.assert_allclose(profiles["c"], [0, 0, 0, 1 / 3, 1 / 3])
  assert scoring.profile_score(np.ones(5), taus) == 1.0
  assert scoring.profile_score(profiles["c"], taus) == pytest.approx((1 / 3) * 1.5 / 3)


def _ramp(end):
  """A run whose train loss falls linearly from 2 to ``end`` over 10 steps."""
  return {"train_loss": np.linspace(2, end, 10).tolist(), "ms_per_step": 2.0,
          "eval_loss": [end], "eval_accuracy": [0.5]}


def test_summarize_targets_tuned_adamw():
  runs = [{"optimizer": "adamw", "factor": 1.0, "seed": 0, **_ramp(1.0)},
          {"optimizer": "adamw", "factor": 2.0, "seed": 0, **_ramp(1.5)},
          {"optimizer": "muon", "factor": 1.0, "seed": 0, **_ramp(0.5)}]
  summary = scoring.summarize(runs, ["adamw", "muon"], [0])
  assert summary["adamw"]["factor"] == 1.0 and summary["adamw"]["at_edge"]
  assert summary["muon"]["steps"][0] < summary["adamw"]["steps"][0] <= 10
  assert summary["muon"]["seconds"][0] == summary["muon"]["steps"][0] * 2.0 / 1e3



def test_the_fixed_ruleset_divides_by_tuned_adamw_not_by_its_fixed_adamw():
  """AdamW fixed at 2x never reaches tuned AdamW's (1x) target: the others'
  ratios are still over tuned AdamW's steps, and AdamW's cell says so."""
  runs = [{"optimizer": "adamw", "factor": 1.0, "seed": 0, **_ramp(1.0)},
          {"optimizer": "adamw", "factor": 2.0, "seed": 0, **_ramp(1.5)},
          {"optimizer": "muon", "factor": 1.0, "seed": 0, **_ramp(0.5)}]
  summary = scoring.summarize(runs, ["adamw", "muon"], [0], fixed={"adamw": 2.0, "muon": 1.0})
  assert summary["adamw"]["steps"] == [None]
  assert summary[scoring.TARGET]["factor"] == 1.0
  ratio = summary["muon"]["steps"][0] / summary[scoring.TARGET]["steps"][0]
  text = scoring.table({"w": summary}, ["adamw", "muon"])
  assert "not reached @2" in text and f"{ratio:.2f}×" in text and "nan" not in text


def test_the_same_runs_read_the_same_ratio_under_both_rulesets():
  """AdamW at 2x ends higher (1.02, not the target) but reaches the 1x run's
  target (1.0 in the trailing window) before it: both rulesets divide by the
  fastest AdamW to the target, so muon's ratio is the same in both tables (the
  fixed one divided by the target-setting run: 0.78x tuned, 0.71x fixed on the
  committed stdlib_lm runs)."""
  fast = {"train_loss": np.r_[np.linspace(2, 0.98, 6), [0.99, 1.0, 1.01, 1.02]].tolist(),
          "ms_per_step": 2.0, "eval_loss": [1.0], "eval_accuracy": [0.5]}
  runs = [{"optimizer": "adamw", "factor": 1.0, "seed": 0, **_ramp(1.0)},
          {"optimizer": "adamw", "factor": 2.0, "seed": 0, **fast},
          {"optimizer": "muon", "factor": 1.0, "seed": 0, **_ramp(0.5)}]
  tuned = scoring.summarize(runs, ["adamw", "muon"], [0])
  fixed = scoring.summarize(runs, ["adamw", "muon"], [0], fixed={"adamw": 1.0, "muon": 1.0})
  assert tuned["adamw"]["factor"] == fixed[scoring.TARGET]["factor"] == 2.0
  assert fixed[scoring.TARGET]["steps"] == tuned["adamw"]["steps"]
  assert fixed[scoring.TARGET]["steps"][0] < fixed["adamw"]["steps"][0]


def test_a_baseline_variant_with_a_lower_final_loss_sets_the_target():
  """AdamW tuned over a variant too: adamw:wd=0 ends lower, so its final loss is
  the target, AdamW's column is that variant, and the others' ratios (tuned and
  fixed) are over its steps."""
  runs = [{"optimizer": "adamw", "factor": 1.0, "seed": 0, **_ramp(1.0)},
          {"optimizer": "adamw:wd=0", "factor": 2.0, "seed": 0, **_ramp(0.8)},
          {"optimizer": "muon", "factor": 1.0, "seed": 0, **_ramp(0.5)}]
  plain = scoring.summarize(runs, ["adamw", "muon"], [0])
  tuned = scoring.summarize(runs, ["adamw", "muon"], [0], baseline_variants=["adamw:wd=0"])
  assert plain["adamw"]["variant"] == "adamw"
  assert tuned["adamw"]["variant"] == "adamw:wd=0" and tuned["adamw"]["factor"] == 2.0
  # A lower target: muon needs more steps to it than to plain AdamW's.
  assert tuned["muon"]["steps"][0] > plain["muon"]["steps"][0]
  assert "@2 adamw:wd=0" in scoring.table({"w": tuned}, ["adamw", "muon"])
  fixed = scoring.summarize(runs, ["adamw", "muon"], [0], fixed={"adamw": 1.0, "muon": 1.0},
                            baseline_variants=["adamw:wd=0"])
  assert fixed[scoring.TARGET]["variant"] == "adamw:wd=0"
  assert fixed[scoring.TARGET]["steps"] == tuned["adamw"]["steps"]


def test_baseline_variants_run_adamws_grid_and_score_only_runs_nothing(tmp_path, monkeypatch):
  argv = ["--optimizers", "adamw,muon", "--factors", "1", "--target-factors", "0.5,1",
          "--baseline-variants", "adamw:wd=0", "--seeds", "0", "--schedules", "constant",
          "--workloads", "tabular_mlp", "--steps", "10", "--out", str(tmp_path)]
  plans = run.planned(run.parse_args(argv), {"tabular_mlp": WORKLOADS["tabular_mlp"](steps=10)})
  assert sorted((p["optimizer"], p["factor"]) for p in plans) == [
      ("adamw", 0.5), ("adamw", 1.0), ("adamw:wd=0", 0.5), ("adamw:wd=0", 1.0), ("muon", 1.0)]
  calls = []
  monkeypatch.setattr(suite_train, "train", _fake_train(calls))
  assert run.main([*argv, "--score-only"]) == {} and calls == []
  with pytest.raises(SystemExit):
    run.parse_args([*argv, "--baseline-variants", "adamw:nonsense"])


@pytest.mark.parametrize("name, stacked", [("scan_lm", "['blocks']['mlp_in']['kernel']"),
                                           ("moe_lm", "['blocks'][0]['moe']['experts_in']")])
def test_stacked_workloads_route_by_their_axis_names(name, stacked):
  # Flax axis names (nnx.with_partitioning, the 'layers' axis of nnx.vmap):
  # every optimizer's default sees one matrix per layer or expert, unguessed.
  assert all(WORKLOADS[w]().matrix_view is None for w in WORKLOADS)
  params, _ = WORKLOADS[name](**TINY[name]).init(0)
  for optimizer in ("muon", "adamuon", "adamuon:gram:fast_embeddings", "soap"):
    tx = suite_train.make_optimizer(optimizer, 1.0, "constant", STEPS)
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      description = gt.describe(tx, params)
    assert not description.notes and not description.ambiguous
    assert description[stacked].view.batch == (0,), optimizer
  assert suite_train.takes_keywords("soap") and not suite_train.takes_keywords("muon")


def test_adamws_grid_can_be_wider_than_the_others():
  argv = ["--optimizers", "adamw,muon", "--factors", "1", "--target-factors", "0.5,1,2",
          "--seeds", "0", "--schedules", "constant", "--workloads", "tabular_mlp"]
  plans = run.planned(run.parse_args(argv), {"tabular_mlp": WORKLOADS["tabular_mlp"](steps=10)})
  assert sorted((p["optimizer"], p["factor"]) for p in plans) == [
      ("adamw", 0.5), ("adamw", 1.0), ("adamw", 2.0), ("muon", 1.0)]
  assert run.parse_args(argv[:4]).target_factors == (1.0,)  # default: --factors


def test_report_scores_each_optimizer_on_its_own_grid(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(suite_train, "train", _fake_train(calls))
  argv = _smoke_argv(tmp_path, "adamw,muon", "1,2", "0")
  run.main([*argv, "--target-factors", "0.5,1,2"])
  assert len(calls) == 5
  summary = run.main(argv)["constant"]["tabular_mlp"]  # AdamW's 0.5 run left out
  assert summary["adamw"]["factor"] in (1.0, 2.0) and len(calls) == 5
  assert "(AdamW: [1.0, 2.0])" in (tmp_path / "table_tuned_constant.md").read_text()


def test_a_baseline_that_diverged_at_a_seed_sets_no_target():
  """AdamW at 1x has the lowest median final loss but went NaN at seed 2: its
  inf target there was 'reached' at step 1 by every run, so an optimizer that
  reached the target at one seed of three scored as reaching it. Only a
  configuration finite at every seed sets the target (AdamW at 2x here)."""
  diverged = {"train_loss": [2.0] * 5 + [math.nan] * 5, "ms_per_step": 2.0,
              "eval_loss": [math.nan], "eval_accuracy": [0.0]}
  runs = [{"optimizer": "adamw", "factor": 1.0, "seed": s, **_ramp(1.0)} for s in (0, 1)]
  runs += [{"optimizer": "adamw", "factor": 1.0, "seed": 2, **diverged}]
  runs += [{"optimizer": "adamw", "factor": 2.0, "seed": s, **_ramp(1.2)} for s in (0, 1, 2)]
  runs += [{"optimizer": "half", "factor": 1.0, "seed": s, **_ramp(end)}
           for s, end in ((0, 0.9), (1, 1.5), (2, 1.5))]
  summary = scoring.summarize(runs, ["adamw", "half"], [0, 1, 2])
  assert summary["half"]["steps"][1:] == [None, None]  # reached at one seed of 3
  assert scoring.median(summary["half"]["steps"]) == math.inf
  assert all(n is None or n > 1 for n in summary["adamw"]["steps"])
  only_diverged = [r for r in runs if r["factor"] == 1.0]
  assert scoring.summarize(only_diverged, ["adamw", "half"], [0, 1, 2]) == {}


def test_one_median_target_per_workload_is_an_option():
  """target="median": every seed is scored against the median of the baseline's
  per-seed final losses (AlgoPerf's one target); a baseline seed that ends far
  higher no longer gives that seed a looser target of its own."""
  runs = [{"optimizer": "adamw", "factor": 1.0, "seed": s, **_ramp(end)}
          for s, end in ((0, 1.0), (1, 1.0), (2, 1.6))]
  runs += [{"optimizer": "soap", "factor": 1.0, "seed": s, **_ramp(1.3)} for s in (0, 1, 2)]
  per_seed = scoring.summarize(runs, ["adamw", "soap"], [0, 1, 2])
  one = scoring.summarize(runs, ["adamw", "soap"], [0, 1, 2], target="median")
  assert per_seed["soap"]["steps"][2] is not None  # its seed-2 target is 1.6's window
  assert one["soap"]["steps"] == [None, None, None]
  assert one["adamw"]["steps"][:2] == per_seed["adamw"]["steps"][:2]
  with pytest.raises(ValueError, match="target must be one of"):
    scoring.summarize(runs, ["adamw"], [0], target="mean")


def test_a_run_file_without_a_last_newline_keeps_its_runs(tmp_path, monkeypatch):
  """A hand-edited runs.jsonl whose last record has no newline: the next record
  was appended to that line, and the reload dropped the joined line, both runs."""
  calls = []
  monkeypatch.setattr(suite_train, "train", _fake_train(calls))
  run.main(_smoke_argv(tmp_path, "adamw", "1", "0"))
  path = tmp_path / "runs.jsonl"
  path.write_text(path.read_text().rstrip("\n"))
  run.main(_smoke_argv(tmp_path, "adamw", "1", "0,1"))
  lines = path.read_text().splitlines()
  assert len(calls) == 2 and len(lines) == 2
  assert sorted(json.loads(line)["seed"] for line in lines) == [0, 1]


def test_median_target_tables_score_the_median_target_beside_the_per_seed_ones(
    tmp_path, monkeypatch):
  """--target median writes its own table and summary, scored against one
  target (the runner passes the rule on), and leaves the per-seed ones as they were."""
  monkeypatch.setattr(suite_train, "train", _fake_train([]))
  argv = _smoke_argv(tmp_path, "adamw,muon", "1", "0,1")
  run.main(argv)
  per_seed = (tmp_path / "table_tuned_constant.md").read_text()
  run.main([*argv, "--target", "median", "--score-only"])
  text = (tmp_path / "table_tuned_constant_median_target.md").read_text()
  assert "one target, the median over seeds" in text
  assert (tmp_path / "table_tuned_constant.md").read_text() == per_seed
  runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
  expected = scoring.summarize(runs, ["adamw", "muon"], [0, 1], target="median")
  stored = json.loads((tmp_path / "summary_tuned_constant_median_target.json").read_text())
  assert stored["tabular_mlp"]["muon"]["steps"] == expected["muon"]["steps"]
  per_seed_steps = scoring.summarize(runs, ["adamw", "muon"], [0, 1])["muon"]["steps"]
  assert expected["muon"]["steps"] != per_seed_steps


def test_score_only_warns_of_a_run_file_of_several_revisions(tmp_path, monkeypatch):
  monkeypatch.setattr(suite_train, "train", _fake_train([]))
  argv = _smoke_argv(tmp_path, "adamw", "1", "0")
  run.main(argv)
  path = tmp_path / "runs.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  path.write_text("".join(json.dumps({**r, "revision": "deadbee"}) + "\n" for r in rows))
  run.main([*argv[:7], "0,1", *argv[8:]])
  with pytest.warns(UserWarning, match="holds runs of 2 revisions"):
    run.main([*argv[:7], "0,1", *argv[8:], "--score-only"])
