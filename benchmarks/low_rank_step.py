"""Low-rank orthogonalization (Dion's power iteration) vs Newton–Schulz: FLOPs and CPU time.

For a d × d and a d × 4d float32 matrix, the jitted update of
``gt.orthogonalize_low_rank(k)`` (one power iteration, error feedback) at
k = d/8, d/4, d/2, with ``orthonormalize="qr"`` and ``"cholesky_qr"``,
against ``gt.orthogonalize_newton_schulz()`` (5 steps, "jordan"). FLOPs are
XLA's count of the compiled program (``cost_analysis()``); XLA does not count
LAPACK custom calls (QR, Cholesky, triangular solve), so the table adds the
textbook count of the Householder QR with Q formed, 4mk² − 4k³/3 (m the long
side), and of the k × k Cholesky, k³/3, and triangular solves, m k², twice.
CPU time: ``harness.time_round_robin`` (warm-up calls untimed, then
``--rounds`` rounds, one call of each per round in a new random order), min
and median, in one process on this machine's shared cores (only the ratios to
Newton–Schulz in the same run mean much).

    python -m benchmarks.low_rank_step [--d 1024] [--rounds 20]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from gradtx import transforms as gt


def lapack_flops(m: int, k: int, method: str) -> float:
  if method == "qr":
    return 4 * m * k * k - 4 * k**3 / 3
  return 2 * (k**3 / 3 + m * k * k)  # two Cholesky + triangular-solve passes


def programs(shape, ranks):
  rng = np.random.default_rng(0)
  g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  out = {"newton_schulz": (gt.orthogonalize_newton_schulz(), None)}
  for k in ranks:
    for method in ("qr", "cholesky_qr"):
      out[f"low_rank k={k} {method}"] = (
          gt.orthogonalize_low_rank(k, orthonormalize=method), (max(shape), k, method))
  compiled = {}
  for name, (tx, lapack) in out.items():
    state = tx.init(g)
    fn = jax.jit(tx.update).lower(g, state).compile()
    flops = fn.cost_analysis()["flops"]
    extra = 0.0 if lapack is None else lapack_flops(*lapack)
    compiled[name] = (fn, g, state, flops, extra)
  return compiled


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=20)
  args = parser.parse_args(argv)
  print(harness.machine_banner())
  d = args.d
  ranks = (d // 8, d // 4, d // 2)
  for shape in ((d, d), (d, 4 * d)):
    compiled = programs(shape, ranks)
    calls = {name: (lambda fn=fn, g=g, state=state: jax.block_until_ready(fn(g, state)))
             for name, (fn, g, state, _, _) in compiled.items()}
    times = harness.time_round_robin(calls, rounds=args.rounds)
    base_flops = compiled["newton_schulz"][3]
    print(f"\n{shape[0]}×{shape[1]} float32, {args.rounds} rounds, "
          f"{jax.device_count()} device(s), {jax.devices()[0].platform}\n")
    print(harness.ratio_table(times, anchor="newton_schulz", label="update", columns={
        "XLA GFLOP": {n: f"{c[3] / 1e9:.3f}" for n, c in compiled.items()},
        "+ LAPACK GFLOP": {n: f"{c[4] / 1e9:.3f}" for n, c in compiled.items()},
        "x NS FLOPs": {n: f"{(c[3] + c[4]) / base_flops:.3f}" for n, c in compiled.items()},
    }))
  print(harness.closing_line())


if __name__ == "__main__":
  main()
