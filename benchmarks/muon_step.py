"""Muon update-step time: gradtx vs optax.contrib.muon, and the NS FLOP roofline.

One jitted ``update + apply_updates`` step with donated params and state, on
the hidden matrices of two transformer layers at d = 512 (512×1536 qkv,
512×512 attention out, 512×2048 and 2048×512 MLP), float32. Implementations
run interleaved, round-robin, in one process; we report min and median ms,
the ratio to optax, and the fraction of the Newton–Schulz FLOP roofline
(ns_steps·(4m²n + 2m³) FLOPs per m×n matrix, m ≤ n, at the float32 matmul
rate measured in the same run).

    python benchmarks/muon_step.py [--rounds 15] [--d 512] [--layers 2]
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from gradtx import optimizers as go


def transformer_matrices(d: int, layers: int) -> dict:
  shapes = {"qkv": (d, 3 * d), "attn_out": (d, d), "fc1": (d, 4 * d),
            "fc2": (4 * d, d)}
  rng = np.random.default_rng(0)
  return {
      f"layer{i}": {k: jnp.asarray(rng.standard_normal(s), jnp.float32) * 0.02
                    for k, s in shapes.items()}
      for i in range(layers)
  }


def ns_flops(params: dict, ns_steps: int = 5) -> float:
  total = 0.0
  for leaf in jax.tree.leaves(params):
    m, n = sorted(leaf.shape)
    total += ns_steps * (4 * m * m * n + 2 * m**3)
  return total


def implementations(lr: float = 0.02) -> dict:
  return {
      "optax.contrib.muon": contrib.muon(lr),
      "gradtx standard": go.muon(lr),
      "gradtx gram": go.muon(lr, method="gram"),
      "gradtx standard bf16": go.muon(lr, compute_dtype=jnp.bfloat16),
      "gradtx gram bf16": go.muon(lr, method="gram", compute_dtype=jnp.bfloat16),
  }


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def matmul_rate(n: int = 1024, repeats: int = 20) -> float:
  """Best float32 FLOP/s of an n×n×n matmul on this machine."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n**3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run(d: int, layers: int, rounds: int) -> dict:
  grads = transformer_matrices(d, layers)
  runners = {}
  for name, tx in implementations().items():
    params = jax.tree.map(jnp.copy, grads)
    state = tx.init(params)
    step = make_step(tx)
    params, state = step(params, state, grads)  # compile
    jax.block_until_ready(params)
    runners[name] = [step, params, state]
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, runner in runners.items():
      step, params, state = runner
      start = time.perf_counter()
      params, state = step(params, state, grads)
      jax.block_until_ready(params)
      times[name].append(time.perf_counter() - start)
      runner[1:] = [params, state]
  return times


def report(times: dict, flops: float, rate: float) -> None:
  anchor = min(times["optax.contrib.muon"])
  print("| implementation | min ms | median ms | ratio to optax (min) | roofline |")
  print("|---|---|---|---|---|")
  for name, ts in times.items():
    best = min(ts)
    print(f"| {name} | {best * 1e3:.1f} | {statistics.median(ts) * 1e3:.1f} |"
          f" {best / anchor:.2f}x | {flops / best / rate:.2f} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=15)
  args = parser.parse_args(argv)
  rate = matmul_rate()
  flops = ns_flops(transformer_matrices(args.d, args.layers))
  print(f"machine: {platform.processor() or platform.machine()}, jax"
        f" {jax.__version__}, optax {optax.__version__}, devices"
        f" {jax.devices()}")
  print(f"float32 matmul rate (1024^3): {rate / 1e9:.1f} GFLOP/s;"
        f" NS FLOPs per step (standard): {flops / 1e9:.2f} GFLOP")
  times = run(args.d, args.layers, args.rounds)
  report(times, flops, rate)


if __name__ == "__main__":
  main()
