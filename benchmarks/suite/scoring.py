"""From runs to scores: steps to tuned AdamW's target, performance profiles, tables, plots.

The target of a (workload, schedule, seed) is tuned AdamW's final train loss
there (the mean over the last 10% of steps, ``char_lm.final_window``), AdamW
tuned as every optimizer is: its best factor minimises the median over seeds
of the final train loss. Given ``baseline_variants`` (registry names of AdamW
with other hyper-parameters, e.g. ``adamw:wd=0``), AdamW is tuned over them
too: the target is set by the best (variant, factor) (the lowest median
final loss). Every ratio's denominator, the AdamW column of the tuned
ruleset and the ``tuned adamw`` column of the fixed one, is AdamW scored
as every optimizer is under ``tuned``: the (variant, factor) that reaches
that target in the fewest median steps (its cell names the variant); so
the same runs read the same ratio under both rulesets. Only a (variant, factor)
finite at every seed may set the target (a diverged seed's inf target was
"reached" at step 1 by every run). ``target="median"``: one target for every
seed, the median of that configuration's final losses, as AlgoPerf sets one
target per workload (the default, ``"seed"``, gives each seed its own: an
outlier seed of the baseline then sets a looser target for that seed alone).
An optimizer's steps to
the target: the first step at which its trailing-window train loss reaches it
(``char_lm.steps_to_reach``); its wall-clock: those steps times the run's
ms/step. Under the ``tuned`` ruleset an optimizer's factor is the one with
the fewest median steps (ties: lowest median final loss); under ``fixed`` it
is the one factor it was given.
A performance profile (Dolan and Moré 2002, as AlgoPerf uses it) gives, per
optimizer, the fraction of workloads it solves within τ times the best
optimizer's time there; the score is its area over τ in [1, TAU_MAX],
divided by TAU_MAX - 1 (1: fastest everywhere, 0: never within TAU_MAX).
"""

import math
from collections import defaultdict
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from examples import char_lm

REFERENCE = "adamw"
TARGET = "tuned adamw"  # the fixed ruleset's denominator (summarize)
TAU_MAX = 4.0
TAUS = np.linspace(1.0, TAU_MAX, 301)


def final_loss(run: dict) -> float:
  """The mean train loss over the last 10% of steps (inf when not finite)."""
  loss = char_lm.smooth(run["train_loss"], char_lm.final_window(len(run["train_loss"])))[-1]
  return float(loss) if math.isfinite(loss) else math.inf


def median(values: Iterable[Optional[float]]) -> float:
  """Median with ``None`` counted as never (inf)."""
  return float(np.median([math.inf if v is None else v for v in values]))


def by_factor(runs: Sequence[dict], optimizer: str, seeds: Sequence[int]) -> dict:
  """``{factor: [run per seed]}`` for the factors run on every seed."""
  found = defaultdict(dict)
  for run in runs:
    if run["optimizer"] == optimizer:
      found[run["factor"]][run["seed"]] = run
  return {f: [r[s] for s in seeds] for f, r in found.items() if all(s in r for s in seeds)}


def steps_to(run: dict, target: float) -> Optional[int]:
  window = char_lm.final_window(len(run["train_loss"]))
  return char_lm.steps_to_reach(run["train_loss"], target, window)


TARGET_RULES = ("seed", "median")


def summarize(runs: Sequence[dict], optimizers: Sequence[str], seeds: Sequence[int],
              fixed: Optional[Mapping[str, float]] = None,
              baseline_variants: Sequence[str] = (), target: str = "seed") -> dict:
  """Per optimizer, on the runs of one (workload, schedule): its factor and scores.

  ``fixed``: optimizer -> factor (the fixed ruleset); ``None``: tuned.
  ``baseline_variants``: AdamW variants the baseline is tuned over besides its
  factor. ``target``: ``"seed"`` (each seed's own) or ``"median"`` (one, the
  median over seeds). Returns ``{optimizer: {"factor", "at_edge" (the factor is the grid's
  smallest or largest: widen the grid), "steps", "seconds" (per seed),
  "final_loss", "eval_loss", "eval_accuracy" (medians)}}``, AdamW's entry
  with its ``"variant"``; optimizers without runs on every seed are left out,
  and all of them when AdamW has none (or none finite at every seed).
  """
  if target not in TARGET_RULES:
    raise ValueError(f"target must be one of {TARGET_RULES}, got {target!r}")
  baseline = {(name, f): rs for name in (REFERENCE, *baseline_variants)
              for f, rs in by_factor(runs, name, seeds).items()
              if all(math.isfinite(final_loss(r)) for r in rs)}
  if not any(name == REFERENCE for name, _ in baseline):
    return {}
  best = min(baseline, key=lambda key: median(final_loss(r) for r in baseline[key]))
  targets = [final_loss(r) for r in baseline[best]]
  if target == "median":
    targets = [median(targets)] * len(targets)
  tuned = _tuned_baseline(runs, (REFERENCE, *baseline_variants), seeds, targets)
  summary = {}
  for name in optimizers:
    candidates = by_factor(runs, name, seeds)
    if fixed is not None:
      candidates = {f: r for f, r in candidates.items() if f == fixed[name]}
    if name == REFERENCE and fixed is None:
      summary[name] = tuned
    elif candidates:
      summary[name] = _entry(candidates, targets)
  if fixed is not None:
    # The ratios' denominator stays tuned AdamW, whatever factor AdamW is fixed at.
    summary[TARGET] = tuned
  return summary


def _tuned_baseline(runs: Sequence[dict], variants: Sequence[str], seeds: Sequence[int],
                    targets: Sequence[float]) -> dict:
  """The fastest of AdamW's variants to ``targets``, each at its best factor."""
  entries = [{**_entry(by_factor(runs, name, seeds), targets), "variant": name}
             for name in variants if by_factor(runs, name, seeds)]
  return min(entries, key=lambda e: (median(e["steps"]), e["final_loss"]))


def _entry(candidates: Mapping[float, Sequence[dict]], targets: Sequence[float]) -> dict:
  """The best of ``candidates`` (factor -> runs, one per seed) at reaching ``targets``."""
  scored = {f: [steps_to(r, t) for r, t in zip(rs, targets)] for f, rs in candidates.items()}
  factor = min(candidates, key=lambda f: (
      median(scored[f]), median(final_loss(r) for r in candidates[f])))
  chosen = candidates[factor]
  return {
      "factor": factor, "at_edge": len(candidates) > 1 and factor in (
          min(candidates), max(candidates)),
      "steps": scored[factor],
      "seconds": [None if n is None else n * r["ms_per_step"] / 1e3
                  for n, r in zip(scored[factor], chosen)],
      "final_loss": median(final_loss(r) for r in chosen),
      "eval_loss": median(r["eval_loss"][-1] for r in chosen),
      "eval_accuracy": float(np.median([r["eval_accuracy"][-1] for r in chosen])),
  }


def performance_profile(times: Mapping[str, Sequence[float]],
                        taus: np.ndarray = TAUS) -> dict[str, np.ndarray]:
  """ρ_o(τ): the fraction of workloads optimizer o solves within τ× the best time.

  ``times``: optimizer -> one time per workload (``inf`` or ``None``: not solved).
  """
  table = np.array([[math.inf if t is None else t for t in row] for row in times.values()])
  best = table.min(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratios = np.where(np.isfinite(table), table / best, math.inf)
  return {name: (ratios[i][:, None] <= taus[None]).mean(axis=0)
          for i, name in enumerate(times)}


def profile_score(profile: np.ndarray, taus: np.ndarray = TAUS) -> float:
  """The area under a profile over [1, τ_max], over τ_max - 1."""
  return float(np.trapezoid(profile, taus) / (taus[-1] - taus[0]))


def _cell(entry: Optional[dict], reference: Optional[dict]) -> str:
  if entry is None:
    return "—"
  ratio = lambda key: median(entry[key]) / median(reference[key]) if reference else math.nan
  if math.isinf(ratio("steps")):
    return f"not reached @{entry['factor']:g} · {entry['final_loss']:.3f}"
  reached = [x for x in entry["steps"] if x is not None]
  span = f"{min(reached)}–{max(reached)}" if reached else "—"
  edge = "†" if entry.get("at_edge") else ""
  variant = entry.get("variant", REFERENCE)
  factor = f"{entry['factor']:g}{edge}" + (f" {variant}" if variant != REFERENCE else "")
  return (f"{ratio('steps'):.2f}× / {ratio('seconds'):.2f}× ({span}) @{factor}"
          f" · {entry['final_loss']:.3f} · {entry['eval_accuracy']:.3f}")


def table(summaries: Mapping[str, dict], optimizers: Sequence[str]) -> str:
  """Markdown: per workload and optimizer, median steps and wall-clock to the target
  over tuned AdamW's (min–max steps over the seeds that reach it: a seed that
  does not is left out of the span, not of the median), the lr factor (†: at the grid's
  edge), final train loss and held-out accuracy (medians); then the aggregate scores."""
  lines = ["| workload | " + " | ".join(optimizers) + " |",
           "|---|" + "---:|" * len(optimizers)]
  for workload, summary in summaries.items():
    reference = summary.get(TARGET, summary.get(REFERENCE))
    cells = [_cell(summary.get(o), reference) for o in optimizers]
    lines.append(f"| {workload} | " + " | ".join(cells) + " |")
  for label, key in (("score (steps)", "steps"), ("score (wall-clock)", "seconds")):
    profiles = aggregate(summaries, optimizers, key)
    lines.append(f"| **{label}** | " + " | ".join(
        f"{profile_score(profiles[o]):.3f}" for o in optimizers) + " |")
  denominator = lambda s: median(s.get(TARGET, s.get(REFERENCE))["steps"])
  ratios = {o: [median(s[o]["steps"]) / denominator(s) for s in summaries.values()
                if o in s and (TARGET in s or REFERENCE in s)] for o in optimizers}
  lines.append("| **geomean steps ratio** | " + " | ".join(
      f"{math.exp(np.mean(np.log(r))):.2f}×" if r else "—" for r in ratios.values()) + " |")
  return "\n".join(lines)


def aggregate(summaries: Mapping[str, dict], optimizers: Sequence[str], key: str) -> dict:
  """Performance profiles over workloads of the median ``key`` ("steps"/"seconds")."""
  times = {o: [median(s[o][key]) if o in s else math.inf for s in summaries.values()]
           for o in optimizers}
  return performance_profile(times)


def plot_profiles(summaries: Mapping[str, dict], optimizers: Sequence[str], title: str,
                  path) -> None:
  """Performance profiles by steps and by wall-clock, side by side, to ``path`` (PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for ax, key in zip(axes, ("steps", "seconds")):
    for name, profile in aggregate(summaries, optimizers, key).items():
      ax.step(TAUS, profile, where="post", label=f"{name} ({profile_score(profile):.2f})")
    ax.set(xlabel="τ (× the best optimizer's " + ("steps" if key == "steps" else "wall-clock")
           + " to tuned AdamW's target)", xlim=(1, TAU_MAX), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f"fraction of {len(summaries)} workloads solved")
  axes[1].legend(fontsize=8, loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
