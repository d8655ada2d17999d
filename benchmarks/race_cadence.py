"""The race with a preconditioner's refresh period (``precondition_every``) varied.

Each ``--every`` value k is the registry's ``--entry`` (``soap``: its
eigenbasis refresh; ``shampoo``: its inverse roots) with
``precondition_every=k`` (``registry.variant``), raced against AdamW at the
registry's peaks (factor 1) on the same seeds and batches:

  python -m benchmarks.race_cadence --entry soap --every 3,30 --seeds 0,1,2 \\
      --out benchmarks/race/small/cadence [char_lm options]

Results: benchmarks/RESULTS.md, "Fourth quadrant".
"""

import argparse

from benchmarks import registry
from examples import char_lm


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--entry", choices=("soap", "shampoo"), default="soap")
  parser.add_argument("--every", required=True, help="comma-separated refresh periods")
  args, rest = parser.parse_known_args(argv)
  names = {f"{args.entry}:every{k}": int(k) for k in args.every.split(",")}
  optimizers = {**registry.OPTIMIZERS, **{
      name: registry.variant(args.entry, precondition_every=k) for name, k in names.items()}}
  return char_lm.main(["--optimizers", ",".join(["adamw", *names]), "--lr-factors", "1", *rest],
                      optimizers=optimizers)


if __name__ == "__main__":
  main()
