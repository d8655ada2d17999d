"""An optimizer shoot-out: a character-level transformer on Python's stdlib.

Trains the same small Flax NNX transformer, from the same initialisation and on
the same batches, once per optimizer named on the command line, then compares
them. The corpus is real text that ships with Python, no download: the first
``--corpus-mb`` MB of the standard library's top-level ``.py`` files
(``sysconfig.get_paths()["stdlib"]``, sorted by name), as characters over
printable ASCII and newline, anything else mapped to one extra token. The last
10% is held out for validation.

Usage (or ``python -m examples.char_lm ...`` from the repository root)::

  python examples/char_lm.py                          # adamw,muon,adamuon,adam,lion,sgd
  python examples/char_lm.py --optimizers adamw,optax:adamw,tiger --steps 800
  python examples/char_lm.py --list                   # the registered names
  python examples/char_lm.py --devices 8 --optimizers adamw,muon,shampoo,soap
  python examples/char_lm.py --optimizers adamw,muon,adamuon --lr-factors 0.5,1,2 \
      --seeds 0,1,2 --out benchmarks/race/small         # the race (issue 12)

The defaults (d_model 96, 2 layers, context 64, batch 16, 400 steps, six
optimizers) take about three minutes on two CPU cores. The printed table has,
per optimizer: the final train loss (mean over the last 10% of steps); the
final validation loss; the first step at which the train loss, averaged over a
trailing window of 10% of the steps, reaches the reference's final train loss
(the reference is adamw, or the first optimizer when adamw is not in the run);
the median wall-clock ms/step after the first step (so without compilation;
noisy on a shared machine); and the bytes of optimizer state. Written to
``--out`` (default ``examples/out/``): ``char_lm.png`` (loss curves),
``char_lm.md`` (the table) and ``char_lm.json`` (config and raw curves).

``--devices N`` trains on a mesh of N devices (N fake CPU devices when there
are fewer: the script restarts itself with ``XLA_FLAGS`` set): the batch split
over them (data parallel), the parameters FSDP (each split along its first
axis N divides), the optimizer state laid out as ``gt.state_shardings`` gives
it. It adds a second table: per optimizer, the compiled train step's
per-device FLOPs over the same step's on one device, the per-device share of
the optimizer state, and the collective bytes each device sends per step.

``--lr-factors`` and/or ``--seeds`` run a race instead: every optimizer at
every factor of its registry peak learning rates (``name@2x`` in
``--optimizers``: that factor only) on every seed (batches and
initialisation), then per optimizer its best factor (lowest median final
train loss over the seeds), the final loss, the steps to the same seed's
AdamW final loss (AdamW at its own best factor) as min/median/max, their
ratio to the run's steps, ms/step and the wall-clock to it and its ratio to
AdamW's. Every run is appended to ``char_lm_race_runs.jsonl`` in ``--out``
and not run again when found there, so a race resumes and grows; the table
goes to ``char_lm_race.md``, the summary to ``char_lm_race.json``, curves at
the best factors to ``char_lm_race.png``.

To add an optimizer, add an entry to ``OPTIMIZERS``: a name and a function of
the number of training steps returning an ``optax.GradientTransformation``.

The pieces are importable (``from examples import char_lm``) for the
benchmarks: the corpus (``load_corpus``, ``sample_batches``), the model
(``CharTransformer``, ``initial_model``), the jitted ``train_step``, the
registry (``OPTIMIZERS``; ``variant`` for an entry at other peak learning
rates or keywords) and ``main(argv, optimizers=...)`` for a run over any
registry.
"""

import argparse
import contextlib
import contextvars
import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import sys
import sysconfig
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import contrib
from gradtx import optimizers as go
from gradtx import transforms as gt

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(VOCAB)  # one extra token for every character outside VOCAB
VOCAB_SIZE = len(VOCAB) + 1
VAL_FRACTION = 0.1
FINAL_FRACTION = 0.1  # final train loss: mean over this last share of steps
# Set by ``variant`` while it builds an entry, so that a learning-rate grid
# runs the entry itself rather than a copy of it with other peaks.
_PEAK_FACTOR = contextvars.ContextVar("peak_factor", default=1.0)


def warmup_cosine(peak: float, steps: int) -> optax.Schedule:
  """Linear warm-up over the first 10% of steps, cosine decay to peak/10.

  Inside ``variant(name, lr_factor)`` the peak is ``lr_factor`` times ``peak``.
  """
  peak = peak * _PEAK_FACTOR.get()
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, max(1, steps // 10), max(2, steps), end_value=peak / 10
  )


def matrices(params):
  """Weight-decay mask: decay weight matrices, not biases or norm scales."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _muon_adamw(n: int) -> dict:
  """The AdamW side of the Muon-family entries (embeddings, head, norms,
  biases): b2 0.99, no decay, peak 1.8e-2 = 3x AdamW's tuned 6e-3, the best
  of 0.5-6x for Muon and AdaMuon on the race (benchmarks/race_two_lrs.py;
  benchmarks/RESULTS.md, "Fourth quadrant")."""
  return dict(adam_learning_rate=warmup_cosine(1.8e-2, n), adam_b2=0.99,
              adam_weight_decay=0.0)


def _fast_embeddings(n: int) -> dict:
  """The embeddings (token table, positions) on their own AdamW at 1.8e-1 =
  30x AdamW's peak (the factories' ``embedding_learning_rate``; the AdamW
  side's b2 and decay): the best of 3-100x on the race
  (benchmarks/race_two_lrs.py items ``.../e<E>``; benchmarks/RESULTS.md,
  "Fourth quadrant")."""
  return dict(embedding_learning_rate=warmup_cosine(1.8e-1, n))


# name -> factory(total_steps) -> optax.GradientTransformation. Peak learning
# rates of adamw/adam, lion and sgd come from a sweep at the default settings
# (adamw 1e-3..1e-2, lion 1e-4..3e-3 with weight decay 0.03..1, sgd 0.1..1);
# the other entries are untuned starting points.
OPTIMIZERS: dict[str, Callable[[int], optax.GradientTransformation]] = {
    "adamw": lambda n: go.adamw(
        warmup_cosine(6e-3, n), b2=0.99, weight_decay=0.1, mask=matrices),
    "adam": lambda n: go.adam(warmup_cosine(6e-3, n), b2=0.99),
    "adabelief": lambda n: go.adabelief(
        warmup_cosine(3e-3, n), b2=0.99, eps=1e-12, weight_decay=0.1,
        mask=matrices),
    "adagrad": lambda n: go.adagrad(warmup_cosine(3e-2, n)),
    "rmsprop": lambda n: go.rmsprop(warmup_cosine(1e-3, n)),
    "sgd": lambda n: go.sgd(warmup_cosine(0.1, n), momentum=0.9),
    "signsgd": lambda n: go.signsgd(warmup_cosine(3e-4, n), momentum=0.9),
    "lion": lambda n: go.lion(
        warmup_cosine(1e-3, n), weight_decay=0.3, mask=matrices),
    "tiger": lambda n: go.tiger(
        warmup_cosine(1e-3, n), weight_decay=0.3, mask=matrices),
    "muon": lambda n: go.muon(warmup_cosine(0.02, n), weight_decay=0.0, **_muon_adamw(n)),
    "muon:moonlight": lambda n: go.muon(
        warmup_cosine(6e-3, n), scale="moonlight", weight_decay=0.1,
        adam_b2=0.99, adam_weight_decay=0.0),
    # Lrs: best of a peak-lr grid (benchmarks/RESULTS.md, main job). Keyword
    # arguments (precondition_every, block_size, ...) are passed on, for
    # benchmarks/kron_step.py and benchmarks/char_lm_lr_grid.py.
    "shampoo": lambda n, **kw: go.shampoo(warmup_cosine(9e-3, n), **{
        "precondition_b2": 0.99, "b2": 0.99, "nesterov": True, "weight_decay": 0.1,
        "mask": matrices, **kw}),
    "soap": lambda n, **kw: go.soap(
        warmup_cosine(1.2e-2, n), weight_decay=0.1, mask=matrices, **kw),
    "adamw_8bit": lambda n: go.adamw_8bit(
        warmup_cosine(6e-3, n), b2=0.99, weight_decay=0.1, mask=matrices),
    # AdamW's hyper-parameters, as the Adam-mini paper and official code
    # prescribe. At this size (~0.25M parameters; the paper tests 125M-7B)
    # it trails adamw by 2-5% in final train loss over seeds 0-3, as does the
    # official PyTorch code on a copy of this model
    # (benchmarks/adam_mini_torch.py); neither partition variants nor peak lr
    # 4e-3..1.2e-2 or b2 0.95..0.999 close the gap (benchmarks/RESULTS.md).
    "adam_mini": lambda n: go.adam_mini(
        warmup_cosine(6e-3, n), b2=0.99, weight_decay=0.1, mask=matrices,
        num_heads=4),
    "adafactor": lambda n: go.adafactor(
        warmup_cosine(6e-3, n), min_dim_size_to_factor=32,
        multiply_by_parameter_scale=False, b1=0.9),
    # Large-batch methods, peak lr best of a grid at the default (small)
    # batch: lamb 3e-3..1.2e-2, lars 0.25..10 (benchmarks/RESULTS.md).
    "lamb": lambda n: go.lamb(
        warmup_cosine(6e-3, n), b2=0.99, weight_decay=0.1, mask=matrices),
    "lars": lambda n: go.lars(
        warmup_cosine(2.5, n), momentum=0.9, weight_decay=1e-4,
        mask=matrices, trust_ratio_mask=matrices),
    # Wrappers around the adamw entry. SAM takes two gradients a step.
    "sam": lambda n: go.sam(OPTIMIZERS["adamw"](n), rho=0.05),
    # k = 5 divides the default 400 steps: the final weights are slow ones.
    "lookahead": lambda n: go.lookahead(
        OPTIMIZERS["adamw"](n), sync_period=5, slow_step_size=0.5),
    "optax:adamw": lambda n: optax.adamw(
        warmup_cosine(6e-3, n), b2=0.99, weight_decay=0.1, mask=matrices),
    "optax:lion": lambda n: optax.lion(
        warmup_cosine(1e-3, n), weight_decay=0.3, mask=matrices),
    # Issue 14. K-FAC and QK-clip read the pass's records (train_step).
    # K-FAC: best of lr = damping in {1e-4 .. 3e-6}, inverses every step by
    # the Newton iteration (eigh: ~2.4 s/step here).
    "kfac": lambda n, **kw: go.kfac(warmup_cosine(3e-6, n), **{
        "damping": 3e-6, "precondition_every": 1, "root_method": "newton",
        "weight_decay": 0.1, "mask": matrices, **kw}),
    "muon:qk_clip": lambda n: go.qk_clip(OPTIMIZERS["muon"](n), threshold=100.0),
    "dion": lambda n, **kw: go.dion(warmup_cosine(0.02, n), **{
        "rank": 0.25, "adam_learning_rate": warmup_cosine(6e-3, n),
        "adam_b2": 0.99, "adam_weight_decay": 0.0, **kw}),
    # Issue 12, the fourth quadrant (go.fourth_quadrant): each factory's
    # defaults on the matrices, the muon entry's AdamW on the other leaves.
    # The race (--lr-factors, --seeds) tunes the peak learning rates.
    # go.muon and go.adamuon split a fused qkv kernel into q, k, v by
    # default (chosen on the race); ":fused_qkv" is the one-matrix view.
    "muon:fused_qkv": lambda n: go.muon(
        warmup_cosine(0.02, n), matrix_view=gt.flax_matrix_view, **_muon_adamw(n)),
    # The same update by Newton-Schulz on the Gram matrix (rectangular matrices only).
    "muon:gram": lambda n: go.muon(
        warmup_cosine(0.02, n), weight_decay=0.0, method="gram", **_muon_adamw(n)),
    "muon:polar_express": lambda n: go.muon(
        warmup_cosine(0.02, n), coefficients="polar_express", **_muon_adamw(n)),
    "soap_muon": lambda n: go.soap_muon(warmup_cosine(0.02, n), **_muon_adamw(n)),
    "normuon": lambda n: go.normuon(warmup_cosine(0.02, n), **_muon_adamw(n)),
    # The race's best peak lr: 2x the AdamW-sized 6e-3 (benchmarks/RESULTS.md).
    "adamuon": lambda n: go.adamuon(warmup_cosine(1.2e-2, n), **_muon_adamw(n)),
    "vmuon": lambda n: go.vmuon(warmup_cosine(0.02, n), **_muon_adamw(n)),
    # The embeddings apart, at 30x AdamW's peak (the race's best).
    "adamuon:fast_embeddings": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), **_muon_adamw(n), **_fast_embeddings(n)),
    "muon:gram:fast_embeddings": lambda n: go.muon(
        warmup_cosine(0.02, n), weight_decay=0.0, method="gram", **_muon_adamw(n),
        **_fast_embeddings(n)),
    # What won, kept as an experimental recipe: contrib.adamuon_lm is AdaMuon with
    # Gram Newton-Schulz, the AdamW side at 1.5x and the embeddings at 15x its rate.
    "adamuon:gram:fast_embeddings": lambda n: contrib.adamuon_lm(warmup_cosine(1.2e-2, n)),
    "adamuon:fused_qkv": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), matrix_view=gt.flax_matrix_view, **_muon_adamw(n)),
}


Factory = Callable[[int], optax.GradientTransformation]  # an entry of OPTIMIZERS
Registry = Mapping[str, Factory]


def variant(name: str, lr_factor: float = 1.0, *, registry: Optional["Registry"] = None,
            **kwargs) -> Factory:
  """Registry entry ``name`` with every peak learning rate times ``lr_factor``.

  Keyword arguments go to the entry (shampoo and soap take them). Wrappers
  scale their base's peaks too (sam, lookahead), Muon both of its own. The
  result is a factory like the entries', for ``main(optimizers=...)``.
  ``registry``: where ``name`` is looked up (default ``OPTIMIZERS``).
  """
  factory = (OPTIMIZERS if registry is None else registry)[name]

  def build(total_steps: int) -> optax.GradientTransformation:
    token = _PEAK_FACTOR.set(_PEAK_FACTOR.get() * lr_factor)
    try:
      return factory(total_steps, **kwargs)
    finally:
      _PEAK_FACTOR.reset(token)

  return build


@dataclasses.dataclass(frozen=True)
class Config:
  """The command-line settings (see ``parse_args``)."""

  optimizers: tuple[str, ...]
  steps: int
  batch_size: int
  context: int
  d_model: int
  num_layers: int
  num_heads: int
  corpus_mb: float
  eval_every: int
  eval_batches: int
  seed: int
  out: pathlib.Path
  devices: int = 1
  # The race (--lr-factors / --seeds); empty: a single run at --seed.
  lr_factors: tuple[float, ...] = ()
  seeds: tuple[int, ...] = ()


# ---------------------------------------------------------------- corpus


def stdlib_files() -> list[pathlib.Path]:
  """The standard library's top-level .py files, sorted for determinism."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  return sorted(root.glob("*.py"))


def encode(text: str) -> np.ndarray:
  """Characters to token ids; anything outside VOCAB becomes UNKNOWN."""
  table = np.full(0x110000, UNKNOWN, np.uint8)
  table[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB))
  codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  return table[codepoints]


def load_corpus(megabytes: float) -> tuple[np.ndarray, np.ndarray]:
  """The first ``megabytes`` of stdlib source, split into train and validation."""
  limit = int(megabytes * 2**20)
  chunks, size = [], 0
  for path in stdlib_files():
    text = path.read_text(encoding="utf-8", errors="replace")
    chunks.append(text)
    size += len(text)
    if size >= limit:
      break
  tokens = encode("".join(chunks)[:limit])
  split = int(len(tokens) * (1 - VAL_FRACTION))
  return tokens[:split], tokens[split:]


def unigram_entropy(tokens: np.ndarray) -> float:
  """Entropy (nats) of the character frequencies: a context-free model's loss."""
  counts = np.bincount(tokens, minlength=VOCAB_SIZE)
  p = counts[counts > 0] / len(tokens)
  return float(-(p * np.log(p)).sum())


def sample_batches(
    tokens: np.ndarray, num: int, batch_size: int, context: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """``num`` batches of random windows: inputs and next-character targets."""
  rng = np.random.default_rng(seed)
  starts = rng.integers(0, len(tokens) - context - 1, (num, batch_size))
  windows = tokens[starts[..., None] + np.arange(context + 1)]
  return windows[..., :-1].astype(np.int32), windows[..., 1:].astype(np.int32)


# ----------------------------------------------------------------- model


class Block(nnx.Module):
  """Pre-norm transformer block: causal self-attention and a GELU MLP."""

  def __init__(self, d_model: int, num_heads: int, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.qkv = nnx.Linear(d_model, 3 * d_model, rngs=rngs)
    self.proj = nnx.Linear(d_model, d_model, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.up = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
    self.down = nnx.Linear(4 * d_model, d_model, rngs=rngs)

  def attention(self, x: jax.Array) -> jax.Array:
    batch, length, d_model = x.shape
    heads = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1)
    q, k, v = heads[:, :, 0], heads[:, :, 1], heads[:, :, 2]
    # Per-head max logits for QK-clip, in a recorded pass only (else a no-op).
    go.observe_attention(self, q, k, is_causal=True)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.proj(out.reshape(batch, length, d_model))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(self.norm1(x))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
  """Decoder-only transformer over characters, with learned positions."""

  def __init__(self, config: Config, rngs: nnx.Rngs):
    d = config.d_model
    self.embed = nnx.Embed(VOCAB_SIZE, d, rngs=rngs)
    self.position = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (config.context, d)))
    self.blocks = nnx.List(
        [Block(d, config.num_heads, rngs) for _ in range(config.num_layers)]
    )
    self.norm = nnx.LayerNorm(d, rngs=rngs)
    self.head = nnx.Linear(d, VOCAB_SIZE, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.position[: tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x))


def cross_entropy(model: CharTransformer, inputs, targets) -> jax.Array:
  logits = model(inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


# -------------------------------------------------------------- training


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def train_step(graphdef, state, inputs, targets):
  """One optimizer step on the split (model, optimizer) state.

  ``jax.jit`` on the pure state, merged and split inside, skips the graph
  traversal ``nnx.jit`` does on every call: measured here, about 1.5 ms of
  CPU per call against nnx.jit's 6-7 ms, some 10% of a default-sized step.
  """
  model, optimizer = nnx.merge(graphdef, state)
  # The gradient, and records of the pass (dense layers' inputs and output
  # gradients, attention max logits) for K-FAC and QK-clip; unused, XLA drops them.
  loss, grads, records = go.value_grad_and_records(cross_entropy)(
      model, inputs, targets)
  model_def, _, rest = nnx.split(model, nnx.Param, ...)
  # SAM's second gradient, at perturbed params; the other optimizers ignore it.
  grad_fn = jax.grad(
      lambda params: cross_entropy(nnx.merge(model_def, params, rest), inputs, targets))
  optimizer.update(model, grads, grad_fn=grad_fn, records=records)
  return nnx.state((model, optimizer)), loss


@functools.partial(jax.jit, static_argnums=0)
def _mean_loss(graphdef, state, inputs, targets):
  model = nnx.merge(graphdef, state)
  return jax.lax.map(lambda b: cross_entropy(model, *b), (inputs, targets)).mean()


def mean_loss(model: CharTransformer, inputs, targets) -> float:
  """Mean loss over a stack of batches; compiled once for all optimizers."""
  return float(_mean_loss(*nnx.split(model), inputs, targets))


def state_bytes(optimizer: nnx.Optimizer) -> int:
  """Bytes held by the optax state (not counting nnx's own step counter)."""
  leaves = jax.tree.leaves(nnx.state(optimizer.opt_state))
  return sum(leaf.nbytes for leaf in leaves)


def initial_model(config: Config) -> tuple[nnx.GraphDef, nnx.State]:
  """The model initialised from ``config.seed``: its graph and host-side state.

  Built once, under ``nnx.jit`` (one compilation instead of one per eager
  op); every optimizer then starts from a fresh device copy of the state.
  The "rbg" generator compiles faster than the default threefry on CPU.
  """
  key = jax.random.key(config.seed, impl="rbg")
  model = nnx.jit(lambda: CharTransformer(config, nnx.Rngs(key)))()
  graphdef, state = nnx.split(model)
  return graphdef, jax.device_get(state)


def create_optimizer(
    model: CharTransformer, name: str, steps: int, optimizers: Registry = OPTIMIZERS
) -> nnx.Optimizer:
  """The named optimizer for ``model``, its state built under ``nnx.jit``."""
  tx = optax.with_extra_args_support(optimizers[name](steps))
  return nnx.jit(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param))(model)


# ------------------------------------------------------------------ mesh

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter",
               "collective-permute")
_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s64": 8, "s32": 4, "u32": 4,
          "s8": 1, "u8": 1, "pred": 1, "c64": 8, "c128": 16}


def collective_bytes(hlo_text: str) -> int:
  """Bytes produced by the collectives of a compiled (per-device) HLO module."""
  total = 0
  ops = "|".join(COLLECTIVES)
  for line in hlo_text.splitlines():
    match = re.match(rf"\s*%?\S+ = (.*?) (?:{ops})(?:-start)?\(", line)
    if not match:
      continue
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
      if dtype in _BYTES:
        total += math.prod(int(d) for d in dims.split(",") if d) * _BYTES[dtype]
  return total


def fsdp_spec(shape: tuple, devices: int) -> P:
  """Split the first axis the mesh size divides (FSDP); else replicate."""
  for axis, size in enumerate(shape):
    if size % devices == 0 and size >= devices:
      return P(*([None] * axis), "d")
  return P()


def place(tree, mesh: Optional[Mesh], spec_of: Callable):
  """``tree`` on ``mesh``, each leaf by ``spec_of(leaf)``; as is without a mesh."""
  if mesh is None:
    return tree
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec_of(x))), tree)


def sharded_model_and_optimizer(initial, name, steps, optimizers, mesh: Mesh):
  """FSDP parameters and the optimizer state laid out by ``init`` on an
  Explicit copy of ``mesh`` (as ``gt.state_shardings`` gives it: on Auto axes
  ``jax.jit(tx.init)`` would replicate the state), then retyped for ``mesh``."""
  graphdef, host_state = initial
  explicit = Mesh(mesh.devices, mesh.axis_names,
                  axis_types=(AxisType.Explicit,) * len(mesh.axis_names))
  with jax.set_mesh(explicit):
    model = nnx.merge(graphdef, place(host_state, explicit,
                                      lambda x: fsdp_spec(x.shape, mesh.size)))
    optimizer = create_optimizer(model, name, steps, optimizers)
  graphdef, state = nnx.split((model, optimizer))
  state = jax.tree.map(
      lambda x: jax.device_put(x, NamedSharding(mesh, x.sharding.spec))
      if isinstance(x, jax.Array) else x, state)
  return nnx.merge(graphdef, state)


def per_device_cost(graphdef, state, batch, single_device_flops: float) -> dict:
  """The compiled train step's per-device FLOPs (over the 1-device step's),
  the state's per-device bytes (over its total) and its collective bytes."""
  compiled = train_step.lower(graphdef, state, *batch).compile()
  leaves = [x for x in jax.tree.leaves(state[1]) if isinstance(x, jax.Array)]
  local = sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves)
  return {"flops_ratio": compiled.cost_analysis()["flops"] / single_device_flops,
          "state_ratio": local / max(1, sum(leaf.nbytes for leaf in leaves)),
          "collective_mb": collective_bytes(compiled.as_text()) / 2**20}


def single_device_flops(initial, name, steps, optimizers, batch) -> float:
  """The FLOPs of the same train step, with its own state, on one device (a
  mesh's state stacks are padded for its size and do not fit another)."""
  graphdef, host_state = initial
  model = nnx.merge(graphdef, jax.device_put(host_state))
  graphdef, state = nnx.split((model, create_optimizer(model, name, steps, optimizers)))
  batch = jax.device_put(batch, jax.devices()[0])
  return train_step.lower(graphdef, state, *batch).compile().cost_analysis()["flops"]


def train_one(name, config, initial, train_batches, val_batches,
              optimizers: Registry = OPTIMIZERS, mesh: Optional[Mesh] = None):
  """Trains the initial model with one optimizer; returns curves and timings.

  With a ``mesh``: parameters FSDP (``fsdp_spec``), the optimizer state as
  ``gt.state_shardings`` lays it out, every batch split over the devices
  (data parallel), and the per-device cost of the step is measured.
  """
  graphdef, host_state = initial
  if mesh is None:
    model = nnx.merge(graphdef, jax.device_put(host_state))
    optimizer = create_optimizer(model, name, config.steps, optimizers)
  else:
    model, optimizer = sharded_model_and_optimizer(
        initial, name, config.steps, optimizers, mesh)
    reference_flops = single_device_flops(initial, name, config.steps, optimizers,
                                          tuple(b[0] for b in train_batches))
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    opt_bytes = state_bytes(optimizer)
    graphdef, state = nnx.split((model, optimizer))
    cost = {}
    if mesh is not None:
      batch0 = place(tuple(b[0] for b in train_batches), mesh, lambda x: P("d"))
      cost = per_device_cost(graphdef, state, batch0, reference_flops)
    train_losses, val_steps, val_losses, step_seconds = [], [], [], []
    bar = tqdm.trange(config.steps, desc=f"{name:>12}", leave=True)
    for step in bar:
      start = time.perf_counter()
      batch = place(tuple(b[step] for b in train_batches), mesh, lambda x: P("d"))
      state, loss = train_step(graphdef, state, *batch)
      train_losses.append(float(loss))
      step_seconds.append(time.perf_counter() - start)
      if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
        val_steps.append(step + 1)
        model, _ = nnx.merge(graphdef, state)
        val_losses.append(mean_loss(model, *val_batches))
        bar.set_postfix(
            train=f"{train_losses[-1]:.3f}", val=f"{val_losses[-1]:.3f}")
  return {
      "train_loss": train_losses,
      "val_step": val_steps,
      "val_loss": val_losses,
      "ms_per_step": 1e3 * float(np.median(step_seconds[1:] or step_seconds)),
      "state_bytes": opt_bytes,
      **cost,
  }


def cost_table(results: dict, devices: int) -> str:
  """The per-device cost of each optimizer's train step on the mesh."""
  lines = [f"| optimizer ({devices} devices) | per-device FLOPs / 1-device step"
           " | per-device state / all state | collective MB per device per step |",
           "|---|---:|---:|---:|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['flops_ratio']:.3f} | {r['state_ratio']:.3f}"
                 f" | {r['collective_mb']:.2f} |")
  return "\n".join(lines)


# ------------------------------------------------------------- reporting


def smooth(losses: Sequence[float], window: int) -> np.ndarray:
  """Trailing moving average (over fewer points at the start)."""
  sums = np.cumsum(np.insert(np.asarray(losses, np.float64), 0, 0.0))
  ends = np.arange(1, len(losses) + 1)
  starts = np.maximum(0, ends - window)
  return (sums[ends] - sums[starts]) / (ends - starts)


def final_window(steps: int) -> int:
  return max(1, round(FINAL_FRACTION * steps))


def steps_to_reach(
    losses: Sequence[float], target: float, window: int
) -> Optional[int]:
  """First step at which the smoothed train loss is at or below ``target``."""
  hits = np.flatnonzero(smooth(losses, window) <= target + 1e-9)
  return int(hits[0]) + 1 if hits.size else None


def results_table(results: dict, reference: str) -> str:
  """The comparison as a markdown table."""
  window = final_window(len(results[reference]["train_loss"]))
  target = smooth(results[reference]["train_loss"], window)[-1]
  lines = [
      f"| optimizer | train loss | val loss | steps to {reference}'s final loss"
      " | ms/step | state bytes |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for name, r in results.items():
    reached = steps_to_reach(r["train_loss"], target, window)
    lines.append(
        f"| {name} | {smooth(r['train_loss'], window)[-1]:.4f}"
        f" | {r['val_loss'][-1]:.4f} | {reached or '—'}"
        f" | {r['ms_per_step']:.1f} | {r['state_bytes']:,} |"
    )
  return "\n".join(lines)


def plot_curves(results: dict, entropy: float, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  for name, r in results.items():
    steps = np.arange(1, len(r["train_loss"]) + 1)
    window = max(1, len(steps) // 25)
    (line,) = ax.plot(
        steps, smooth(r["train_loss"], window), label=f"{name} train")
    ax.plot(r["val_step"], r["val_loss"], "o--", color=line.get_color(),
            label=f"{name} val", markersize=4)
  ax.axhline(entropy, color="gray", linestyle=":", label="unigram entropy")
  ax.set(xlabel="step", ylabel="cross-entropy (nats/char)",
         title="char-level LM on the Python stdlib")
  ax.set_ylim(top=entropy + 0.5)
  ax.legend(ncol=2, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------ race


def run_label(name: str, factor: float) -> str:
  return name if factor == 1 else f"{name}@{factor:g}x"


def race_items(config: "Config") -> list[tuple[str, float]]:
  """(registry name, lr factor) of every run of a seed: ``name@2x`` in
  ``--optimizers`` is that factor only, a plain name every ``--lr-factors``."""
  items = []
  for item in config.optimizers:
    name, factor = split_factor(item)
    items += [(name, f) for f in ([factor] if factor else config.lr_factors)]
  return items


def split_factor(item: str) -> tuple[str, Optional[float]]:
  """``"adamuon@2x"`` -> ("adamuon", 2.0); a name without the suffix -> (name, None)."""
  match = re.fullmatch(r"(.+)@([0-9.]+)x", item)
  return (match[1], float(match[2])) if match else (item, None)


def race_runs(config: "Config", train_tokens, val_tokens, optimizers: Registry) -> dict:
  """Every run of the race: ``{seed: {label: curves}}``.

  Each seed draws its own batches and initialisation; within a seed every run
  starts from the same weights and sees the same batches. Runs are appended
  to ``char_lm_race_runs.jsonl`` in ``--out`` as they finish, and runs found
  there (same seed and label) are not run again, so a race can be resumed or
  extended with more optimizers.
  """
  config.out.mkdir(parents=True, exist_ok=True)
  cache = config.out / "char_lm_race_runs.jsonl"
  runs = {seed: {} for seed in config.seeds}
  if cache.exists():
    for line in cache.read_text().splitlines():
      run = json.loads(line)
      if run["seed"] in runs:
        runs[run["seed"]][run["label"]] = run
  for seed in config.seeds:
    todo = [(n, f) for n, f in race_items(config) if run_label(n, f) not in runs[seed]]
    if not todo:
      continue
    seeded = dataclasses.replace(config, seed=seed)
    train_batches = sample_batches(
        train_tokens, config.steps, config.batch_size, config.context, seed)
    val_batches = sample_batches(
        val_tokens, config.eval_batches, config.batch_size, config.context, seed + 1)
    initial = initial_model(seeded)
    for name, f in todo:
      label = run_label(name, f)
      r = train_one(label, seeded, initial, train_batches, val_batches,
                    {label: variant(name, f, registry=optimizers)})
      run = {"seed": seed, "label": label, "train_loss": r["train_loss"],
             "val_loss": r["val_loss"], "ms_per_step": r["ms_per_step"]}
      runs[seed][label] = run
      with cache.open("a") as out:
        out.write(json.dumps(run) + "\n")
  return runs


def race_summary(runs: dict, names: Sequence[str], steps: int,
                 reference: str = "adamw",
                 ms_per_step: Optional[Mapping[str, float]] = None) -> dict:
  """Per optimizer: the best lr factor and, there, steps and seconds to the reference.

  The best factor, among those run on every seed, minimises the median over
  seeds of the final train loss (mean over the last 10% of steps). The target of each seed is the
  reference's final train loss at its own best factor, on that seed's run.
  Steps to it: the first step at which the trailing-window mean reaches it
  (``steps_to_reach``; ``None``: not within ``steps``). Wall-clock: those
  steps times the run's median ms/step, or ``ms_per_step[name]`` when given
  (e.g. the round-robin timings of benchmarks/race_step_time.py).
  """
  window = final_window(steps)
  final = lambda r: float(smooth(r["train_loss"], window)[-1])
  seeds = list(runs)

  def best_factor(name):
    factors = [f for f in _factors_of(runs, name)
               if all(run_label(name, f) in runs[s] for s in seeds)]
    return min(factors, key=lambda f: float(np.median(
        [final(runs[s][run_label(name, f)]) for s in seeds])))

  reference_factor = best_factor(reference)
  targets = {s: final(runs[s][run_label(reference, reference_factor)]) for s in seeds}
  summary = {}
  for name in names:
    factor = best_factor(name)
    chosen = [runs[s][run_label(name, factor)] for s in seeds]
    reached = [steps_to_reach(r["train_loss"], targets[s], window)
               for s, r in zip(seeds, chosen)]
    ms = ([ms_per_step[name]] * len(chosen) if ms_per_step is not None
          else [r["ms_per_step"] for r in chosen])
    seconds = [None if n is None else n * m / 1e3 for n, m in zip(reached, ms)]
    summary[name] = {
        "lr_factor": factor,
        "final_loss": [final(r) for r in chosen],
        "steps": reached,
        "ms_per_step": ms,
        "seconds": seconds,
    }
  reference_seconds = np.median([steps * m / 1e3 for m in summary[reference]["ms_per_step"]])
  for entry in summary.values():
    entry["steps_ratio"] = _median_or_none(entry["steps"], steps)
    entry["seconds_ratio"] = _median_or_none(entry["seconds"], reference_seconds)
  return summary


def _factors_of(runs: dict, name: str) -> list[float]:
  """The lr factors ``name`` was run at (labels ``name`` and ``name@{f}x``)."""
  factors = set()
  for by_label in runs.values():
    for label in by_label:
      base, factor = split_factor(label)
      if base == name:
        factors.add(factor or 1.0)
  return sorted(factors)


def _median_or_none(values, scale) -> Optional[float]:
  """Median of ``values`` / ``scale``; a value ``None`` (not reached) counts as +inf."""
  median = float(np.median([np.inf if v is None else v for v in values]))
  return None if not np.isfinite(median) else median / scale


def race_table(summary: dict, steps: int, reference: str = "adamw") -> str:
  """The race as a markdown table (median over seeds unless min/median/max)."""
  lines = [f"| optimizer | best lr × | final loss | steps to {reference}'s final loss"
           f" (min/median/max) | × {steps} steps | ms/step | s to it | × {reference}'s s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  show = lambda v: "—" if v is None else f"{v:.2f}"
  for name, e in summary.items():
    reached = [np.inf if n is None else n for n in e["steps"]]
    spread = "/".join("—" if not np.isfinite(v) else f"{v:.0f}"
                      for v in (min(reached), np.median(reached), max(reached)))
    seconds = [np.inf if v is None else v for v in e["seconds"]]
    median_s = float(np.median(seconds))
    lines.append(
        f"| {name} | {e['lr_factor']:g} | {np.median(e['final_loss']):.4f} | {spread}"
        f" | {show(e['steps_ratio'])} | {np.median(e['ms_per_step']):.1f}"
        f" | {show(median_s if np.isfinite(median_s) else None)}"
        f" | {show(e['seconds_ratio'])} |")
  return "\n".join(lines)


def plot_race(runs: dict, summary: dict, path: pathlib.Path) -> None:
  """Loss vs step and vs seconds of each optimizer at its best lr (first seed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  first = runs[next(iter(runs))]
  fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for name, e in summary.items():
    r = first[run_label(name, e["lr_factor"])]
    loss = smooth(r["train_loss"], max(1, len(r["train_loss"]) // 25))
    steps = np.arange(1, len(loss) + 1)
    by_step.plot(steps, loss, label=f"{name} (lr ×{e['lr_factor']:g})")
    by_time.plot(steps * r["ms_per_step"] / 1e3, loss, label=name)
  by_step.set(xlabel="step", ylabel="train cross-entropy (nats/char)")
  by_time.set(xlabel="seconds (steps × median ms/step)")
  top = float(np.median(first[run_label("adamw", summary["adamw"]["lr_factor"])]
                        ["train_loss"][:20]))
  by_step.set_ylim(top=min(top, by_step.get_ylim()[1]))
  by_step.legend(fontsize=8)
  fig.suptitle("race at the best lr of each optimizer (first seed)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def race(config: "Config", train_tokens, val_tokens, optimizers: Registry) -> dict:
  """Runs, summarises, prints and writes the race (``--lr-factors``, ``--seeds``)."""
  names = list(dict.fromkeys(split_factor(item)[0] for item in config.optimizers))
  if "adamw" not in names:
    names.insert(0, "adamw")
    config = dataclasses.replace(config, optimizers=("adamw", *config.optimizers))
  runs = race_runs(config, train_tokens, val_tokens, optimizers)
  summary = race_summary(runs, names, config.steps)
  table = race_table(summary, config.steps)
  header = (f"d_model {config.d_model}, {config.num_layers} layers, {config.steps} steps,"
            f" lr factors {list(config.lr_factors)}, seeds {list(config.seeds)}\n\n")
  print(f"\n{header}{table}")
  config.out.mkdir(parents=True, exist_ok=True)
  (config.out / "char_lm_race.md").write_text(header + table + "\n")
  (config.out / "char_lm_race.json").write_text(json.dumps(
      {"config": {**dataclasses.asdict(config), "out": str(config.out)},
       "summary": summary}, indent=1))
  plot_race(runs, summary, config.out / "char_lm_race.png")
  print(f"wrote {config.out}/char_lm_race.{{png,md,json}}")
  return summary


# ------------------------------------------------------------------ main


def parse_args(
    argv: Optional[Sequence[str]], optimizers: Registry = OPTIMIZERS
) -> Config:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--optimizers", default="adamw,muon,adamuon,adam,lion,sgd",
                      help="comma-separated names from the registry (see --list)")
  parser.add_argument("--list", action="store_true",
                      help="list optimizer names and exit")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--context", type=int, default=64)
  parser.add_argument("--d-model", type=int, default=96)
  parser.add_argument("--num-layers", type=int, default=2)
  parser.add_argument("--num-heads", type=int, default=4)
  parser.add_argument("--corpus-mb", type=float, default=2.0)
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--eval-batches", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--devices", type=int, default=1,
                      help="train data-parallel (batch split) with FSDP parameters on a"
                      " mesh of N devices (fake CPU devices when there are fewer);"
                      " prints each optimizer's per-device cost")
  parser.add_argument("--lr-factors", default="",
                      help="race: comma-separated factors of every registry peak lr"
                      " (e.g. 0.5,1,2); each optimizer is reported at its best one")
  parser.add_argument("--seeds", default="",
                      help="race: comma-separated seeds (batches and initialisation);"
                      " steps to adamw's final loss are given as min/median/max over them")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "out")
  args = parser.parse_args(argv)
  if args.list:
    print("\n".join(optimizers))
    raise SystemExit(0)
  names = tuple(n.strip() for n in args.optimizers.split(",") if n.strip())
  factors = tuple(float(f) for f in args.lr_factors.split(",") if f.strip())
  seeds = tuple(int(v) for v in args.seeds.split(",") if v.strip())
  racing = bool(factors or seeds)  # a race also takes name@{factor}x
  unknown = [n for n in names if n not in optimizers
             and not (racing and split_factor(n)[0] in optimizers)]
  if unknown:
    parser.error(
        f"unknown optimizer(s) {unknown}; choose from {list(optimizers)}")
  fields = {f.name for f in dataclasses.fields(Config)}
  values = {k: v for k, v in vars(args).items() if k in fields}
  if factors or seeds:
    factors, seeds = factors or (1.0,), seeds or (args.seed,)
  if any(f <= 0 for f in factors):
    parser.error(f"--lr-factors must be positive, got {args.lr_factors}")
  if factors and args.devices != 1:
    parser.error("--lr-factors/--seeds race on one device (omit --devices)")
  return Config(**{**values, "optimizers": names, "lr_factors": factors, "seeds": seeds})


def make_mesh(config: Config) -> Optional[Mesh]:
  """A 1-D mesh ``("d",)`` of ``config.devices`` devices, or ``None`` for one.

  Run as a script with fewer devices than asked, the process restarts itself
  with that many fake CPU devices (XLA reads the flag once, at start-up).
  """
  if config.devices == 1:
    return None
  if config.batch_size % config.devices:
    raise ValueError(f"--batch-size {config.batch_size} must be a multiple of"
                     f" --devices {config.devices} (the batch is split over them)")
  if len(jax.devices()) < config.devices:
    flag = f"--xla_force_host_platform_device_count={config.devices}"
    if __name__ == "__main__" and flag not in os.environ.get("XLA_FLAGS", ""):
      env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}",
                 JAX_PLATFORMS="cpu")
      os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise ValueError(f"--devices {config.devices}: only {len(jax.devices())} devices;"
                     f" set XLA_FLAGS={flag} before jax is imported")
  # Auto axes: XLA lays out the model's own computation (FSDP gathers, data
  # parallel reductions); the optimizer's matrix work goes to its owners.
  return jax.make_mesh((config.devices,), ("d",), axis_types=(AxisType.Auto,))


def main(
    argv: Optional[Sequence[str]] = None, optimizers: Registry = OPTIMIZERS
) -> dict:
  """Runs the comparison; returns ``{name: curves and timings}`` (a race: its summary).

  ``optimizers``: the registry the names of ``--optimizers`` come from.
  """
  config = parse_args(argv, optimizers)
  mesh = make_mesh(config)
  train_tokens, val_tokens = load_corpus(config.corpus_mb)
  entropy = unigram_entropy(train_tokens)
  print(f"corpus: {len(train_tokens):,} train / {len(val_tokens):,} val chars,"
        f" unigram entropy {entropy:.3f} nats")
  if config.seeds:
    return race(config, train_tokens, val_tokens, optimizers)
  train_batches = sample_batches(
      train_tokens, config.steps, config.batch_size, config.context, config.seed)
  val_batches = sample_batches(
      val_tokens, config.eval_batches, config.batch_size, config.context,
      config.seed + 1)
  initial = initial_model(config)
  results = {
      name: train_one(name, config, initial, train_batches, val_batches, optimizers, mesh)
      for name in config.optimizers
  }
  reference = "adamw" if "adamw" in results else config.optimizers[0]
  table = results_table(results, reference)
  note = "" if reference == "adamw" else (
      f"(adamw not in the run: {reference} is the reference)\n")
  if mesh is not None:
    table += "\n\n" + cost_table(results, mesh.size)
  print(f"\n{note}{table}")
  config.out.mkdir(parents=True, exist_ok=True)
  (config.out / "char_lm.md").write_text(note + table + "\n")
  (config.out / "char_lm.json").write_text(json.dumps(
      {"config": {**dataclasses.asdict(config), "out": str(config.out)},
       "unigram_entropy": entropy, "reference": reference, "results": results},
      indent=1))
  plot_curves(results, entropy, config.out / "char_lm.png")
  print(f"wrote {config.out}/char_lm.{{png,md,json}}")
  return results


if __name__ == "__main__":
  main()
