"""The race with the two peak learning rates of a Muon-family entry apart.

``examples/char_lm.py --lr-factors`` scales every peak of an entry together:
the hidden matrices' and that of the AdamW on the other leaves (embeddings,
head, norms, biases). Here an item ``family/m<M>/a<A>`` is ``go.<family>``
(muon, adamuon, normuon, soap_muon, vmuon) at the family's registry peak
times M on the matrices (muon 0.02, adamuon 1.2e-2, the others 0.02) and
AdamW at A times AdamW's tuned 6e-3 on the other leaves (b2 0.99, no decay,
as the registry's ``_muon_adamw``), every other argument the factory's
default; ``/e<E>`` gives the embeddings (token table, positions) their own
AdamW at E times 6e-3 (the factory's ``embedding_learning_rate``); ``/key=value`` passes
more keyword arguments (a Python literal).
``muon:moonlight/m<M>/a<A>`` is the moonlight-scaled Muon (peak 6e-3,
decay 0.1). Items run through the race (benchmarks/race.py): same seeds,
batches and run file (``char_lm_race_runs.jsonl`` in ``--out``, resumable),
the summary table against AdamW.

  python -m benchmarks.race_two_lrs --items "adamuon/m1/a1,adamuon/m1/a3" \\
      --seeds 0 --out benchmarks/race/small/two_lrs [char_lm options]

The race's findings (benchmarks/RESULTS.md, "Fourth quadrant") set the
registry's AdamW side of the Muon-family entries to 3x AdamW's peak.
"""

import argparse
import ast

from benchmarks import registry
from examples import char_lm
from gradtx import optimizers as go

MATRIX_PEAK = {"muon": 0.02, "adamuon": 1.2e-2, "normuon": 0.02,
               "soap_muon": 0.02, "vmuon": 0.02, "muon:moonlight": 6e-3}
ADAMW_PEAK = 6e-3


def parse_item(item: str) -> tuple[str, float, float, dict]:
  """``"adamuon/m0.75/a3/ns_steps=4"`` -> ("adamuon", 0.75, 3.0, {"ns_steps": 4});
  an ``e<E>`` option comes back as ``kwargs["embedding_factor"]``."""
  family, *options = item.split("/")
  if family not in MATRIX_PEAK:
    raise ValueError(f"family must be one of {sorted(MATRIX_PEAK)}, got {family!r}")
  matrix, adam, kwargs = 1.0, 1.0, {}
  for option in options:
    if "=" in option:
      key, value = option.split("=", 1)
      kwargs[key] = ast.literal_eval(value)
    elif option[:1] == "e":
      kwargs["embedding_factor"] = float(option[1:])
    elif option[:1] in ("m", "a"):
      value = float(option[1:])
      matrix, adam = (value, adam) if option[0] == "m" else (matrix, value)
    else:
      raise ValueError(f"item option must be m<factor>, a<factor>, e<factor> or key=value,"
                       f" got {option!r}")
  return family, matrix, adam, kwargs


def factory(item: str) -> registry.Factory:
  """The registry-style factory of one item."""
  family, matrix, adam, kwargs = parse_item(item)
  embedding_factor = kwargs.pop("embedding_factor", None)

  def build(n: int):
    side = dict(adam_learning_rate=registry.warmup_cosine(ADAMW_PEAK * adam, n),
                adam_b2=0.99, adam_weight_decay=0.0, **kwargs)
    if embedding_factor is not None:
      side["embedding_learning_rate"] = registry.warmup_cosine(
          ADAMW_PEAK * embedding_factor, n)
    peak = registry.warmup_cosine(MATRIX_PEAK[family] * matrix, n)
    if family == "muon":
      return go.muon(peak, weight_decay=0.0, **side)
    if family == "muon:moonlight":
      return go.muon(peak, scale="moonlight", weight_decay=0.1, **side)
    return getattr(go, family)(peak, **side)

  return build


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--items", required=True, help="comma-separated family/m<M>/a<A> items")
  parser.add_argument("--reference", default="adamw",
                      help="the registry's reference run (e.g. adamw@0.5x at the large size)")
  args, rest = parser.parse_known_args(argv)
  items = args.items.split(",")
  optimizers = {**registry.OPTIMIZERS, **{item: factory(item) for item in items}}
  return char_lm.main(["--optimizers", ",".join([args.reference, *items]),
                       "--lr-factors", "1", *rest], optimizers=optimizers)


if __name__ == "__main__":
  main()
