"""The race (issue 12): ``examples/char_lm.py --lr-factors F --seeds S``.

Every optimizer at every factor of its registry peak learning rates
(``name@2x`` in ``--optimizers``: that factor only) on every seed (batches and
initialisation), then per optimizer its best factor (lowest median final
train loss over the seeds), the final loss, the steps to the same seed's
AdamW final loss (AdamW at its own best factor) as min/median/max, their
ratio to the run's steps, ms/step and the wall-clock to it and its ratio to
AdamW's. Every run is appended to ``char_lm_race_runs.jsonl`` in ``--out``
and not run again when found there, so a race resumes and grows; the table
goes to ``char_lm_race.md``, the summary to ``char_lm_race.json``, curves at
the best factors to ``char_lm_race.png``.

The runs are the main job's (``examples.char_lm``: its corpus, model and
``train_one``), the entries the registry's (benchmarks/registry.py, at
``variant(name, factor)``). ``race`` is what ``char_lm.main`` calls for
``--lr-factors``/``--seeds``; ``race_summary`` and ``race_table`` also read
saved runs (notebooks/03_fourth_quadrant.ipynb), and benchmarks/race_*.py
race their own items through ``char_lm.main``.
"""

import dataclasses
import json
import pathlib
from typing import Mapping, Optional, Sequence

import numpy as np

from benchmarks import harness
from benchmarks.registry import Registry, run_label, split_factor, variant
from examples import char_lm


def race_items(config: char_lm.Config) -> list[tuple[str, float]]:
  """(registry name, lr factor) of every run of a seed: ``name@2x`` in
  ``--optimizers`` is that factor only, a plain name every ``--lr-factors``."""
  items = []
  for item in config.optimizers:
    name, factor = split_factor(item)
    items += [(name, f) for f in (config.lr_factors if factor is None else [factor])]
  return items


def race_runs(config: char_lm.Config, train_tokens, val_tokens, optimizers: Registry) -> dict:
  """Every run of the race: ``{seed: {label: curves}}``.

  Each seed draws its own batches and initialisation; within a seed every run
  starts from the same weights and sees the same batches. Runs are appended
  to ``char_lm_race_runs.jsonl`` in ``--out`` as they finish, and runs found
  there (same seed and label) are not run again, so a race can be resumed or
  extended with more optimizers.
  """
  config.out.mkdir(parents=True, exist_ok=True)
  cache = config.out / "char_lm_race_runs.jsonl"
  runs = {seed: {} for seed in config.seeds}
  for run in read_runs(cache, run_settings(config)):
    if run["seed"] in runs:
      runs[run["seed"]][run["label"]] = run
  for seed in config.seeds:
    todo = [(n, f) for n, f in race_items(config) if run_label(n, f) not in runs[seed]]
    if not todo:
      continue
    seeded = dataclasses.replace(config, seed=seed)
    train_batches = char_lm.sample_batches(
        train_tokens, config.steps, config.batch_size, config.context, seed)
    val_batches = char_lm.sample_batches(
        val_tokens, config.eval_batches, config.batch_size, config.context, seed + 1)
    initial = char_lm.initial_model(seeded)
    for name, f in todo:
      label = run_label(name, f)
      r = char_lm.train_one(label, seeded, initial, train_batches, val_batches,
                            {label: variant(name, f, registry=optimizers)})
      run = {"seed": seed, "label": label, "train_loss": r["train_loss"],
             "val_loss": r["val_loss"], "ms_per_step": r["ms_per_step"],
             "settings": run_settings(config), "revision": harness.git_revision()}
      runs[seed][label] = run
      with cache.open("a") as out:
        out.write(json.dumps(run) + "\n")
  return runs


# The settings a run's curves depend on besides its seed and label.
RUN_SETTINGS = ("steps", "batch_size", "context", "d_model", "num_layers", "num_heads",
                "corpus_mb", "eval_every", "eval_batches")


def run_settings(config: char_lm.Config) -> dict:
  return {name: getattr(config, name) for name in RUN_SETTINGS}


def read_runs(path: pathlib.Path, settings: dict) -> list[dict]:
  """The runs recorded in ``path`` (``harness.read_records``), each checked
  against the race's ``settings``: a run made with others is refused with
  both named, not scored as if it were this race's (a run file written
  before runs kept their settings is checked by its curve's length)."""
  runs = harness.read_records(path, ("seed", "label", "train_loss"))
  for number, run in runs:
    recorded = run.get("settings", {"steps": len(run["train_loss"])})
    differing = {k: (v, settings[k]) for k, v in recorded.items() if settings.get(k) != v}
    if differing:
      pairs = ", ".join(f"{k}={old!r} (this race: {new!r})" for k, (old, new) in differing.items())
      raise ValueError(f"{path}:{number}: run {run['label']!r} (seed {run['seed']}) was made"
                       f" with {pairs}; resume a race with the settings it was run with, or"
                       " give another --out")
  return [run for _, run in runs]


def race_summary(runs: dict, names: Sequence[str], steps: int,
                 reference: str = "adamw",
                 ms_per_step: Optional[Mapping[str, float]] = None) -> dict:
  """Per optimizer: the best lr factor and, there, steps and seconds to the reference.

  The best factor, among those run on every seed, minimises the median over
  seeds of the final train loss (mean over the last 10% of steps). The target of each seed is the
  reference's final train loss at its own best factor, on that seed's run.
  Steps to it: the first step at which the trailing-window mean reaches it
  (``steps_to_reach``; ``None``: not within ``steps``). Wall-clock: those
  steps times the run's median ms/step, or ``ms_per_step[name]`` when given
  (e.g. the round-robin timings of benchmarks/race_step_time.py).
  """
  window = char_lm.final_window(steps)
  final = lambda r: float(char_lm.smooth(r["train_loss"], window)[-1])
  seeds = list(runs)

  def best_factor(name):
    factors = [f for f in _factors_of(runs, name)
               if all(run_label(name, f) in runs[s] for s in seeds)]
    return min(factors, key=lambda f: float(np.median(
        [final(runs[s][run_label(name, f)]) for s in seeds])))

  reference_factor = best_factor(reference)
  targets = {s: final(runs[s][run_label(reference, reference_factor)]) for s in seeds}
  summary = {}
  for name in names:
    factor = best_factor(name)
    chosen = [runs[s][run_label(name, factor)] for s in seeds]
    reached = [char_lm.steps_to_reach(r["train_loss"], targets[s], window)
               for s, r in zip(seeds, chosen)]
    ms = ([ms_per_step[name]] * len(chosen) if ms_per_step is not None
          else [r["ms_per_step"] for r in chosen])
    seconds = [None if n is None else n * m / 1e3 for n, m in zip(reached, ms)]
    summary[name] = {
        "lr_factor": factor,
        "final_loss": [final(r) for r in chosen],
        "steps": reached,
        "ms_per_step": ms,
        "seconds": seconds,
    }
  reference_seconds = np.median([steps * m / 1e3 for m in summary[reference]["ms_per_step"]])
  for entry in summary.values():
    entry["steps_ratio"] = _median_or_none(entry["steps"], steps)
    entry["seconds_ratio"] = _median_or_none(entry["seconds"], reference_seconds)
  return summary


def factors_run(runs: dict, names: Sequence[str]) -> str:
  """The factors each of ``names`` was run at on every seed, in words: a run
  file resumed with other ``--lr-factors`` holds more than this command's."""
  def on_every_seed(name):
    return [f for f in _factors_of(runs, name)
            if all(run_label(name, f) in by_label for by_label in runs.values())]
  return "; ".join(f"{name} {'/'.join(f'{f:g}' for f in on_every_seed(name))}x" for name in names)


def _factors_of(runs: dict, name: str) -> list[float]:
  """The lr factors ``name`` was run at (labels ``name`` and ``name@{f}x``)."""
  factors = set()
  for by_label in runs.values():
    for label in by_label:
      base, factor = split_factor(label)
      if base == name:
        factors.add(factor or 1.0)
  return sorted(factors)


def _median_or_none(values, scale) -> Optional[float]:
  """Median of ``values`` / ``scale``; a value ``None`` (not reached) counts as +inf."""
  median = float(np.median([np.inf if v is None else v for v in values]))
  return None if not np.isfinite(median) else median / scale


def race_table(summary: dict, steps: int, reference: str = "adamw") -> str:
  """The race as a markdown table (median over seeds unless min/median/max)."""
  lines = [f"| optimizer | best lr × | final loss | steps to {reference}'s final loss"
           f" (min/median/max) | × {steps} steps | ms/step | s to it | × {reference}'s s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  show = lambda v: "—" if v is None else f"{v:.2f}"
  for name, e in summary.items():
    reached = [np.inf if n is None else n for n in e["steps"]]
    spread = "/".join("—" if not np.isfinite(v) else f"{v:.0f}"
                      for v in (min(reached), np.median(reached), max(reached)))
    seconds = [np.inf if v is None else v for v in e["seconds"]]
    median_s = float(np.median(seconds))
    lines.append(
        f"| {name} | {e['lr_factor']:g} | {np.median(e['final_loss']):.4f} | {spread}"
        f" | {show(e['steps_ratio'])} | {np.median(e['ms_per_step']):.1f}"
        f" | {show(median_s if np.isfinite(median_s) else None)}"
        f" | {show(e['seconds_ratio'])} |")
  return "\n".join(lines)


def plot_race(runs: dict, summary: dict, path: pathlib.Path) -> None:
  """Loss vs step and vs seconds of each optimizer at its best lr (first seed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  first = runs[next(iter(runs))]
  fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for name, e in summary.items():
    r = first[run_label(name, e["lr_factor"])]
    loss = char_lm.smooth(r["train_loss"], max(1, len(r["train_loss"]) // 25))
    steps = np.arange(1, len(loss) + 1)
    by_step.plot(steps, loss, label=f"{name} (lr ×{e['lr_factor']:g})")
    by_time.plot(steps * r["ms_per_step"] / 1e3, loss, label=name)
  by_step.set(xlabel="step", ylabel="train cross-entropy (nats/char)")
  by_time.set(xlabel="seconds (steps × median ms/step)")
  top = float(np.median(first[run_label("adamw", summary["adamw"]["lr_factor"])]
                        ["train_loss"][:20]))
  by_step.set_ylim(top=min(top, by_step.get_ylim()[1]))
  by_step.legend(fontsize=8)
  fig.suptitle("race at the best lr of each optimizer (first seed)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def race(config: char_lm.Config, train_tokens, val_tokens, optimizers: Registry) -> dict:
  """Runs, summarises, prints and writes the race (``--lr-factors``, ``--seeds``)."""
  names = list(dict.fromkeys(split_factor(item)[0] for item in config.optimizers))
  if "adamw" not in names:
    names.insert(0, "adamw")
    config = dataclasses.replace(config, optimizers=("adamw", *config.optimizers))
  runs = race_runs(config, train_tokens, val_tokens, optimizers)
  summary = race_summary(runs, names, config.steps)
  table = race_table(summary, config.steps)
  header = (f"d_model {config.d_model}, {config.num_layers} layers, {config.steps} steps,"
            f" lr factors {list(config.lr_factors)}, seeds {list(config.seeds)}; each best lr"
            f" among the factors run on every seed ({factors_run(runs, names)})\n\n")
  print(f"\n{header}{table}")
  config.out.mkdir(parents=True, exist_ok=True)
  (config.out / "char_lm_race.md").write_text(header + table + "\n")
  (config.out / "char_lm_race.json").write_text(json.dumps(
      {"config": {**dataclasses.asdict(config), "out": str(config.out)},
       "summary": summary}, indent=1))
  plot_race(runs, summary, config.out / "char_lm_race.png")
  print(f"wrote {config.out}/char_lm_race.{{png,md,json}}")
  return summary
