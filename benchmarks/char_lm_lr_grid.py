"""Learning-rate grid for registry entries of ``examples/char_lm.py``.

Runs the main job once, in one process, with the reference optimizer (adamw)
and, for every named registry entry, copies whose peak learning rate is the
registry's times each factor of ``--factors`` (the entry's own factory, so
every other setting stays the registry's). A grid item ``name:key=value,...``
also passes those keyword arguments to the entry (shampoo and soap take them).
The script's table then gives each copy's final losses and its steps to the
reference's final train loss.

    python benchmarks/char_lm_lr_grid.py --grid "shampoo;soap" \
        [--factors 0.5,0.7,1,1.4,2] [char_lm options, e.g. --seed 1]
    python benchmarks/char_lm_lr_grid.py --grid "shampoo:block_size=128" --factors 1
"""

import argparse
import ast
import contextlib

from _main_job import load_char_lm


@contextlib.contextmanager
def scaled_peak(char_lm, factor: float):
  """``char_lm.warmup_cosine`` with every peak multiplied by ``factor``."""
  original = char_lm.warmup_cosine
  char_lm.warmup_cosine = lambda peak, steps: original(peak * factor, steps)
  try:
    yield
  finally:
    char_lm.warmup_cosine = original


def parse_item(item: str) -> tuple[str, dict]:
  """``"name:key=value,key=value"`` -> (name, {key: value})."""
  name, _, options = item.partition(":")
  pairs = (option.split("=", 1) for option in options.split(",") if option)
  return name, {k: ast.literal_eval(v) for k, v in pairs}


def add_grid(char_lm, items, factors) -> list[str]:
  """Registers ``item@factor`` entries; returns their names."""
  added = []
  for item in items:
    name, kwargs = parse_item(item)
    factory = char_lm.OPTIMIZERS[name]
    for factor in factors:
      def scaled(n, factory=factory, factor=factor, kwargs=kwargs):
        with scaled_peak(char_lm, factor):
          return factory(n, **kwargs)
      key = f"{item}@{factor:g}x"
      char_lm.OPTIMIZERS[key] = scaled
      added.append(key)
  return added


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grid", default="shampoo;soap",
                      help="registry entries (name or name:key=value,...), ;-separated")
  parser.add_argument("--factors", default="0.5,0.7,1,1.4,2")
  parser.add_argument("--reference", default="adamw")
  args, rest = parser.parse_known_args(argv)
  char_lm = load_char_lm()
  factors = [float(f) for f in args.factors.split(",")]
  names = add_grid(char_lm, args.grid.split(";"), factors)
  return char_lm.main(["--optimizers", ",".join([args.reference, *names]), *rest])


if __name__ == "__main__":
  main()
