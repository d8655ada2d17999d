"""The named optimizer entries the main job, the race and the benchmarks share.

``OPTIMIZERS`` maps a name to a factory of the number of training steps that
returns an ``optax.GradientTransformation``, every peak learning rate on the
``warmup_cosine`` schedule; the comments next to the entries say where each
peak came from (benchmarks/RESULTS.md). ``variant(name, lr_factor, **kwargs)``
is an entry at other peaks (and keyword arguments), ``run_label`` and
``split_factor`` its name in a race (``name@2x``).

Used by ``examples/char_lm.py`` (``--optimizers``, ``--list``), the race
(benchmarks/race.py), the learning-rate grids and step-time benchmarks, and
the workload suite (benchmarks/suite). tests/benchmarks/test_registry.py
keeps every gradtx factory an entry calls in tests/support/cases.py's
batteries.

To add an optimizer, add an entry to ``OPTIMIZERS``: a name and a function of
the number of training steps returning an ``optax.GradientTransformation``.
"""

import contextvars
import math
import re
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from gradtx import contrib
from gradtx import optimizers as go
from gradtx import transforms as gt

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


def warmup_then_peak(peak: float, steps: int) -> optax.Schedule:
  """Linear warm-up over the first 10% of steps, then ``peak`` held: the
  schedule Schedule-Free runs (it averages its iterates instead of decaying).

  Inside ``variant(name, lr_factor)`` the peak is ``lr_factor`` times ``peak``.
  """
  peak = peak * _PEAK_FACTOR.get()
  return optax.linear_schedule(0.0, peak, max(1, steps // 10))


def matrices(params):
  """Weight-decay mask: decay weight matrices, not biases or norm scales."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


# The peak learning rates of the muon entry: its own and its AdamW side's.
MUON_PEAK, MUON_ADAMW_PEAK = 0.02, 1.8e-2


def _muon_adamw(n: int) -> dict:
  """The AdamW side of the Muon-family entries (embeddings, head, norms,
  biases): b2 0.99, no decay, peak 1.8e-2 = 3x AdamW's tuned 6e-3, the best
  of 0.5-6x for Muon and AdaMuon on the race (benchmarks/race_two_lrs.py;
  benchmarks/RESULTS.md, "Fourth quadrant")."""
  return dict(adam_learning_rate=warmup_cosine(MUON_ADAMW_PEAK, n), adam_b2=0.99,
              adam_weight_decay=0.0)


def _fast_embeddings(n: int) -> dict:
  """The embeddings (token table, positions) on their own AdamW at 1.8e-1 =
  30x AdamW's peak (the factories' ``embedding_learning_rate``; the AdamW
  side's b2 and decay): the best of 3-100x on the race
  (benchmarks/race_two_lrs.py items ``.../e<E>``; benchmarks/RESULTS.md,
  "Fourth quadrant")."""
  return dict(embedding_learning_rate=warmup_cosine(1.8e-1, n))


def _adamw(n: int, *, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 0.1):
  """The adamw entry with one of its other hyper-parameters changed."""
  return go.adamw(warmup_cosine(6e-3, n), b1=b1, b2=b2, weight_decay=weight_decay,
                  mask=matrices)


# name -> factory(total_steps) -> optax.GradientTransformation. Peak learning
# rates of adamw/adam, lion and sgd come from a sweep at the default settings
# (adamw 1e-3..1e-2, lion 1e-4..3e-3 with weight decay 0.03..1, sgd 0.1..1);
# the other entries are untuned starting points.
OPTIMIZERS: dict[str, Callable[[int], optax.GradientTransformation]] = {
    "adamw": _adamw,
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
    "muon": lambda n: go.muon(warmup_cosine(MUON_PEAK, n), weight_decay=0.0, **_muon_adamw(n)),
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
    # AdaMuon's later reference code (gpt2/models/optimizers/adamuon.py): the
    # momentum's sign orthogonalized, v decayed by beta, no bias correction.
    "adamuon:later_code": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), sign_momentum=True, b2=0.95, debias=False,
        **_muon_adamw(n)),
    # Its three changes one at a time (which of them costs the later code's steps).
    "adamuon:sign": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), sign_momentum=True, **_muon_adamw(n)),
    "adamuon:b2=0.95": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), b2=0.95, **_muon_adamw(n)),
    "adamuon:no_debias": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), debias=False, **_muon_adamw(n)),
    # The later code but the sign: v at beta, no bias correction.
    "adamuon:b2=0.95:no_debias": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), b2=0.95, debias=False, **_muon_adamw(n)),
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
    # Later methods at the rates their sources suggest, untuned here: PSGD Kron
    # at AdamW's / 3 (psgd-jax: 3-10x smaller than AdamW's), AdEMAMix and MARS at
    # AdamW's, AdamH at Marin's sqrt(ηλ) of AdamW's (η 6e-3, λ 0.1), MuonH at
    # Muon's (a step of Muon's relative size on a matrix of Frobenius norm √d).
    "psgd_kron": lambda n: go.psgd_kron(
        warmup_cosine(2e-3, n), weight_decay=0.1, mask=matrices),
    "ademamix": lambda n: go.ademamix(
        warmup_cosine(6e-3, n), b2=0.99, weight_decay=0.1, mask=matrices),
    "mars_adamw": lambda n: go.mars_adamw(
        warmup_cosine(6e-3, n), weight_decay=0.1,
        adam_learning_rate=warmup_cosine(6e-3, n), adam_b2=0.99),
    "adamh": lambda n: go.adamh(
        warmup_cosine(2.4e-2, n), adam_learning_rate=warmup_cosine(6e-3, n), adam_b2=0.99),
    "muonh": lambda n: go.muonh(warmup_cosine(0.02, n), **_muon_adamw(n)),
    # Issue 25: AdamW's other hyper-parameters, one at a time around the adamw
    # entry (Marin's point, arXiv 2509.02046: a baseline tuned in its learning
    # rate alone flatters whatever is compared with it).
    "adamw:b1=0.95": lambda n: _adamw(n, b1=0.95),
    "adamw:b2=0.95": lambda n: _adamw(n, b2=0.95),
    "adamw:b2=0.999": lambda n: _adamw(n, b2=0.999),
    "adamw:wd=0": lambda n: _adamw(n, weight_decay=0.0),
    "adamw:wd=0.3": lambda n: _adamw(n, weight_decay=0.3),
    # The two changes that gained alone, together (b2 0.95 with the better decay).
    "adamw:wd=0:b2=0.95": lambda n: _adamw(n, b2=0.95, weight_decay=0.0),
    "adamw:wd=0.3:b2=0.95": lambda n: _adamw(n, b2=0.95, weight_decay=0.3),
    # SOAP without its decay: the suite's CNN and MLP prefer AdamW without one.
    "soap:wd=0": lambda n: go.soap(warmup_cosine(1.2e-2, n), weight_decay=0.0),
    # The contenders' other hyper-parameters, as AdamW's were (the suite's CNN,
    # ViT and MLP, where no optimizer reached 0.6x): SOAP's moments at the
    # decays AdamW's entry uses, and AdaMuon without its 0.01 decay.
    "soap:b1=0.9": lambda n: go.soap(
        warmup_cosine(1.2e-2, n), b1=0.9, weight_decay=0.1, mask=matrices),
    "soap:b2=0.99": lambda n: go.soap(
        warmup_cosine(1.2e-2, n), b2=0.99, weight_decay=0.1, mask=matrices),
    "adamuon:wd=0": lambda n: go.adamuon(
        warmup_cosine(1.2e-2, n), weight_decay=0.0, **_muon_adamw(n)),
    # The Kronecker methods refreshing their preconditioner every step (the
    # entries refresh every 10): what the small workloads lose to amortisation.
    "soap:every=1": lambda n: go.soap(
        warmup_cosine(1.2e-2, n), weight_decay=0.1, mask=matrices, precondition_every=1),
    "shampoo:every=1": lambda n: OPTIMIZERS["shampoo"](n, precondition_every=1),
    "adamw:cautious_wd": lambda n: go.adamw(
        warmup_cosine(6e-3, n), b2=0.99, weight_decay=0.1, mask=matrices,
        cautious_weight_decay=True),
    # Cautious updates (C-AdamW, gt.cautious's docstring): Adam's direction
    # masked where it disagrees with the gradient, AdamW's decay after the mask.
    # Stop 55's optimizers (the rest of optax's family) at their sources' default
    # peak over Adam's 1e-3, times the adamw entry's 6e-3; untuned here. AdaMaxW,
    # RAdamW, ADOPTW, ACProp and Schedule-Free AdamW take the adamw entry's decay
    # (0.1 on the matrices), Adan its 0.02, the rest none.
    # AdaMax 2e-3 (Kingma & Ba), RAdam, ADOPT, ACProp 1e-3 (their code), Adan
    # 1e-3 at 0.02 decay (sail-sg/Adan's defaults; its README runs it at 5-10x
    # Adam's rate), Yogi 1e-2 at its eps 1e-3 (Zaheer
    # et al.), NovoGrad 1e-2 (a first guess, no source's rule), SM3 at the
    # adagrad entry's 3e-2, Adadelta 1.0 (torch); Fromage's 1e-2 (Bernstein et
    # al.) as it is: a relative step per layer, not on Adam's scale.
    "adamaxw": lambda n: go.adamaxw(
        warmup_cosine(1.2e-2, n), weight_decay=0.1, mask=matrices),
    "radamw": lambda n: go.radamw(warmup_cosine(6e-3, n), weight_decay=0.1, mask=matrices),
    "adoptw": lambda n: go.adoptw(warmup_cosine(6e-3, n), weight_decay=0.1, mask=matrices),
    "acprop": lambda n: go.acprop(warmup_cosine(6e-3, n), weight_decay=0.1, mask=matrices),
    "adan": lambda n: go.adan(warmup_cosine(6e-3, n), weight_decay=0.02, mask=matrices),
    "yogi": lambda n: go.yogi(warmup_cosine(6e-2, n)),
    "novograd": lambda n: go.novograd(warmup_cosine(6e-2, n)),
    "sm3": lambda n: go.sm3(warmup_cosine(3e-2, n)),
    "adadelta": lambda n: go.adadelta(warmup_cosine(1.0, n)),
    "fromage": lambda n: go.fromage(warmup_cosine(1e-2, n)),
    # Schedule-Free: warm-up, then its peak held (it needs no decay); the
    # official AdamWScheduleFree's 2.5e-3 over AdamW's 1e-3, and SGD's at the
    # sgd entry's 0.1. The suite evaluates its averaged x (train.evaluation_point).
    "schedule_free_adamw": lambda n: go.schedule_free_adamw(
        warmup_then_peak(1.5e-2, n), weight_decay=0.1, mask=matrices),
    "schedule_free_sgd": lambda n: go.schedule_free_sgd(warmup_then_peak(0.1, n)),
    # Prodigy at its own η of 1 (a multiplier of its learned step size) on the
    # entries' warm-up-cosine, as its authors advise a cosine schedule, with
    # their advice for a warm-up (safeguard_warmup) and Adam's bias correction;
    # the adamw entry's decay on the matrices.
    "prodigy": lambda n: go.prodigy(
        warmup_cosine(1.0, n), use_bias_correction=True, safeguard_warmup=True,
        weight_decay=0.1, mask=matrices),
    # D-Adaptation Adam as Prodigy (its η of 1 on the warm-up-cosine, bias
    # correction, the adamw entry's decay); MADGRAD at the rule of stop 55's
    # entries: its official 1e-2 over Adam's 1e-3, times the adamw entry's 6e-3,
    # without decay (its official default).
    "dadapt_adamw": lambda n: go.dadapt_adamw(
        warmup_cosine(1.0, n), use_bias_correction=True, weight_decay=0.1, mask=matrices),
    "madgrad": lambda n: go.madgrad(warmup_cosine(6e-2, n)),
    # DoG and DoWG at their multiplier of 1 on the warm-up-cosine (the DoG
    # authors advise no schedule: the entries' warm-up-cosine is the suite's
    # rule), their defaults' initial distances.
    "dog": lambda n: go.dog(warmup_cosine(1.0, n)),
    "dowg": lambda n: go.dowg(warmup_cosine(1.0, n)),
    # COCOB at its multiplier of 1 on the warm-up-cosine (the paper has no
    # learning rate; the schedule is the suite's rule), its α of 100.
    "cocob": lambda n: go.cocob(warmup_cosine(1.0, n)),
    # Mechanic around the adamw entry (its peak, schedule and decay): S tunes
    # the scale of the sum of AdamW's steps (the official default s_init).
    "mechanize_adamw": lambda n: go.mechanize(_adamw(n)),
    "adamw:cautious": lambda n: optax.chain(
        gt.cautious(gt.scale_by_adam(b2=0.99)), gt.decoupled_weight_decay(0.1, matrices),
        gt.scale_by_learning_rate(warmup_cosine(6e-3, n))),
}


Factory = Callable[[int], optax.GradientTransformation]  # an entry of OPTIMIZERS
Registry = Mapping[str, Factory]


def variant(name: str, lr_factor: float = 1.0, *, registry: Optional["Registry"] = None,
            **kwargs) -> Factory:
  """Registry entry ``name`` with every peak learning rate times ``lr_factor``.

  Keyword arguments go to the entry (shampoo and soap take them). Wrappers
  scale their base's peaks too (sam, lookahead), Muon both of its own. The
  result is a factory like the entries', for ``examples/char_lm.py``'s
  ``main(optimizers=...)``.
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


def run_label(name: str, factor: float) -> str:
  """The race's label of entry ``name`` at ``factor`` times its peaks: ``name@2x``
  (``name`` alone at 1x); ``split_factor`` reads it back."""
  return name if factor == 1 else f"{name}@{factor:g}x"


def split_factor(item: str) -> tuple[str, Optional[float]]:
  """``"adamuon@2x"`` -> ("adamuon", 2.0); a name without the suffix -> (name, None).

  Raises ``ValueError`` for a suffix that is not a positive number
  (``muon@0x``, ``muon@1.5.x``)."""
  if "@" not in item:
    return item, None
  match = re.fullmatch(r"(.+)@((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)x", item)
  if not match or not float(match[2]) > 0:
    raise ValueError(f"{item!r}: an lr factor is written name@Fx with F a positive number"
                     " (muon@2x, muon@0.75x)")
  return match[1], float(match[2])


def check_factors(option: str, factors: Sequence[float]) -> None:
  """``ValueError`` unless every lr factor is a positive finite number."""
  bad = [f for f in factors if not (math.isfinite(f) and f > 0)]
  if bad:
    raise ValueError(f"{option} must be positive finite numbers, got {', '.join(map(str, bad))}")
