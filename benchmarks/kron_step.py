"""Shampoo and SOAP update-step time against gradtx AdamW, and the cost of the roots alone.

The parameter tree has the shapes of ``examples/char_lm.py``'s transformer
(d_model 128, vocabulary 97, context 64; per layer qkv 128×384, proj 128×128,
MLP 128×512 and 512×128, biases and LayerNorms), float32. Each
implementation runs one jitted ``update + apply_updates`` step with donated
params and state; they run interleaved, round-robin, in one process. A round
times ``--window`` consecutive steps (10, so that a ``precondition_every=10``
run pays exactly one root computation per round) and reports ms per step;
we print the min and median over rounds and the ratio to AdamW (min).

"roots alone": the inverse 4th/2nd roots of every block statistic of the
Shampoo state (what a refresh step adds), timed on its own, and the same cost
amortised over 10 steps.

    OPENBLAS_NUM_THREADS=1 python benchmarks/kron_step.py [--layers 2] [--rounds 10]

On CPU, run it with OPENBLAS_NUM_THREADS=1: the OpenBLAS behind jaxlib's eigh
otherwise starts its own threads, which fight XLA's pool for the cores; on a
2-core machine that made one root computation take 0.2 to 11 s instead of a
steady 0.08 s.
"""

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx import optimizers as go
from gradtx import transforms as gt


def char_lm_params(d: int, layers: int, vocab: int = 97, context: int = 64) -> dict:
  shapes = {"embed": (vocab, d), "position": (context, d), "norm_scale": (d,),
            "norm_bias": (d,), "head_kernel": (d, vocab), "head_bias": (vocab,)}
  block = {"qkv_kernel": (d, 3 * d), "qkv_bias": (3 * d,), "proj_kernel": (d, d),
           "proj_bias": (d,), "up_kernel": (d, 4 * d), "up_bias": (4 * d,),
           "down_kernel": (4 * d, d), "down_bias": (d,), "norm1_scale": (d,),
           "norm1_bias": (d,), "norm2_scale": (d,), "norm2_bias": (d,)}
  for i in range(layers):
    shapes.update({f"block{i}_{k}": s for k, s in block.items()})
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(0.02 * rng.standard_normal(s), jnp.float32)
          for k, s in shapes.items()}


def implementations(lr: float = 3e-3) -> dict:
  return {
      "gradtx adamw": go.adamw(lr),
      "shampoo every 1": go.shampoo(lr, precondition_every=1),
      "shampoo every 10": go.shampoo(lr, precondition_every=10),
      "shampoo newton every 10": go.shampoo(lr, precondition_every=10,
                                            root_method="newton",
                                            relative_eps=1e-6),
      "soap every 10": go.soap(lr, precondition_every=10),
  }


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def time_steps(params, grads, rounds: int, window: int) -> dict:
  runners = {}
  for name, tx in implementations().items():
    p = jax.tree.map(jnp.copy, params)
    state = tx.init(p)
    step = make_step(tx)
    for _ in range(window):  # compile, and leave step 1's first refresh behind
      p, state = step(p, state, grads)
    jax.block_until_ready(p)
    runners[name] = [step, p, state]
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, runner in runners.items():
      step, p, state = runner
      start = time.perf_counter()
      for _ in range(window):
        p, state = step(p, state, grads)
      jax.block_until_ready(p)
      times[name].append((time.perf_counter() - start) / window)
      runner[1:] = [p, state]
  return times


def time_roots(params, grads, rounds: int) -> dict:
  """Seconds for all inverse roots of a Shampoo state, eigh and newton."""
  tx = gt.kronecker_precondition(b2=0.999)
  _, state = jax.jit(tx.update)(grads, tx.init(params))
  stacks = []
  for left, right in zip(jax.tree.leaves(state.left_stats),
                         jax.tree.leaves(state.right_stats)):
    p = 2 * ((left.size > 0) + (right.size > 0))
    stacks += [(s, p) for s in (left, right) if s.size]
  results = {}
  for method, damping in (("eigh", {}), ("newton", {"relative_eps": 1e-6})):
    fn = jax.jit(lambda mats, method=method, damping=damping: [
        gt.inverse_pth_root(s, p, root_method=method, eps=1e-6, **damping)
        for s, p in zip(mats, [p for _, p in stacks])])
    mats = [s for s, _ in stacks]
    jax.block_until_ready(fn(mats))
    samples = []
    for _ in range(rounds):
      start = time.perf_counter()
      jax.block_until_ready(fn(mats))
      samples.append(time.perf_counter() - start)
    results[method] = samples
  return results, [tuple(s.shape) for s, _ in stacks]


def report(times: dict, roots: dict) -> None:
  anchor = min(times["gradtx adamw"])
  print("| optimizer | min ms/step | median ms/step | ratio to adamw (min) |")
  print("|---|---|---|---|")
  for name, ts in times.items():
    print(f"| {name} | {min(ts) * 1e3:.2f} | {statistics.median(ts) * 1e3:.2f} |"
          f" {min(ts) / anchor:.2f}x |")
  for method, ts in roots.items():
    best = min(ts)
    print(f"| roots alone ({method}) | {best * 1e3:.2f} |"
          f" {statistics.median(ts) * 1e3:.2f} | {best / anchor:.2f}x"
          f" (amortised over 10 steps: {best / 10 / anchor:.2f}x) |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d", type=int, default=128)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--window", type=int, default=10)
  args = parser.parse_args(argv)
  params = char_lm_params(args.d, args.layers)
  rng = np.random.default_rng(1)
  grads = jax.tree.map(
      lambda p: jnp.asarray(1e-3 * rng.standard_normal(p.shape), jnp.float32), params)
  size = sum(p.size for p in jax.tree.leaves(params))
  print(f"machine: {platform.processor() or platform.machine()}, jax"
        f" {jax.__version__}, optax {optax.__version__}, devices {jax.devices()}")
  if jax.default_backend() == "cpu" and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
    print("warning: OPENBLAS_NUM_THREADS is not 1; eigh timings will be noisy")
  print(f"params: d={args.d}, layers={args.layers}, {size / 1e6:.2f}M;"
        f" rounds {args.rounds} x {args.window} steps")
  times = time_steps(params, grads, args.rounds, args.window)
  roots, shapes = time_roots(params, grads, args.rounds)
  print(f"root stacks (blocks, n, n): {shapes}")
  report(times, roots)


if __name__ == "__main__":
  main()
