"""An optimizer shoot-out: a character-level transformer on Python's stdlib.

Trains the same small Flax NNX transformer, from the same initialisation and on
the same batches, once per optimizer named on the command line, then compares
them. The corpus is real text that ships with Python, no download: the first
``--corpus-mb`` MB of the standard library's top-level ``.py`` files
(``sysconfig.get_paths()["stdlib"]``, sorted by name), as characters over
printable ASCII and newline, anything else mapped to one extra token. The last
10% is held out for validation.

Usage (or ``python -m examples.char_lm ...`` from the repository root)::

  python examples/char_lm.py                          # adamw,muon,adamuon,adam,lion,sgd
  python examples/char_lm.py --optimizers adamw,optax:adamw,tiger --steps 800
  python examples/char_lm.py --list                   # the registered names
  python examples/char_lm.py --devices 8 --optimizers adamw,muon,shampoo,soap
  python examples/char_lm.py --optimizers adamw,muon,adamuon --lr-factors 0.5,1,2 \\
      --seeds 0,1,2 --out benchmarks/race/small         # the race (issue 12)

The defaults (d_model 96, 2 layers, context 64, batch 16, 400 steps, six
optimizers) take about three minutes on two CPU cores. The printed table has,
per optimizer: the final train loss (mean over the last 10% of steps); the
final validation loss; the first step at which the train loss, averaged over a
trailing window of 10% of the steps, reaches the reference's final train loss
(the reference is adamw, or the first optimizer when adamw is not in the run);
the median wall-clock ms/step after the first step (so without compilation;
noisy on a shared machine); and the bytes of optimizer state. Written to
``--out`` (default ``examples/out/``): ``char_lm.png`` (loss curves),
``char_lm.md`` (the table) and ``char_lm.json`` (config and raw curves).

The optimizers are the named entries of benchmarks/registry.py
(``OPTIMIZERS``: a name and a function of the number of training steps
returning an ``optax.GradientTransformation``; add one there), which the
benchmarks and tests share.

``--devices N`` trains on a mesh of N devices (N fake CPU devices when there
are fewer: the script restarts itself with ``XLA_FLAGS`` set): the batch split
over them (data parallel), the parameters FSDP, the optimizer state laid out
as ``gt.state_shardings`` gives it (benchmarks/device_cost.py). It adds a
second table: per optimizer, the compiled train step's per-device FLOPs over
the same step's on one device, the per-device share of the optimizer state,
and the collective bytes each device sends per step.

``--lr-factors`` and/or ``--seeds`` run the race instead (benchmarks/race.py):
every optimizer at every factor of its registry peak learning rates
(``name@2x``: that factor only) on every seed, each reported at its best
factor, with its steps and wall-clock to the same seed's AdamW final loss.

The pieces are importable (``from examples import char_lm``) for the
benchmarks: the corpus (``load_corpus``, ``sample_batches``), the model
(``CharTransformer``, ``initial_model``), the jitted ``train_step``,
``train_one`` and ``main(argv, optimizers=...)`` for a run over any registry.
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import sys
import sysconfig
import time
from typing import Optional, Sequence

import jax
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go

if not __package__:  # run as a script: the registry is in benchmarks/, at the root
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import device_cost  # noqa: E402
from benchmarks.registry import OPTIMIZERS, Registry, check_factors, split_factor  # noqa: E402

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(VOCAB)  # one extra token for every character outside VOCAB
VOCAB_SIZE = len(VOCAB) + 1
VAL_FRACTION = 0.1
FINAL_FRACTION = 0.1  # final train loss: mean over this last share of steps


@dataclasses.dataclass(frozen=True)
class Config:
  """The command-line settings (see ``parse_args``)."""

  optimizers: tuple[str, ...]
  steps: int
  batch_size: int
  context: int
  d_model: int
  num_layers: int
  num_heads: int
  corpus_mb: float
  eval_every: int
  eval_batches: int
  seed: int
  out: pathlib.Path
  devices: int = 1
  # The race (--lr-factors / --seeds); empty: a single run at --seed.
  lr_factors: tuple[float, ...] = ()
  seeds: tuple[int, ...] = ()


# ---------------------------------------------------------------- corpus


def stdlib_files() -> list[pathlib.Path]:
  """The standard library's top-level .py files, sorted for determinism."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  return sorted(root.glob("*.py"))


def encode(text: str) -> np.ndarray:
  """Characters to token ids; anything outside VOCAB becomes UNKNOWN."""
  table = np.full(0x110000, UNKNOWN, np.uint8)
  table[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB))
  codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  return table[codepoints]


def load_corpus(megabytes: float) -> tuple[np.ndarray, np.ndarray]:
  """The first ``megabytes`` of stdlib source, split into train and validation."""
  limit = int(megabytes * 2**20)
  chunks, size = [], 0
  for path in stdlib_files():
    text = path.read_text(encoding="utf-8", errors="replace")
    chunks.append(text)
    size += len(text)
    if size >= limit:
      break
  tokens = encode("".join(chunks)[:limit])
  split = int(len(tokens) * (1 - VAL_FRACTION))
  return tokens[:split], tokens[split:]


def unigram_entropy(tokens: np.ndarray) -> float:
  """Entropy (nats) of the character frequencies: a context-free model's loss."""
  counts = np.bincount(tokens, minlength=VOCAB_SIZE)
  p = counts[counts > 0] / len(tokens)
  return float(-(p * np.log(p)).sum())


def sample_batches(
    tokens: np.ndarray, num: int, batch_size: int, context: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """``num`` batches of random windows: inputs and next-character targets."""
  rng = np.random.default_rng(seed)
  starts = rng.integers(0, len(tokens) - context - 1, (num, batch_size))
  windows = tokens[starts[..., None] + np.arange(context + 1)]
  return windows[..., :-1].astype(np.int32), windows[..., 1:].astype(np.int32)


# ----------------------------------------------------------------- model


class Block(nnx.Module):
  """Pre-norm transformer block: causal self-attention and a GELU MLP."""

  def __init__(self, d_model: int, num_heads: int, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.qkv = nnx.Linear(d_model, 3 * d_model, rngs=rngs)
    self.proj = nnx.Linear(d_model, d_model, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.up = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
    self.down = nnx.Linear(4 * d_model, d_model, rngs=rngs)

  def attention(self, x: jax.Array) -> jax.Array:
    batch, length, d_model = x.shape
    heads = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1)
    q, k, v = heads[:, :, 0], heads[:, :, 1], heads[:, :, 2]
    # Per-head max logits for QK-clip, in a recorded pass only (else a no-op).
    go.observe_attention(self, q, k, is_causal=True)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.proj(out.reshape(batch, length, d_model))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(self.norm1(x))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
  """Decoder-only transformer over characters, with learned positions."""

  def __init__(self, config: Config, rngs: nnx.Rngs):
    d = config.d_model
    self.embed = nnx.Embed(VOCAB_SIZE, d, rngs=rngs)
    self.position = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (config.context, d)))
    self.blocks = nnx.List(
        [Block(d, config.num_heads, rngs) for _ in range(config.num_layers)]
    )
    self.norm = nnx.LayerNorm(d, rngs=rngs)
    self.head = nnx.Linear(d, VOCAB_SIZE, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.position[: tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x))


def cross_entropy(model: CharTransformer, inputs, targets) -> jax.Array:
  logits = model(inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


# -------------------------------------------------------------- training


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def train_step(graphdef, state, inputs, targets):
  """One optimizer step on the split (model, optimizer) state.

  ``jax.jit`` on the pure state, merged and split inside, skips the graph
  traversal ``nnx.jit`` does on every call: measured here, about 1.5 ms of
  CPU per call against nnx.jit's 6-7 ms, some 10% of a default-sized step.
  """
  model, optimizer = nnx.merge(graphdef, state)
  # The gradient, and records of the pass (dense layers' inputs and output
  # gradients, attention max logits) for K-FAC and QK-clip; unused, XLA drops them.
  loss, grads, records = go.value_grad_and_records(cross_entropy)(
      model, inputs, targets)
  model_def, _, rest = nnx.split(model, nnx.Param, ...)
  # SAM's second gradient, at perturbed params; the other optimizers ignore it.
  grad_fn = jax.grad(
      lambda params: cross_entropy(nnx.merge(model_def, params, rest), inputs, targets))
  optimizer.update(model, grads, grad_fn=grad_fn, records=records)
  return nnx.state((model, optimizer)), loss


@functools.partial(jax.jit, static_argnums=0)
def _mean_loss(graphdef, state, inputs, targets):
  model = nnx.merge(graphdef, state)
  return jax.lax.map(lambda b: cross_entropy(model, *b), (inputs, targets)).mean()


def mean_loss(model: CharTransformer, inputs, targets) -> float:
  """Mean loss over a stack of batches; compiled once for all optimizers."""
  return float(_mean_loss(*nnx.split(model), inputs, targets))


def state_bytes(optimizer: nnx.Optimizer) -> int:
  """Bytes held by the optax state (not counting nnx's own step counter)."""
  leaves = jax.tree.leaves(nnx.state(optimizer.opt_state))
  return sum(leaf.nbytes for leaf in leaves)


def initial_model(config: Config) -> tuple[nnx.GraphDef, nnx.State]:
  """The model initialised from ``config.seed``: its graph and host-side state.

  Built once, under ``nnx.jit`` (one compilation instead of one per eager
  op); every optimizer then starts from a fresh device copy of the state.
  The "rbg" generator compiles faster than the default threefry on CPU.
  """
  key = jax.random.key(config.seed, impl="rbg")
  model = nnx.jit(lambda: CharTransformer(config, nnx.Rngs(key)))()
  graphdef, state = nnx.split(model)
  return graphdef, jax.device_get(state)


def create_optimizer(
    model: CharTransformer, name: str, steps: int, optimizers: Registry = OPTIMIZERS
) -> nnx.Optimizer:
  """The named optimizer for ``model``, its state built under ``nnx.jit``."""
  tx = optax.with_extra_args_support(optimizers[name](steps))
  return nnx.jit(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param))(model)


# ------------------------------------------------------------------ mesh


def shard_batch(batch, mesh: Optional[Mesh]):
  """``batch`` split over the mesh's devices (data parallel); as is without a mesh."""
  return batch if mesh is None else jax.device_put(batch, NamedSharding(mesh, P("d")))


def train_one(name, config, initial, train_batches, val_batches,
              optimizers: Registry = OPTIMIZERS, mesh: Optional[Mesh] = None):
  """Trains the initial model with one optimizer; returns curves and timings.

  With a ``mesh``: parameters FSDP, the optimizer state as
  ``gt.state_shardings`` lays it out, every batch split over the devices
  (data parallel), and the per-device cost of the step is measured
  (benchmarks/device_cost.py).
  """
  graphdef, host_state = initial
  make_optimizer = lambda model: create_optimizer(model, name, config.steps, optimizers)
  if mesh is None:
    model = nnx.merge(graphdef, jax.device_put(host_state))
    optimizer = make_optimizer(model)
  else:
    model, optimizer = device_cost.sharded_model_and_optimizer(initial, make_optimizer, mesh)
    reference_flops = device_cost.single_device_flops(
        train_step, initial, make_optimizer, tuple(b[0] for b in train_batches))
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    opt_bytes = state_bytes(optimizer)
    graphdef, state = nnx.split((model, optimizer))
    cost = {}
    if mesh is not None:
      batch0 = shard_batch(tuple(b[0] for b in train_batches), mesh)
      cost = device_cost.per_device_cost(train_step, graphdef, state, batch0, reference_flops)
    train_losses, val_steps, val_losses, step_seconds = [], [], [], []
    bar = tqdm.trange(config.steps, desc=f"{name:>12}", leave=True)
    for step in bar:
      start = time.perf_counter()
      batch = shard_batch(tuple(b[step] for b in train_batches), mesh)
      state, loss = train_step(graphdef, state, *batch)
      train_losses.append(float(loss))
      step_seconds.append(time.perf_counter() - start)
      if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
        val_steps.append(step + 1)
        model, _ = nnx.merge(graphdef, state)
        val_losses.append(mean_loss(model, *val_batches))
        bar.set_postfix(
            train=f"{train_losses[-1]:.3f}", val=f"{val_losses[-1]:.3f}")
  return {
      "train_loss": train_losses,
      "val_step": val_steps,
      "val_loss": val_losses,
      "ms_per_step": 1e3 * float(np.median(step_seconds[1:] or step_seconds)),
      "state_bytes": opt_bytes,
      **cost,
  }



# ------------------------------------------------------------- reporting


def smooth(losses: Sequence[float], window: int) -> np.ndarray:
  """Trailing moving average (over fewer points at the start)."""
  sums = np.cumsum(np.insert(np.asarray(losses, np.float64), 0, 0.0))
  ends = np.arange(1, len(losses) + 1)
  starts = np.maximum(0, ends - window)
  return (sums[ends] - sums[starts]) / (ends - starts)


def final_window(steps: int) -> int:
  return max(1, round(FINAL_FRACTION * steps))


def steps_to_reach(
    losses: Sequence[float], target: float, window: int
) -> Optional[int]:
  """First step at which the smoothed train loss is at or below ``target``."""
  hits = np.flatnonzero(smooth(losses, window) <= target + 1e-9)
  return int(hits[0]) + 1 if hits.size else None


def results_table(results: dict, reference: str) -> str:
  """The comparison as a markdown table."""
  window = final_window(len(results[reference]["train_loss"]))
  target = smooth(results[reference]["train_loss"], window)[-1]
  lines = [
      f"| optimizer | train loss | val loss | steps to {reference}'s final loss"
      " | ms/step | state bytes |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for name, r in results.items():
    reached = steps_to_reach(r["train_loss"], target, window)
    lines.append(
        f"| {name} | {smooth(r['train_loss'], window)[-1]:.4f}"
        f" | {r['val_loss'][-1]:.4f} | {reached or '—'}"
        f" | {r['ms_per_step']:.1f} | {r['state_bytes']:,} |"
    )
  return "\n".join(lines)


def plot_curves(results: dict, entropy: float, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  for name, r in results.items():
    steps = np.arange(1, len(r["train_loss"]) + 1)
    window = max(1, len(steps) // 25)
    (line,) = ax.plot(
        steps, smooth(r["train_loss"], window), label=f"{name} train")
    ax.plot(r["val_step"], r["val_loss"], "o--", color=line.get_color(),
            label=f"{name} val", markersize=4)
  ax.axhline(entropy, color="gray", linestyle=":", label="unigram entropy")
  ax.set(xlabel="step", ylabel="cross-entropy (nats/char)",
         title="char-level LM on the Python stdlib")
  ax.set_ylim(top=entropy + 0.5)
  ax.legend(ncol=2, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------ main


def parse_args(
    argv: Optional[Sequence[str]], optimizers: Registry = OPTIMIZERS
) -> Config:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--optimizers", default="adamw,muon,adamuon,adam,lion,sgd",
                      help="comma-separated names from the registry (see --list)")
  parser.add_argument("--list", action="store_true",
                      help="list optimizer names and exit")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--context", type=int, default=64)
  parser.add_argument("--d-model", type=int, default=96)
  parser.add_argument("--num-layers", type=int, default=2)
  parser.add_argument("--num-heads", type=int, default=4)
  parser.add_argument("--corpus-mb", type=float, default=2.0)
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--eval-batches", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--devices", type=int, default=1,
                      help="train data-parallel (batch split) with FSDP parameters on a"
                      " mesh of N devices (fake CPU devices when there are fewer);"
                      " prints each optimizer's per-device cost")
  parser.add_argument("--lr-factors", default="",
                      help="race: comma-separated factors of every registry peak lr"
                      " (e.g. 0.5,1,2); each optimizer is reported at its best one")
  parser.add_argument("--seeds", default="",
                      help="race: comma-separated seeds (batches and initialisation);"
                      " steps to adamw's final loss are given as min/median/max over them")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "out")
  args = parser.parse_args(argv)
  if args.list:
    print("\n".join(optimizers))
    raise SystemExit(0)
  names = tuple(n.strip() for n in args.optimizers.split(",") if n.strip())

  def numbers(option, text, kind):
    try:
      return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
      parser.error(f"{option} takes comma-separated {kind.__name__}s, got {text!r}")

  factors = numbers("--lr-factors", args.lr_factors, float)
  seeds = numbers("--seeds", args.seeds, int)
  sizes = ("steps", "batch_size", "context", "d_model", "num_layers", "num_heads",
           "eval_every", "eval_batches", "devices")
  small = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in sizes if getattr(args, k) < 1]
  if small or args.corpus_mb <= 0:
    parser.error(f"must be positive: {', '.join(small or [f'--corpus-mb {args.corpus_mb}'])}")
  if not names:
    parser.error("--optimizers is empty")
  racing = bool(factors or seeds)  # a race also takes name@{factor}x
  try:
    check_factors("--lr-factors", factors)
    unknown = [n for n in names if n not in optimizers
               and not (racing and split_factor(n)[0] in optimizers)]
  except ValueError as error:
    parser.error(str(error))
  if unknown:
    parser.error(
        f"unknown optimizer(s) {unknown}; choose from {list(optimizers)}")
  fields = {f.name for f in dataclasses.fields(Config)}
  values = {k: v for k, v in vars(args).items() if k in fields}
  if factors or seeds:
    factors, seeds = factors or (1.0,), seeds or (args.seed,)
  if factors and args.devices != 1:
    parser.error("--lr-factors/--seeds race on one device (omit --devices)")
  return Config(**{**values, "optimizers": names, "lr_factors": factors, "seeds": seeds})


def make_mesh(config: Config) -> Optional[Mesh]:
  """A 1-D mesh ``("d",)`` of ``config.devices`` devices, or ``None`` for one.

  Run as a script with fewer devices than asked, the process restarts itself
  with that many fake CPU devices (XLA reads the flag once, at start-up).
  """
  if config.devices == 1:
    return None
  if config.batch_size % config.devices:
    raise ValueError(f"--batch-size {config.batch_size} must be a multiple of"
                     f" --devices {config.devices} (the batch is split over them)")
  if len(jax.devices()) < config.devices:
    flag = f"--xla_force_host_platform_device_count={config.devices}"
    if __name__ == "__main__" and flag not in os.environ.get("XLA_FLAGS", ""):
      env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}",
                 JAX_PLATFORMS="cpu")
      os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise ValueError(f"--devices {config.devices}: only {len(jax.devices())} devices;"
                     f" set XLA_FLAGS={flag} before jax is imported")
  # Auto axes: XLA lays out the model's own computation (FSDP gathers, data
  # parallel reductions); the optimizer's matrix work goes to its owners.
  return jax.make_mesh((config.devices,), ("d",), axis_types=(AxisType.Auto,))


def main(
    argv: Optional[Sequence[str]] = None, optimizers: Registry = OPTIMIZERS
) -> dict:
  """Runs the comparison; returns ``{name: curves and timings}`` (a race: its summary).

  ``optimizers``: the registry the names of ``--optimizers`` come from.
  """
  config = parse_args(argv, optimizers)
  mesh = make_mesh(config)
  train_tokens, val_tokens = load_corpus(config.corpus_mb)
  entropy = unigram_entropy(train_tokens)
  print(f"corpus: {len(train_tokens):,} train / {len(val_tokens):,} val chars,"
        f" unigram entropy {entropy:.3f} nats")
  if config.seeds:  # the race: benchmarks/race.py (which imports this module)
    from benchmarks import race

    return race.race(config, train_tokens, val_tokens, optimizers)
  train_batches = sample_batches(
      train_tokens, config.steps, config.batch_size, config.context, config.seed)
  val_batches = sample_batches(
      val_tokens, config.eval_batches, config.batch_size, config.context,
      config.seed + 1)
  initial = initial_model(config)
  results = {
      name: train_one(name, config, initial, train_batches, val_batches, optimizers, mesh)
      for name in config.optimizers
  }
  reference = "adamw" if "adamw" in results else config.optimizers[0]
  table = results_table(results, reference)
  note = "" if reference == "adamw" else (
      f"(adamw not in the run: {reference} is the reference)\n")
  if mesh is not None:
    table += "\n\n" + device_cost.cost_table(results, mesh.size)
  print(f"\n{note}{table}")
  config.out.mkdir(parents=True, exist_ok=True)
  (config.out / "char_lm.md").write_text(note + table + "\n")
  (config.out / "char_lm.json").write_text(json.dumps(
      {"config": {**dataclasses.asdict(config), "out": str(config.out)},
       "unigram_entropy": entropy, "reference": reference, "results": results},
      indent=1))
  plot_curves(results, entropy, config.out / "char_lm.png")
  print(f"wrote {config.out}/char_lm.{{png,md,json}}")
  return results


if __name__ == "__main__":
  main()
