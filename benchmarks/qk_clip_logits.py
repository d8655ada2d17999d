"""Main job: the attention max logit under Muon, with and without QK-clip.

Trains ``examples/char_lm.py``'s model with ``go.muon`` at a peak learning
rate ``--lr-factor`` times the registry's (same schedule, same batches), and
with ``go.qk_clip`` around it, recording at every step the largest
pre-softmax logit of every head (``go.value_grad_and_records``). Writes
``qk_clip_logits.png`` into ``--out`` (default: ``benchmarks/``, the committed
plot; max logit over heads and layers, and the train loss, per step) and
prints the numbers for ``benchmarks/RESULTS.md``.

    python -m benchmarks.qk_clip_logits [--lr-factor 5] [--threshold 100] [--steps 400]
    python -m benchmarks.qk_clip_logits --steps 20 --out /tmp/qk   # a smoke run
"""

import argparse
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import registry
from examples import char_lm
from gradtx import optimizers as go

HERE = pathlib.Path(__file__).resolve().parent


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _step(graphdef, state, inputs, targets):
  model, optimizer = nnx.merge(graphdef, state)
  loss, grads, records = go.value_grad_and_records(char_lm.cross_entropy)(
      model, inputs, targets)
  optimizer.update(model, grads, records=records)
  logits = jnp.stack([records.max_logits[k] for k in sorted(records.max_logits)])
  return nnx.state((model, optimizer)), loss, logits


def train(name, config, batches, optimizers):
  graphdef, host_state = char_lm.initial_model(config)
  model = nnx.merge(graphdef, jax.device_put(host_state))
  optimizer = char_lm.create_optimizer(model, name, config.steps, optimizers)
  graphdef, state = nnx.split((model, optimizer))
  losses, logits = [], []
  for step in range(config.steps):
    state, loss, s = _step(graphdef, state, batches[0][step], batches[1][step])
    losses.append(float(loss))
    logits.append(np.asarray(s))
  return np.asarray(losses), np.stack(logits)  # (steps,), (steps, layers, heads)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lr-factor", type=float, default=5.0)
  parser.add_argument("--threshold", type=float, default=100.0)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--out", type=pathlib.Path, default=HERE,
                      help="folder of the plot (default: benchmarks/, the committed one)")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.lr_factor <= 0 or args.threshold <= 0:
    parser.error("--steps, --lr-factor and --threshold must be positive")
  # Both of Muon's peak learning rates (its own and its AdamW part's) scaled.
  muon = registry.variant("muon", args.lr_factor)
  optimizers = {"muon": muon,
                "muon+clip": lambda n: go.qk_clip(muon(n), threshold=args.threshold)}
  config = char_lm.parse_args(["--steps", str(args.steps)])
  train_tokens, _ = char_lm.load_corpus(config.corpus_mb)
  batches = char_lm.sample_batches(train_tokens, config.steps, config.batch_size,
                                   config.context, config.seed)
  runs = {name: train(name, config, batches, optimizers) for name in optimizers}

  window = char_lm.final_window(config.steps)
  print(f"peak lr x{args.lr_factor:g} (muon {registry.MUON_PEAK * args.lr_factor:g}, adam part"
        f" {registry.MUON_ADAMW_PEAK * args.lr_factor:g}), tau = {args.threshold:g},"
        f" {config.steps} steps")
  print("| run | max logit @25% | @50% | @75% | @100% | peak | final train loss |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for name, (losses, logits) in runs.items():
    top = logits.max(axis=(1, 2))
    marks = [top[max(0, int(f * config.steps) - 1)] for f in (0.25, 0.5, 0.75, 1.0)]
    print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in marks)
          + f" | {top.max():.1f} | {char_lm.smooth(losses, window)[-1]:.4f} |")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for name, (losses, logits) in runs.items():
    steps = np.arange(1, config.steps + 1)
    ax1.plot(steps, logits.max(axis=(1, 2)), label=name)
    ax2.plot(steps, char_lm.smooth(losses, 10), label=name)
  ax1.axhline(args.threshold, color="gray", linestyle=":", label=f"τ = {args.threshold:g}")
  ax1.set(xlabel="step", ylabel="max pre-softmax logit (all heads)",
          title=f"Muon at {args.lr_factor:g}x its peak lr")
  ax2.set(xlabel="step", ylabel="train loss (10-step mean)", title="loss")
  for ax in (ax1, ax2):
    ax.legend()
  fig.tight_layout()
  args.out.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out / "qk_clip_logits.png", dpi=110)
  print(f"wrote {args.out / 'qk_clip_logits.png'}")


if __name__ == "__main__":
  main()
