"""The optimizer registry every cross-cutting battery runs over.

Each optimizer in gradtx.optimizers (and each variant whose state or code
path differs) is one ``Case``, built here and nowhere else; adding a line to
``CASES`` or ``STRUCTURED`` puts a new optimizer through tests/
test_integration.py, test_non_finite.py and test_sharding.py
(``test_cases_cover_every_optimizer`` fails until it is added). The
element-wise optimizers (``CASES``) get every check; the structured ones
(preconditioners, factored, block-shared and quantized states:
``STRUCTURED``), whose programs take several times longer to compile, get the
checks most likely to break in them.

The main job's registry (benchmarks/registry.py: tuned peak learning rates
on the warm-up-cosine schedule) names a subset of these factories at other
settings; tests/benchmarks/test_registry.py fails when an entry builds a
factory that has no case here.

``shared_step`` and ``injected`` compile a case's step once for the whole
session, so the batteries share their compilations.
"""

import collections
import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest

from gradtx import contrib
from gradtx import optimizers as go
from tests.support.helpers import PARAMS

LR = 0.1
SCHEDULE = optax.linear_schedule(LR, LR / 10, transition_steps=4)


def _decay_matrices(params):
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


class Case(NamedTuple):
  """One optimizer configuration: ``factory(learning_rate, **kwargs)``."""

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict
  static_args: tuple = ()  # non-numeric arguments for inject_hyperparams
  # optax.adafactor's order: η is applied before the momentum and the weight
  # decay, so the state holds η-scaled steps and λ is not scaled by η.
  lr_mid_chain: bool = False
  # Storage dtypes the optimizer fixes whatever the params' (e.g. lookahead's
  # float32 slow weights of bf16 params).
  fixed_state_dtypes: tuple = ()
  # With zero gradients the update is exactly −η λ p on the decayed leaves
  # (a decoupled decay after a rule that maps a zero gradient to 0).
  decoupled_decay: bool = False
  # The state depends on η, unlike a state of gradient statistics: it keeps
  # the stepped parameters (parameter_ema's average), or statistics of
  # η-scaled gradients (D-Adaptation's m and s), or a rate of 0 skips a step.
  state_depends_on_lr: bool = False
  # The hyperball's η is an angle: the step is not affine in it.
  nonlinear_lr: bool = False
  # The weights shrink whatever the gradient (Fromage's 1/√(1+η²)), with no
  # weight_decay argument to say so.
  shrinks_weights: bool = False

  def make(self, learning_rate: Any = LR, **overrides):
    return self.factory(learning_rate, **{**self.kwargs, **overrides})

  def inject(self, learning_rate: Any = LR):
    factory = optax.inject_hyperparams(
        self.factory, static_args=self.static_args
    )
    return factory(learning_rate=learning_rate, **self.kwargs)

  def _argument(self, name):
    params = inspect.signature(self.factory).parameters
    return self.kwargs.get(name, params[name].default) if name in params else None

  @property
  def weight_decay(self) -> float:
    return self._argument("weight_decay") or 0.0

  @property
  def decays_weights(self) -> bool:
    return self.weight_decay != 0 or self.shrinks_weights

  def decay_mask(self, params):
    """Which leaves the weight decay touches (``optax.masked`` semantics)."""
    mask = self._argument("mask")
    if mask is None:
      return jax.tree.map(lambda _: True, params)
    return mask(params) if callable(mask) else mask

  @property
  def sign_based(self) -> bool:
    return self.factory in (go.signsgd, go.lion, go.tiger)

  @property
  def elementwise(self) -> bool:
    """Whether each update coordinate depends on its own gradient only."""
    return self.factory not in (
        go.muon, go.shampoo, go.soap, go.adafactor, go.adam_mini, go.adamw_8bit,
        go.kfac, go.dion, go.normuon, go.adamuon, contrib.adamuon_lm, go.soap_muon, go.vmuon,
        go.mars_adamw, go.adamh, go.muonh, go.psgd_kron, go.sm3,
        go.lars, go.lamb,  # a leaf-wise norm: a NaN or inf spreads over the leaf
        go.novograd, go.fromage,  # likewise
        go.prodigy, go.dadapt_adamw,  # one step size D from sums over the whole tree
        go.dog, go.dowg,  # one step size from norms over the whole tree
        mechanize_adamw,  # one scale S from inner products over the whole tree
        record_recipe,
    )

  @property
  def state_dtypes(self) -> set:
    """Storage dtypes fixed by the configuration rather than the params."""
    dtypes = {
        jnp.dtype(self.kwargs[k])
        for k in ("mu_dtype", "nu_dtype")
        if self.kwargs.get(k) is not None
    }
    return dtypes | {jnp.dtype(d) for d in self.fixed_state_dtypes}


def lookahead_adamw(learning_rate, b1=0.9, weight_decay=1e-4):
  """``go.lookahead`` around ``go.adamw``: the wrapper through the battery."""
  return go.lookahead(
      go.adamw(learning_rate, b1=b1, weight_decay=weight_decay), sync_period=2)


def mechanize_adamw(learning_rate, b1=0.9, weight_decay=1e-4, s_init=1e-4):
  """``go.mechanize`` around ``go.adamw``: Mechanic through the battery (its
  initial wealth large, so that the battery's short runs move)."""
  return go.mechanize(
      go.adamw(learning_rate, b1=b1, weight_decay=weight_decay), s_init=s_init)


def parameter_ema_adamw(learning_rate, b1=0.9, weight_decay=1e-4):
  """``go.parameter_ema`` around ``go.adamw``: the EMA wrapper through the battery."""
  return go.parameter_ema(
      go.adamw(learning_rate, b1=b1, weight_decay=weight_decay), decay=0.9, start_step=1)


def schedule_free_adam(learning_rate, b1=0.9, weight_decay=1e-4):
  """``go.schedule_free`` around ``go.adam`` without momentum: the wrapper through the battery."""
  return go.schedule_free(go.adam(learning_rate, b1=0.0, weight_decay=weight_decay),
                          learning_rate=learning_rate, b1=b1)


def record_recipe(learning_rate, weight_decay=1e-2):
  """Issue 29's record recipe: an EMA of ``go.soap_muon`` with cautious decay."""
  return go.parameter_ema(
      go.soap_muon(learning_rate, precondition_every=2, weight_decay=weight_decay,
                   cautious_weight_decay=True),
      decay=0.9)


CASES = [
    Case("sgd", go.sgd, {}),
    Case("sgd_momentum", go.sgd, dict(momentum=0.9)),
    Case(
        "sgd_nesterov_wd",
        go.sgd,
        dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    ),
    Case("adagrad", go.adagrad, {}),
    Case("rmsprop", go.rmsprop, {}),
    Case(
        "rmsprop_centered_momentum",
        go.rmsprop,
        dict(centered=True, momentum=0.9),
    ),
    Case("adam", go.adam, {}),
    Case("adam_amsgrad", go.adam, dict(amsgrad=True)),
    Case("adamw", go.adamw, {}, decoupled_decay=True),
    Case("adamw_amsgrad", go.adamw, dict(amsgrad=True), decoupled_decay=True),
    Case("adamw_cautious_wd", go.adamw, dict(weight_decay=0.1, cautious_weight_decay=True),
         decoupled_decay=True),
    Case("ademamix", go.ademamix, dict(b3=0.999, weight_decay=1e-2), decoupled_decay=True),
    Case("parameter_ema", parameter_ema_adamw, dict(weight_decay=1e-2),
         fixed_state_dtypes=(jnp.float32,), decoupled_decay=True, state_depends_on_lr=True),
    Case(
        "adamw_mask",
        go.adamw,
        dict(mask=_decay_matrices, weight_decay=0.1),
        static_args=("mask",),
        decoupled_decay=True,
    ),
    Case(
        "adamw_bf16_nu",
        go.adamw,
        dict(nu_dtype=jnp.bfloat16),
        static_args=("nu_dtype",),
    ),
    Case("adabelief", go.adabelief, dict(weight_decay=1e-2), decoupled_decay=True),
    Case("acprop", go.acprop, dict(weight_decay=1e-2), decoupled_decay=True),
    Case("acprop_amsgrad", go.acprop, dict(amsgrad=True)),
    Case("adamax", go.adamax, dict(weight_decay=1e-2)),
    Case("adamaxw", go.adamaxw, {}, decoupled_decay=True),
    Case("radam", go.radam, dict(weight_decay=1e-2)),
    Case("radamw", go.radamw, {}, decoupled_decay=True),
    Case("yogi", go.yogi, dict(weight_decay=1e-2), decoupled_decay=True),
    Case("adopt", go.adopt, dict(weight_decay=1e-2)),
    # ADOPT's first step moves nothing, its decoupled decay included (the
    # official code's order): not the −ηλp the decoupled-decay check expects there.
    Case("adoptw", go.adoptw, {}),
    Case("signsgd", go.signsgd, {}),
    Case("signsgd_momentum", go.signsgd, dict(momentum=0.9)),
    Case("lion", go.lion, dict(weight_decay=1e-2), decoupled_decay=True),
    Case("tiger", go.tiger, dict(weight_decay=1e-2), decoupled_decay=True),
    # LARS's learning rate sits inside its momentum, as in the paper.
    Case("lars", go.lars, dict(weight_decay=1e-2, nesterov=True, trust_coefficient=1.0),
         lr_mid_chain=True),
    Case("lars_mask", go.lars,
         dict(weight_decay=1e-2, mask=_decay_matrices, trust_coefficient=1.0),
         static_args=("mask",), lr_mid_chain=True),
    Case("lamb", go.lamb, dict(weight_decay=1e-2)),
    Case("lookahead", lookahead_adamw, dict(weight_decay=1e-2),
         fixed_state_dtypes=(jnp.float32,)),
    # Mechanic: its scale S multiplies the sum of the base's η-scaled steps.
    Case("mechanize", mechanize_adamw, dict(weight_decay=1e-2),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True, nonlinear_lr=True),
    Case(
        "muon",
        go.muon,
        dict(weight_decay=1e-2),
        static_args=("ns_steps",),
        decoupled_decay=True,
    ),
    # MARS-approx (MARS-exact needs update(..., grad_fn=): tests/optimizers/test_mars.py).
    Case("mars_adamw", go.mars_adamw, dict(weight_decay=1e-2, adam_weight_decay=1e-2),
         decoupled_decay=True),
    Case("adamh", go.adamh, {}, nonlinear_lr=True),
    # Schedule-Free keeps z (float32 for bf16 params); y lags z, so a zero-gradient
    # step is not the bare −ηλp after the first.
    Case("schedule_free_sgd", go.schedule_free_sgd, dict(weight_decay=1e-2),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True),
    Case("schedule_free_adamw", go.schedule_free_adamw, dict(weight_decay=1e-2, warmup_steps=2),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True),
    Case("schedule_free", schedule_free_adam, dict(weight_decay=1e-2),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True),
    # Adan's proximal decay p/(1 + ηλ): not affine in η, not exactly −ηλp at g = 0.
    Case("adan", go.adan, dict(weight_decay=1e-2), nonlinear_lr=True),
    # Adadelta's own η is 1: at the batteries' 0.02-0.1 its first steps, η√(ε/(1−ρ)),
    # are 6e-5 with the default ε (too small to train a model in 15 steps).
    Case("adadelta", go.adadelta, dict(eps=1e-3, weight_decay=1e-2)),
    # One float32 second moment per leaf, whatever the params' dtype.
    Case("novograd", go.novograd, dict(weight_decay=1e-2), fixed_state_dtypes=(jnp.float32,)),
    # The step is η/√(1+η²)·(ratio·g) − (1 − 1/√(1+η²))·w: not affine in η.
    Case("fromage", go.fromage, {}, nonlinear_lr=True, shrinks_weights=True),
    # Prodigy learns its step size D from the distance travelled (p₀ and the sums
    # s in float32 for bf16 params); η multiplies D, which depends on η: not affine.
    Case("prodigy", go.prodigy, dict(weight_decay=1e-2, estim_lr0=0.5),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True, nonlinear_lr=True),
    # D-Adaptation: Prodigy's predecessor (its sums s in float32 for bf16 params;
    # η multiplies D, which depends on η: not affine).
    Case("dadapt_adamw", go.dadapt_adamw, dict(weight_decay=1e-2, estim_lr0=0.5),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True, nonlinear_lr=True),
    # MADGRAD: dual averaging from x₀ (kept, float32 for bf16 params) with a
    # weight λ_k = (η + ε)√(k+1) in both sums: s/ν^⅓ scales as η^⅔.
    # DoG and DoWG: SGD at a step size from the distance travelled (p₀ kept,
    # float32 for bf16 params); η multiplies it. LDoG: one per leaf. Their
    # initial distance large (as prodigy's d₀), so that the battery's η of
    # 0.02 takes steps of its size from the first (the defaults' r_ε of
    # 1e-6·(1 + ‖p₀‖) start at 1e-6 and grow over hundreds of steps).
    Case("dog", go.dog, dict(weight_decay=1e-2, reps_rel=0.5),
         fixed_state_dtypes=(jnp.float32,)),
    Case("ldog", go.dog, dict(layer_wise=True, reps_rel=0.5), fixed_state_dtypes=(jnp.float32,)),
    Case("dowg", go.dowg, dict(weight_decay=1e-2, init_estim_sq_dist=4.0),
         fixed_state_dtypes=(jnp.float32,)),
    # COCOB-Backprop: coin betting per coordinate from p₀ (kept, float32 for
    # bf16 params); its reward reads p − p₀, which η moves.
    Case("cocob", go.cocob, dict(weight_decay=1e-2, alpha=10.0),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True),
    Case("madgrad", go.madgrad, dict(weight_decay=1e-2, decouple_decay=True),
         fixed_state_dtypes=(jnp.float32,), state_depends_on_lr=True, nonlinear_lr=True),
]
# Structured states: a lighter battery (see the module docstring).
STRUCTURED = [
    Case(
        "shampoo",
        go.shampoo,
        dict(precondition_every=2, weight_decay=1e-2),
        static_args=("precondition_every", "block_size", "max_precondition_dim"),
        decoupled_decay=True,
    ),
    Case(
        "soap",
        go.soap,
        dict(precondition_every=2),
        static_args=("precondition_every", "max_precondition_dim"),
        decoupled_decay=True,
    ),
    Case(
        "adafactor",
        go.adafactor,
        dict(min_dim_size_to_factor=2, b1=0.9, weight_decay=1e-2),
        static_args=("min_dim_size_to_factor", "decay_offset"),
        lr_mid_chain=True,
    ),
    Case("adam_mini", go.adam_mini, dict(weight_decay=1e-2), decoupled_decay=True),
    Case("adamw_8bit", go.adamw_8bit, {}, static_args=("block_size",),
         decoupled_decay=True),
    # K-FAC's diagonal rule on every leaf, which needs no records: the
    # batteries call update(grads, state, params) only. Its dense blocks (with
    # records) are tested in tests/transforms/test_kfac.py and
    # tests/optimizers/test_nnx_records.py.
    Case("kfac", go.kfac,
         dict(damping=1.0, precondition_every=2, weight_decay=1e-2,
              is_dense=lambda path, leaf: False),
         static_args=("precondition_every", "is_dense"), decoupled_decay=True),
    # The fourth quadrant: Muon's routing with a matrix side each.
    Case("normuon", go.normuon, dict(weight_decay=1e-2), static_args=("ns_steps",),
         decoupled_decay=True),
    Case("adamuon", go.adamuon, dict(weight_decay=1e-2), static_args=("ns_steps",),
         decoupled_decay=True),
    # Its AdamW side steps at 1.5η with no decay: not the single −ηλp the
    # decoupled-decay check expects (adamuon's case checks the matrix side's).
    Case("adamuon_lm", contrib.adamuon_lm, dict(weight_decay=1e-2)),
    Case("soap_muon", go.soap_muon, dict(precondition_every=2, weight_decay=1e-2),
         static_args=("ns_steps", "precondition_every", "max_precondition_dim"),
         decoupled_decay=True),
    Case("vmuon", go.vmuon, dict(weight_decay=1e-2), static_args=("ns_steps",),
         decoupled_decay=True),
    Case("muonh", go.muonh, {}, static_args=("ns_steps",), nonlinear_lr=True),
    Case("record_recipe", record_recipe, {}, fixed_state_dtypes=(jnp.float32,),
         decoupled_decay=True, state_depends_on_lr=True),
    Case("psgd_kron", go.psgd_kron,
         dict(weight_decay=1e-2, precond_update_probability=0.5, memory_save_mode="one_diag"),
         static_args=("max_size_triangular", "min_ndim_triangular", "memory_save_mode",
                      "precond_dtype", "seed"),
         decoupled_decay=True),
    Case("sm3", go.sm3, {}),
    Case("dion", go.dion, dict(rank=1, weight_decay=1e-2),
         static_args=("rank", "power_iters", "orthonormalize", "seed", "is_muon_param"),
         decoupled_decay=True),
]

CASES_BY_NAME = {c.name: c for c in CASES + STRUCTURED}
cases = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
structured = pytest.mark.parametrize(
    "case", STRUCTURED, ids=[c.name for c in STRUCTURED]
)
every_case = pytest.mark.parametrize(
    "case", CASES + STRUCTURED, ids=[c.name for c in CASES + STRUCTURED]
)


def is_optimizer(name: str) -> bool:
  """Whether ``go.<name>`` is an optimizer factory (learning rate first)."""
  parameters = list(inspect.signature(getattr(go, name)).parameters)
  return parameters[:1] == ["learning_rate"]


# Traces of each shared step, by (name, scheduled).
TRACES = collections.Counter()


@functools.cache
def shared_step(name, scheduled=False):
  """A case's jitted training step, compiled once for the whole session.

  Returns (tx, step) with ``step(params, state, grads) -> (params, state,
  updates)``; every trace is counted in ``TRACES[name, scheduled]``.
  """
  tx = CASES_BY_NAME[name].make(SCHEDULE if scheduled else LR)

  @jax.jit
  def step(params, state, grads):
    TRACES[name, scheduled] += 1
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  return tx, step


def run_shared(name, grads_seq, scheduled=False, state=None):
  """``helpers.run_steps`` with the shared jitted step, from ``PARAMS``."""
  tx, step = shared_step(name, scheduled)
  params = PARAMS
  state = tx.init(params) if state is None else state
  updates_seq = []
  for grads in grads_seq:
    params, state, updates = step(params, state, grads)
    updates_seq.append(updates)
  return params, state, updates_seq


@functools.cache
def injected(name):
  """The inject_hyperparams form of a case and its jitted update, shared."""
  tx = CASES_BY_NAME[name].inject(LR)
  return tx, jax.jit(tx.update)
