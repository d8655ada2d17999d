"""PSGD Kron's probe draws: jax.random's threefry against gradtx's written-out one.

One jitted program draws a standard normal probe per leaf of each stack of a
transformer's same-shape leaves (a key per leaf, ``vmap``), as PSGD Kron does
once per distinct shape: with ``jax.random.normal`` and with
``gradtx._internal.threefry.normal`` (the same numbers, checked here). Printed:
compile seconds (min of ``--repeats``, cold caches) and the draw's run time
(``--rounds``, round-robin), with the ratios.

  python -m benchmarks.probe_draws --layers 48 --d 128
"""

import argparse
import time

import jax
import numpy as np

from benchmarks import harness
from gradtx._internal import threefry

DRAWS = {"jax.random.normal": jax.random.normal, "threefry.normal": threefry.normal}


def stack_shapes(layers: int, d: int) -> list[tuple]:
  """(leaves, *leaf shape) per distinct shape: four kernels and their biases
  (the two biases of length d in one stack)."""
  kernels = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]
  return ([(layers, *s) for s in kernels]
          + [(layers, 3 * d), (2 * layers, d), (layers, 4 * d)])


def program(normal, shapes):
  """A jitted function of one key per leaf, per stack, drawing every probe."""
  def draw(keys):
    return [jax.vmap(lambda k, s=s: normal(k, s[1:]))(k) for k, s in zip(keys, shapes)]
  return jax.jit(draw)


def keys_for(shapes) -> list:
  return [jax.random.split(jax.random.PRNGKey(i), s[0]) for i, s in enumerate(shapes)]


def compile_seconds(normal, shapes, keys) -> float:
  jax.clear_caches()
  start = time.perf_counter()
  program(normal, shapes).lower(keys).compile()
  return time.perf_counter() - start


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=48)
  parser.add_argument("--d", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=10)
  args = parser.parse_args(argv)
  print(harness.machine_banner())
  shapes = stack_shapes(args.layers, args.d)
  keys = keys_for(shapes)
  compiled = {name: program(normal, shapes).lower(keys).compile() for name, normal in DRAWS.items()}
  first, second = (compiled[name](keys) for name in DRAWS)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)  # the same numbers
  seconds = {name: [] for name in DRAWS}
  for _ in range(args.repeats):
    for name, normal in DRAWS.items():
      seconds[name].append(compile_seconds(normal, shapes, keys))
  print(f"\n{len(shapes)} stacks, {sum(int(np.prod(s)) for s in shapes):,} numbers; the same "
        "numbers from both\n")
  anchor = "jax.random.normal"
  rows = [(name, f"{min(s):.2f}", f"{min(s) / min(seconds[anchor]):.2f}x")
          for name, s in seconds.items()]
  print(harness.markdown_table(["draw", "compile s (min)", f"x {anchor}"], rows))
  times = harness.time_round_robin(
      {name: (lambda c=c: jax.block_until_ready(c(keys))) for name, c in compiled.items()},
      rounds=args.rounds)
  print()
  print(harness.ratio_table(times, anchor=anchor, label="draw"))
  print(harness.closing_line())


if __name__ == "__main__":
  main()
