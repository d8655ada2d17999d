"""What every benchmark shares: the donated step, the timer, the machine banner, the tables.

A *contender* is a callable that runs one step (or one window of steps) and
blocks until it is done; ``time_round_robin`` times a dict of them
interleaved in one process, so that load from elsewhere on the machine hits
them all alike, and ``ratio_table`` prints min and median against an anchor.

  # stepper: donated_step(tx) (jitted, params and state donated) as a contender
  times = time_round_robin({"optax": stepper(optax.adamw(1e-3), params, grads),
                            "gradtx": stepper(go.adamw(1e-3), params, grads)},
                           rounds=30)
  print(machine_banner()); print(ratio_table(times, anchor="optax"))
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.workloads import params_and_grads, parse_workload

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERSIONS = ("jax", "jaxlib", "optax", "flax", "torch")
ENVIRONMENT = ("XLA_FLAGS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")

Step = Callable  # step(params, state, grads) -> (params, state)


# ------------------------------------------------------------ the step


def update_then_apply(tx: optax.GradientTransformation, **extra_args) -> Step:
  """``step(params, state, grads)``: ``tx.update`` and ``optax.apply_updates``.

  ``extra_args`` go to ``tx.update`` (SAM's ``grad_fn``).
  """

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra_args)
    return optax.apply_updates(params, updates), state

  return step


def donated(step: Step):
  """``jax.jit(step)`` with params and state donated: no copies of either.

  ``.lower(params, state, grads).compile(options)`` it for compiler options,
  the compiled HLO or a memory analysis.
  """
  return jax.jit(step, donate_argnums=(0, 1))


def donated_step(tx: optax.GradientTransformation, **extra_args):
  """The one timed step of an optimizer: update + apply, jitted, donated."""
  return donated(update_then_apply(tx, **extra_args))


class Stepper:
  """A contender from a compiled step: each call runs ``steps`` steps, then blocks.

  Carries (params, state) from call to call (they are donated), on the same
  ``grads`` every step; ``params`` holds the latest parameters.
  """

  def __init__(self, step: Step, params, state, grads, *, steps: int = 1):
    self.step, self.params, self.state, self.grads = step, params, state, grads
    self.steps = steps

  def __call__(self) -> None:
    for _ in range(self.steps):
      self.params, self.state = self.step(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))


def stepper(
    tx: optax.GradientTransformation, params, grads, *, steps: int = 1, **extra_args
) -> Stepper:
  """``tx``'s donated step as a contender, from a copy of ``params`` (kept intact)."""
  params = jax.tree.map(jnp.copy, params)
  return Stepper(donated_step(tx, **extra_args), params, tx.init(params), grads,
                 steps=steps)


# ----------------------------------------------------------- the timer


def shuffled_rounds(
    names: Sequence[str], rounds: int, *, seed: int = 0
) -> Iterator[list[str]]:
  """``rounds`` orders of ``names``, a fresh random permutation each round.

  torch's OpenMP workers keep spinning for a while after a step and slow
  down whatever runs next: a fixed order made whichever implementation
  always followed torch 10-15% slower (RESULTS.md, step time).
  """
  rng = np.random.default_rng(seed)
  for _ in range(rounds):
    yield [names[i] for i in rng.permutation(len(names))]


def time_round_robin(
    contenders: Mapping[str, Callable[[], object]], *, rounds: int,
    warmup: int = 3, seed: int = 0,
) -> dict[str, list[float]]:
  """Seconds of each call of each contender, one call of each per round.

  First ``warmup`` untimed calls of each (compilation, first-step work),
  then ``rounds`` rounds in a new random order every round.
  """
  for contender in contenders.values():
    for _ in range(warmup):
      contender()
  times = {name: [] for name in contenders}
  for order in shuffled_rounds(list(contenders), rounds, seed=seed):
    for name in order:
      start = time.perf_counter()
      contenders[name]()
      times[name].append(time.perf_counter() - start)
  return times


def pairs_main(argv, description: str, names: Sequence[str],
               contender: Callable[[str, str, dict, dict], Stepper]) -> None:
  """A pairs benchmark's command line: each name's gradtx and optax steps on
  ``--workload`` (``workloads.parse_workload``), timed round robin together for
  ``--rounds`` rounds; each gradtx row's ratios are to its optax row.

  ``contender(name, library, params, grads)``: the stepper of ``name``'s
  ``library`` side ("gradtx" or "optax").
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--workload", default="gpt")
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--only", nargs="+", choices=list(names), default=list(names),
                      help="the pairs to time (default: all)")
  args = parser.parse_args(argv)
  if args.rounds < 1:
    parser.error(f"--rounds must be >= 1, got {args.rounds}")
  workload = parse_workload(args.workload)
  params, grads = params_and_grads(workload)
  print(machine_banner())
  print(f"\n{workload.name}: {workload.num_params / 1e6:.2f}M params, {args.rounds} rounds\n")
  contenders = {f"{name} {library}": contender(name, library, params, grads)
                for name in args.only for library in ("gradtx", "optax")}
  times = time_round_robin(contenders, rounds=args.rounds)
  anchors = {f"{name} gradtx": f"{name} optax" for name in args.only}
  print(ratio_table(times, anchor=anchors, label="optimizer"))
  print()
  print(closing_line())


def amortized(seconds: Sequence[float], window: int) -> float:
  """The median over consecutive windows of ``window`` calls of each window's mean.

  A step with periodic work (SOAP's or Shampoo's refresh every 10 steps) is
  an outlier that the median of single calls drops, so a median understates
  such an optimizer's wall-clock. Each window of consecutive calls as long as
  the period holds one refresh, so its mean is the amortized cost; the median
  over windows keeps a load spike from elsewhere out of it, given three
  windows or more (of two it is their mean). A trailing partial window is
  left out.
  """
  if window < 1 or len(seconds) < window:
    raise ValueError(f"window must be in [1, {len(seconds)}] (the calls timed), got {window}")
  whole = len(seconds) // window * window
  return float(np.median(np.reshape(np.asarray(seconds[:whole]), (-1, window)).mean(axis=1)))


# ---------------------------------------------------------- the banner


def _cpu_model() -> str:
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  except OSError:
    return platform.processor() or platform.machine()
  fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  model = fields.get("Model name", platform.processor() or platform.machine())
  if "CPU family" in fields:
    model += f" (family {fields['CPU family']} model {fields.get('Model', '?')})"
  return model


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "absent"


def git_revision(exclude: Sequence[pathlib.Path] = ()) -> str:
  """The checkout's commit (short), with " with uncommitted changes" if dirty
  outside ``exclude`` (a benchmark's own run files in the checkout)."""
  try:
    run = lambda *args: subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    inside = [pathlib.Path(p).resolve() for p in exclude]
    skipped = [f":(exclude){p.relative_to(ROOT)}" for p in inside if p.is_relative_to(ROOT)]
    dirty = (" with uncommitted changes"
             if run("status", "--porcelain", "--", ".", *skipped).strip() else "")
    return run("rev-parse", "--short", "HEAD").strip() + dirty
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _command() -> str:
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  program = f"python -m {spec.name}" if spec else f"python {sys.argv[0]}"
  return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def load_average() -> str:
  """The 1, 5 and 15 minute load averages: above the core count, expect noise."""
  return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_banner(*, packages: Sequence[str] = ()) -> str:
  """What produced a table: command, revision, CPU, RAM, versions, devices, load.

  ``packages``: distributions whose versions to add to jax, jaxlib, optax,
  flax and torch's.
  """
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  versions = ", ".join(f"{p} {_version(p)}" for p in (*VERSIONS, *packages))
  if "torch" in sys.modules:
    versions += f" ({sys.modules['torch'].get_num_threads()} torch threads)"
  device = jax.devices()[0]
  environment = ", ".join(f"{k}={os.environ[k]!r}" for k in ENVIRONMENT if k in os.environ)
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return "\n".join([
      f"command: {_command()}",
      f"when: {now}; gradtx at {git_revision()}",
      f"cpu: {_cpu_model()}, {os.cpu_count()} cores, {ram:.1f} GiB RAM;"
      f" load average {load_average()} (1/5/15 min)",
      f"versions: {versions}",
      f"devices: {jax.device_count()} x {device.device_kind} ({device.platform});"
      f" environment: {environment or 'no XLA/BLAS/OpenMP variables set'}",
  ])


def closing_line() -> str:
  """Printed after the tables: the load while they were measured."""
  return f"load average at the end: {load_average()} (1/5/15 min)"


# ---------------------------------------------------------- the tables


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], *,
    align: Optional[str] = None,
) -> str:
  """A markdown table; ``align``: "l" or "r" per column (first left, rest right)."""
  align = align or "l" + "r" * (len(header) - 1)
  rule = "|" + "|".join("---" if a == "l" else "--:" for a in align) + "|"
  lines = ["| " + " | ".join(header) + " |", rule]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def ratio_table(
    times: Mapping[str, Sequence[float]], *, anchor: Union[str, Mapping[str, str]],
    label: str = "implementation",
    columns: Optional[Mapping[str, Mapping[str, str]]] = None, unit: str = "ms",
    window: Optional[int] = None,
) -> str:
  """Min and median of each contender's seconds, and the ratios to the anchor's.

  A ratio is time / the anchor's time (below 1.00x is faster), min against
  min and median against median. ``anchor``: one name, or name -> the name
  it is compared with (a row not in it is its own anchor), which adds an
  "anchor" column. ``columns``: extra columns, header -> {name: cell}.
  ``window``: also the amortized time (``amortized``) and its ratio, given
  three windows of calls or more (the median of fewer is not robust).
  """
  scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
  per_row = not isinstance(anchor, str)
  anchor_of = (lambda name: anchor.get(name, name)) if per_row else (lambda name: anchor)
  columns = dict(columns or {})
  against = "anchor" if per_row else anchor
  if window and min(map(len, times.values())) >= 3 * window:
    spread = {name: amortized(seconds, window) for name, seconds in times.items()}
    columns[f"amortized {unit} ({window} steps)"] = {
        n: f"{a * scale:.2f}" for n, a in spread.items()}
    columns[f"x {against} (amortized)"] = {
        n: f"{a / spread[anchor_of(n)]:.2f}x" for n, a in spread.items()}
  header = [label, *(["anchor"] if per_row else []), f"min {unit}", f"median {unit}",
            f"x {against} (min)", f"x {against} (median)", *columns]
  rows = []
  for name, seconds in times.items():
    base = times[anchor_of(name)]
    fast, typical = min(seconds), statistics.median(seconds)
    rows.append([
        name, *([anchor_of(name)] if per_row else []),
        f"{fast * scale:.2f}", f"{typical * scale:.2f}",
        f"{fast / min(base):.2f}x", f"{typical / statistics.median(base):.2f}x",
        *(cells.get(name, "") for cells in columns.values()),
    ])
  return markdown_table(header, rows)


def read_records(path: pathlib.Path, required: Sequence[str]) -> list[tuple[int, dict]]:
  """(line number, record) of a run file of one JSON object a line; none if
  it does not exist.

  A last line cut short (a process killed mid-write) is dropped from the
  file with a warning, so a resumed run makes that run again and appends it
  on a line of its own; any other line that is not a JSON object, or lacks a
  ``required`` key, is an error naming the file and line.
  """
  if not path.exists():
    return []
  try:
    lines = path.read_text().splitlines()
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not a text file of JSON run records ({error.reason} at byte"
                     f" {error.start})") from None
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      if number == len(lines):
        warnings.warn(f"{path}:{number}: the last run is cut short ({error.msg}); dropped"
                      " from the file, it is run again", stacklevel=3)
        path.write_text("".join(line + "\n" for line in lines[:-1]))
        continue
      raise ValueError(f"{path}:{number} is not a JSON run record ({error.msg})") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{number} is not a JSON run record (JSON {type(record).__name__},"
                       " not an object)")
    missing = set(required) - set(record)
    if missing:
      raise ValueError(f"{path}:{number}: the run record lacks {sorted(missing)}")
    records.append((number, record))
  return records
