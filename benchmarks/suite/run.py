"""The suite's one command: every run of a ruleset, resumable, then tables and plots.

  python -m benchmarks.suite.run                                  # the tuned race, all workloads
  python -m benchmarks.suite.run --ruleset fixed --optimizers adamw,muon@1x,soap@0.5x
  python -m benchmarks.suite.run --workloads tabular_mlp --optimizers adamw,muon \\
      --factors 1 --seeds 0 --steps 20 --out /tmp/smoke          # a smoke run, seconds
  python -m benchmarks.suite.run --baseline-variants adamw:wd=0,adamw:wd=0.3 --score-only

Rulesets (AlgoPerf-style). ``tuned``: every optimizer at every ``--factors``
times its registry peak learning rates (benchmarks/registry.py's
``OPTIMIZERS`` and ``variant``), on every seed, scored at its best factor per
workload. ``fixed``: one factor per optimizer for every workload
(``name@Fx`` in ``--optimizers``, a plain name: 1x); AdamW still runs its
grid, which sets the target. AdamW's grid is ``--target-factors`` (default:
``--factors``): a wider one keeps its best factor off the grid's edge, so the
target is not set by an under-tuned baseline; ``--baseline-variants`` tunes it
over other hyper-parameters too (registry variants of AdamW on the same grid,
the best (variant, factor) sets the target). Every finished run is one JSON
line in ``<out>/runs.jsonl``; a rerun skips the runs found there. Written
per (ruleset, schedule): ``table_<ruleset>_<schedule>.md``,
``profiles_<ruleset>_<schedule>.png`` and ``summary_<ruleset>_<schedule>.json``,
but not over tables that score workloads or optimizers this run does not (a
smoke run left in the default ``--out``, the committed results): those are
printed only, unless ``--replace-tables``.
"""

import argparse
import json
import os
import pathlib
import warnings
from typing import Iterable, Optional, Sequence

import tqdm

from benchmarks import harness, registry
from benchmarks.suite import WORKLOADS, scoring
from benchmarks.suite import train as suite_train
from benchmarks.suite.workload import SCHEDULES

DEFAULT_OUT = pathlib.Path(__file__).parent / "results"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--optimizers", default="adamw,muon,adamuon,soap",
                      help="registry names (examples/char_lm.py --list); fixed: name@Fx")
  parser.add_argument("--ruleset", choices=("tuned", "fixed"), default="tuned")
  parser.add_argument("--factors", default="0.5,1,2",
                      help="lr factors of the tuned grid")
  parser.add_argument("--target-factors", default=None,
                      help="lr factors of AdamW's grid, which sets the target (default: --factors)")
  parser.add_argument("--baseline-variants", default="",
                      help="AdamW variants (registry names, e.g. adamw:wd=0) the target's AdamW is"
                      " also tuned over, each on AdamW's grid")
  parser.add_argument("--target", choices=scoring.TARGET_RULES, default="seed",
                      help="each seed's own target (seed), or one per workload, the median over"
                      " seeds (median, AlgoPerf's; tables get a _median_target suffix)")
  parser.add_argument("--score-only", action="store_true",
                      help="run nothing: score the runs found in --out")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--schedules", default="warmup_cosine,constant")
  parser.add_argument("--steps", type=int, default=None,
                      help="override every workload's step budget (smoke runs)")
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
  parser.add_argument("--replace-tables", action="store_true",
                      help="write the tables even over ones that score more workloads or"
                      " optimizers (a partial run in the committed folder does not, by default)")
  args = parser.parse_args(argv)

  def numbers(option, text, kind):
    try:
      return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
      parser.error(f"{option} takes comma-separated {kind.__name__}s, got {text!r}")

  args.workloads = tuple(w for w in args.workloads.split(",") if w)
  args.factors = numbers("--factors", args.factors, float)
  args.seeds = numbers("--seeds", args.seeds, int)
  args.target_factors = (args.factors if args.target_factors is None
                         else numbers("--target-factors", args.target_factors, float))
  args.schedules = tuple(s for s in args.schedules.split(",") if s)
  args.baseline_variants = tuple(v for v in args.baseline_variants.split(",") if v)
  try:
    items = [registry.split_factor(item) for item in args.optimizers.split(",") if item]
    registry.check_factors("--factors", args.factors)
    registry.check_factors("--target-factors", args.target_factors)
  except ValueError as error:
    parser.error(str(error))
  args.optimizers = tuple(name for name, _ in items)
  repeated = sorted({name for name in args.optimizers if args.optimizers.count(name) > 1})
  if repeated:
    parser.error(f"--optimizers names {', '.join(repeated)} more than once (one factor each)")
  args.fixed = {name: 1.0 if factor is None else factor for name, factor in items}
  check(parser, args, items)
  return args


def check(parser: argparse.ArgumentParser, args: argparse.Namespace, items: list) -> None:
  """Every option's values runnable, before the first run: a long race must
  not stop hours in on a name or a number it could have refused at once."""
  unknown = ({w for w in args.workloads if w not in WORKLOADS}
             | {o for o in (*args.optimizers, *args.baseline_variants)
                if o not in registry.OPTIMIZERS})
  if unknown:
    parser.error(f"unknown names: {', '.join(sorted(unknown))}")
  unsupported = [o for o in args.optimizers if o in suite_train.NEEDS_EXTRA_ARGS]
  if unsupported:
    parser.error(f"{', '.join(unsupported)}: their updates need the training step's grad_fn"
                 " or records, which the suite's workloads do not give")
  schedules = [s for s in args.schedules if s not in SCHEDULES]
  if schedules:
    parser.error(f"--schedules: unknown {', '.join(schedules)} (one of {', '.join(SCHEDULES)})")
  for option, value in (("--steps", args.steps), ("--eval-every", args.eval_every)):
    if value is not None and value < 1:
      parser.error(f"{option} must be at least 1, got {value}")
  for option, values in (("--factors", args.factors), ("--seeds", args.seeds),
                         ("--target-factors", args.target_factors),
                         ("--workloads", args.workloads), ("--schedules", args.schedules)):
    if not values:
      parser.error(f"{option} is empty")
  if scoring.REFERENCE not in args.optimizers:
    parser.error(f"--optimizers must include {scoring.REFERENCE}: it sets every workload's"
                 " target and every ratio's denominator (its column is the tuned baseline)")
  with_factor = [f"{n}@{f:g}x" for n, f in items if f is not None]
  if args.ruleset == "tuned" and with_factor:
    parser.error(f"{', '.join(with_factor)}: a name@Fx factor is the fixed ruleset's"
                 " (--ruleset fixed); the tuned ruleset runs every name on --factors")


def run_key(run: dict) -> tuple:
  return (run["workload"], run["schedule"], run["optimizer"], run["factor"], run["seed"],
          run["steps"], run.get("lr_scale", 1.0))


def baseline(args: argparse.Namespace) -> tuple[str, ...]:
  """AdamW and the variants it is tuned over: together they set the target."""
  return (scoring.REFERENCE, *args.baseline_variants)


def grid(args: argparse.Namespace, name: str) -> tuple[float, ...]:
  """The lr factors ``name`` is tuned over: the baseline's ``--target-factors``,
  others' ``--factors``."""
  return args.target_factors if name in baseline(args) else args.factors


def planned(args: argparse.Namespace, workloads: dict) -> list[dict]:
  """Every run the ruleset needs, as the key fields of its record."""
  runs = []
  for workload in args.workloads:
    for schedule in args.schedules:
      for seed in args.seeds:
        for name in dict.fromkeys((*baseline(args), *args.optimizers)):
          factors = grid(args, name) if args.ruleset == "tuned" or name in baseline(args) else ()
          if args.ruleset == "fixed" and name in args.fixed:
            factors = tuple(dict.fromkeys((*factors, args.fixed[name])))
          runs += [{"workload": workload, "schedule": schedule, "optimizer": name,
                    "factor": f, "seed": seed, "steps": workloads[workload].steps,
                    "lr_scale": workloads[workload].lr_scale} for f in factors]
  return runs


# What scoring a run reads: its key and its curve.
RECORD_KEYS = ("workload", "schedule", "optimizer", "factor", "seed", "steps", "train_loss")


def load_runs(path: pathlib.Path) -> dict[tuple, dict]:
  """The finished runs of ``path`` (``harness.read_records``), by key."""
  return {run_key(run): run for _, run in harness.read_records(path, RECORD_KEYS)}


def execute(todo: list[dict], workloads: dict, path: pathlib.Path, eval_every: int) -> None:
  """Runs ``todo``, appending each finished run to ``path``."""
  bar = tqdm.tqdm(todo, desc="suite", unit="run")
  revision = harness.git_revision(exclude=[path.parent]) if todo else None
  for plan in bar:
    bar.set_postfix_str(f"{plan['workload']} {plan['schedule']} {plan['optimizer']}"
                        f"@{plan['factor']:g}x seed {plan['seed']}")
    workload = workloads[plan["workload"]]
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      tx = suite_train.make_optimizer(plan["optimizer"], plan["factor"] * workload.lr_scale,
                                      plan["schedule"], workload.steps, workload.matrix_view)
      result = suite_train.train(workload, tx, plan["seed"], eval_every)
    view = workload.matrix_view is not None and suite_train.takes_keywords(plan["optimizer"])
    record = {**plan, **result, "matrix_view": "workload's" if view else "entry's default",
              "warnings": sorted({str(w.message)[:200] for w in caught}),
              "load_average": os.getloadavg()[0], "revision": revision}
    with path.open("a") as out:
      if out.tell() and not path.read_bytes().endswith(b"\n"):
        out.write("\n")  # a hand-edited file: a record appended to its last line is lost
      out.write(json.dumps(record) + "\n")


def warn_of_other_revisions(runs: Iterable[dict], revision: str) -> None:
  """Warns when the runs found were made by other code than ``revision``'s: a
  table over them and the new runs mixes two libraries (a routing change
  moves an optimizer's curves, not AdamW's)."""
  others = sorted({run.get("revision") or "unrecorded" for run in runs} - {revision})
  if others:
    warnings.warn(f"the runs found were made at {', '.join(others)}, the new ones at {revision}:"
                  " the tables score them together (give another --out to keep them apart)",
                  stacklevel=2)


def report(args: argparse.Namespace, runs: dict, workloads: dict) -> dict:
  """Writes and prints the table and plot of each schedule; returns the summaries."""
  names = args.optimizers
  fixed = args.fixed if args.ruleset == "fixed" else None
  results = {}
  for schedule in args.schedules:
    summaries = {}
    for workload in args.workloads:
      w = workloads[workload]
      chosen = [r for k, r in runs.items() if k[:2] == (workload, schedule)
                and k[5:] == (w.steps, w.lr_scale) and r["seed"] in args.seeds
                and (r["factor"] in grid(args, r["optimizer"])
                     or (fixed and r["factor"] == fixed.get(r["optimizer"])))]
      summary = scoring.summarize(chosen, names, args.seeds, fixed, args.baseline_variants,
                                  target=args.target)
      if summary:
        summaries[workload] = summary
      else:
        print(f"{workload}, {schedule}: not scored, AdamW has no runs on every seed"
              f" {list(args.seeds)} at one factor in {args.out / 'runs.jsonl'}")
    if not summaries:
      continue
    stem = f"{args.ruleset}_{schedule}" + ("_median_target" if args.target == "median" else "")
    tuned_over = "".join(f", {v}" for v in args.baseline_variants)
    one_target = "; one target, the median over seeds" if args.target == "median" else ""
    text = (f"{args.ruleset} ruleset, {schedule}, seeds {list(args.seeds)}, factors"
            f" {list(args.factors)} (AdamW{tuned_over}: {list(args.target_factors)}){one_target};"
            " cell: median steps"
            " / wall-clock to tuned AdamW's target over AdamW's (min–max steps) @factor"
            " · final train loss · held-out accuracy\n\n"
            + scoring.table(summaries, names))
    print(f"\n{text}")
    covered = dropped_from(args.out / f"summary_{stem}.json", summaries)
    if covered and not args.replace_tables:
      print(f"not written: {args.out}'s {stem} tables cover {covered}, which this run does not"
            " (give another --out, or --replace-tables)")
      results[schedule] = summaries
      continue
    (args.out / f"table_{stem}.md").write_text(text + "\n")
    (args.out / f"summary_{stem}.json").write_text(json.dumps(summaries, indent=1))
    scoring.plot_profiles(summaries, names, f"{args.ruleset} ruleset, {schedule}",
                          args.out / f"profiles_{stem}.png")
    results[schedule] = summaries
  return results


def dropped_from(path: pathlib.Path, summaries: dict) -> str:
  """What the summary at ``path`` scores that ``summaries`` do not (workloads,
  optimizers), in words; empty if nothing (or no file)."""
  if not path.exists():
    return ""
  old = json.loads(path.read_text())
  workloads = sorted(set(old) - set(summaries))
  names = lambda s: {name for by_name in s.values() for name in by_name}
  optimizers = sorted(names(old) - names(summaries))
  return "; ".join(f"{kind} {', '.join(items)}" for kind, items in
                   (("workloads", workloads), ("optimizers", optimizers)) if items)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Runs what is missing, then reports; returns ``{schedule: {workload: summary}}``."""
  args = parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  overrides = {} if args.steps is None else {"steps": args.steps}
  workloads = {name: WORKLOADS[name](**overrides) for name in args.workloads}
  path = args.out / "runs.jsonl"
  finished = load_runs(path)
  todo = [plan for plan in planned(args, workloads) if run_key(plan) not in finished]
  if args.score_only:
    print(f"--score-only: {len(todo)} planned runs not found in {path} are left out")
    todo = []
    revisions = sorted({run.get("revision") or "unrecorded" for run in finished.values()})
    if len(revisions) > 1:
      warnings.warn(f"{path} holds runs of {len(revisions)} revisions"
                    f" ({', '.join(revisions[:6])}{', ...' if len(revisions) > 6 else ''}):"
                    " a table may score several of them together", stacklevel=2)
  print(f"{len(todo)} runs to do, {len(finished)} found in {path};"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
  if todo:
    warn_of_other_revisions(finished.values(), harness.git_revision(exclude=[args.out]))
  execute(todo, workloads, path, args.eval_every)
  return report(args, load_runs(path), workloads)


if __name__ == "__main__":
  main()
