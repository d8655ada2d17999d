"""Muon update-step time: gradtx vs optax.contrib.muon, and the NS FLOP roofline.

One ``harness.donated_step`` (update + apply, params and state donated) on
the hidden matrices of two transformer layers at d = 512 (512×1536 qkv,
512×512 attention out, 512×2048 and 2048×512 MLP), float32, timed by
``harness.time_round_robin`` in one process. We report min and median ms,
the ratio to optax, and the fraction of the Newton–Schulz FLOP roofline
(ns_steps·(4m²n + 2m³) FLOPs per m×n matrix, m ≤ n, of the row's matrix view:
the default view's three (d, d) q, k, v cost 18d³ per iteration where the
whole (d, 3d) qkv costs 14d³; at the float32 matmul rate measured in the same
run).

    python -m benchmarks.muon_step [--rounds 15] [--d 512] [--layers 2]
    python -m benchmarks.muon_step --against HEAD~1   # also the library at HEAD~1

``--against REV`` adds the same gradtx rows built from the library at git
revision REV (``benchmarks.revisions``), timed in the same rounds: the
before/after comparison to run before merging a change to this hot path.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from optax import contrib

from benchmarks import harness, revisions
from gradtx import optimizers as go
from gradtx import transforms as gt

ANCHOR = "optax.contrib.muon"


def transformer_matrices(d: int, layers: int) -> dict:
  shapes = {"qkv": (d, 3 * d), "attn_out": (d, d), "fc1": (d, 4 * d),
            "fc2": (4 * d, d)}
  rng = np.random.default_rng(0)
  return {
      f"layer{i}": {k: jnp.asarray(rng.standard_normal(s), jnp.float32) * 0.02
                    for k, s in shapes.items()}
      for i in range(layers)
  }


def ns_flops(params: dict, ns_steps: int = 5, split_qkv: bool = False) -> float:
  """Standard Newton–Schulz FLOPs of one step; ``split_qkv``: each (d, 3d) qkv
  kernel as three (d, d) matrices (gradtx's default view), 18d³ per
  iteration against 14d³ for the whole matrix."""
  total = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    shape, copies = leaf.shape, 1
    if split_qkv and jax.tree_util.keystr(path).endswith("['qkv']"):
      shape, copies = (shape[0], shape[1] // 3), 3
    m, n = sorted(shape)
    total += copies * ns_steps * (4 * m * m * n + 2 * m**3)
  return total


def splits_qkv(name: str) -> bool:
  """Whether row ``name`` orthogonalizes q, k and v apart (gradtx's default view)."""
  return name != ANCHOR and "qkv whole" not in name


def gradtx_rows(transforms, optimizers, lr: float = 0.02, suffix: str = "") -> dict:
  """The default view (the fused qkv split into q, k, v) in float32 and bf16,
  and the whole-qkv view (one 512×1536 matrix, as optax.contrib.muon sees it)."""
  f32 = dict(compute_dtype=jnp.float32)
  whole = dict(matrix_view=transforms.flax_matrix_view, **f32)
  return {
      f"gradtx standard{suffix}": optimizers.muon(lr, **f32),
      f"gradtx gram{suffix}": optimizers.muon(lr, method="gram", **f32),
      f"gradtx standard bf16{suffix}": optimizers.muon(lr, compute_dtype=jnp.bfloat16),
      f"gradtx gram bf16{suffix}": optimizers.muon(
          lr, method="gram", compute_dtype=jnp.bfloat16),
      f"gradtx standard, qkv whole{suffix}": optimizers.muon(lr, **whole),
      f"gradtx gram, qkv whole{suffix}": optimizers.muon(lr, method="gram", **whole),
  }


def implementations(lr: float = 0.02, against: str = "") -> dict:
  rows = {ANCHOR: contrib.muon(lr), **gradtx_rows(gt, go, lr)}
  if against:
    rows.update(gradtx_rows(*revisions.at_revision(against), lr, f" @{against}"))
  return rows


MATMUL_N = 1024  # the roofline's rate: an n×n×n float32 matmul, timed among the contenders
MATMUL = f"matmul {MATMUL_N}^3"


def matmul(n: int = MATMUL_N):
  """A contender: one float32 n×n×n matmul (2n³ FLOPs), blocking."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return lambda: f(a).block_until_ready()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--against", default="",
                      help="also time the library at this git revision")
  args = parser.parse_args(argv)
  print(harness.machine_banner())
  grads = transformer_matrices(args.d, args.layers)
  flops = {split: ns_flops(grads, split_qkv=split) for split in (False, True)}
  # The parameters start as a copy of the gradients (only the shapes matter).
  contenders = {name: harness.stepper(tx, grads, grads)
                for name, tx in implementations(against=args.against).items()}
  # The matmul rate is timed in the same rounds, so the load that slows the
  # steps slows it alike (measured once before them it was not).
  times = harness.time_round_robin({**contenders, MATMUL: matmul()}, rounds=args.rounds,
                                   warmup=1)
  rate = 2 * MATMUL_N**3 / min(times.pop(MATMUL))
  print(f"\nfloat32 matmul rate ({MATMUL_N}^3, best of the rounds): {rate / 1e9:.1f} GFLOP/s;"
        f" NS FLOPs per step (standard): {flops[False] / 1e9:.2f} GFLOP with qkv whole,"
        f" {flops[True] / 1e9:.2f} with q, k, v apart (the default view); {args.rounds} rounds\n")
  roofline = {name: f"{flops[splits_qkv(name)] / min(t) / rate:.2f}"
              for name, t in times.items()}
  print(harness.ratio_table(times, anchor=ANCHOR, columns={"roofline": roofline}))
  print()
  print(harness.closing_line())


if __name__ == "__main__":
  main()
