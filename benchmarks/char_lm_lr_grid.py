"""Learning-rate grid for registry entries of the main job (``examples.char_lm``).

Runs the main job once, in one process, with the reference optimizer (adamw)
and, for every named registry entry, variants whose peak learning rates are
the registry's times each factor of ``--factors`` (``registry.variant``: the
entry's own factory, so every other setting stays the registry's). A grid
item ``name:key=value,...`` also passes those keyword arguments to the entry
(shampoo and soap take them). The main job's table then gives each variant's
final losses and its steps to the reference's final train loss.

    python -m benchmarks.char_lm_lr_grid --grid "shampoo;soap" \\
        [--factors 0.5,0.7,1,1.4,2] [char_lm options, e.g. --seed 1]
    python -m benchmarks.char_lm_lr_grid --grid "shampoo:block_size=128" --factors 1
"""

import argparse
import ast

from benchmarks import harness, registry
from examples import char_lm


def parse_item(item: str) -> tuple[str, dict]:
  """``"name:key=value,key=value"`` -> (name, {key: value})."""
  name, _, options = item.partition(":")
  pairs = (option.split("=", 1) for option in options.split(",") if option)
  return name, {k: ast.literal_eval(v) for k, v in pairs}


def grid(items, factors) -> dict[str, registry.Factory]:
  """``item@factor`` -> the registry entry's variant, for every item and factor."""
  variants = {}
  for item in items:
    name, kwargs = parse_item(item)
    for factor in factors:
      variants[f"{item}@{factor:g}x"] = registry.variant(name, factor, **kwargs)
  return variants


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grid", default="shampoo;soap",
                      help="registry entries (name or name:key=value,...), ;-separated")
  parser.add_argument("--factors", default="0.5,0.7,1,1.4,2")
  parser.add_argument("--reference", default="adamw")
  args, rest = parser.parse_known_args(argv)
  try:
    factors = [float(f) for f in args.factors.split(",")]
    registry.check_factors("--factors", factors)
    variants = grid(args.grid.split(";"), factors)
  except ValueError as error:
    parser.error(str(error))
  except KeyError as error:
    parser.error(f"--grid: {error} is not a registry entry")
  print(harness.machine_banner())
  results = char_lm.main(["--optimizers", ",".join([args.reference, *variants]), *rest],
                         optimizers={**registry.OPTIMIZERS, **variants})
  print(harness.closing_line())
  return results


if __name__ == "__main__":
  main()
