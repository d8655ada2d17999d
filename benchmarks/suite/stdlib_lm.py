"""The main job of ``examples/char_lm.py``, smaller: its transformer on stdlib source.

``char_lm.CharTransformer`` (fused qkv ``nnx.Linear``, learned positions) on
the first 0.5 MB of the standard library's top-level ``.py`` files
(``char_lm.load_corpus``), last 10% held out. d_model 64, 2 layers, 4 heads,
context 64, batch 16, 300 steps. Targets: train cross-entropy (nats/char),
held-out cross-entropy and next-character accuracy.
"""

import functools

from benchmarks.suite.workload import Workload, nnx_model, text_batches, text_held_out
from examples import char_lm

BATCH, CONTEXT = 16, 64


def config(d_model: int = 64, num_layers: int = 2) -> char_lm.Config:
  """The char_lm settings of this workload (its command line)."""
  return char_lm.parse_args(["--d-model", str(d_model), "--num-layers", str(num_layers),
                             "--context", str(CONTEXT), "--batch-size", str(BATCH)])


@functools.cache
def workload(steps: int = 300, d_model: int = 64, corpus_mb: float = 0.5) -> Workload:
  train, held_out = char_lm.load_corpus(corpus_mb)
  settings = config(d_model)
  return Workload(
      name="stdlib_lm", family="transformer",
      description=f"char_lm.CharTransformer d{d_model}x2 on {corpus_mb} MB of stdlib source",
      init=nnx_model(lambda rngs: char_lm.CharTransformer(settings, rngs)),
      batches=text_batches(train, BATCH, CONTEXT),
      held_out=text_held_out(held_out, BATCH, CONTEXT),
      steps=steps,
  )

