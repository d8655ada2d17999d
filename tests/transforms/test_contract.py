"""The contract every public transform of gradtx.transforms keeps, table-driven.

``TABLE`` lists each transform factory (those annotated to return an
``optax.GradientTransformation``, as in tests/test_conventions.py) with its
numeric arguments' ranges, its string-valued choices and the configurations
its behaviour is checked in; ``test_table_covers_every_transform_and_argument``
keeps it complete. The contract (README, Conventions; STYLE.md, Errors):

* a bad argument raises ``ValueError`` when the factory is called, with a
  message that names the argument and the allowed range
  (``b1 must be in [0, 1), got 1.5``); arrays and tracers (what
  ``optax.inject_hyperparams`` passes) are not checked;
* zero gradients give finite updates and states, and zero updates where the
  rule maps 0 to 0 (a weight decay leaves λp);
* a jitted update is the eager one;
* the update keeps the gradient's dtype (bf16 in, bf16 out).

Rules particular to one transform (and their reference checks) are in the
transform's own test module.
"""

import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt
from tests.support import helpers

NAN = float("nan")


class Kind(NamedTuple):
  """A kind of range: values outside it, values inside, the refusal."""

  bad: tuple
  good: tuple
  message: str  # formatted with name= and value=


DECAY = Kind((-0.5, -0.1, 1.0, 1.5, 2.0, NAN), (0.0, 0.999),
             "{name} must be in [0, 1), got {value!r}")
UNIT = Kind((-0.1, 1.5, NAN), (0.0, 1.0), "{name} must be in [0, 1], got {value!r}")
NON_NEGATIVE = Kind((-1e-3, -0.1, -1.0, NAN, float("inf")), (0.0, 3.0),
                    "{name} must be in [0, inf), got {value!r}")
# A bound that may be absent (clip_singular_values' max_value): inf allowed.
UNBOUNDED = Kind((-1e-3, -0.1, -1.0, NAN), (0.0, 3.0, float("inf")),
                 "{name} must be in [0, inf], got {value!r}")
# Numbers that may be schedules (learning rates, weight decays): finite too.
FINITE_NON_NEGATIVE = Kind((-1e-3, -1.0, NAN, float("inf")), (0.0, 3.0),
                           "{name} must be in [0, inf), got {value!r}")
POSITIVE = Kind((0.0, -1.0, NAN), (1e-3, 2.0), "{name} must be in (0, inf), got {value!r}")
COUNT = Kind((0, -1, 2.5, True), (1, 3), "{name} must be an integer >= 1, got {value!r}")
PROBABILITY = Kind((0.0, -0.1, 1.5, NAN), (0.5, 1.0), "{name} must be in (0, 1], got {value!r}")
AT_LEAST_ONE = Kind((0, -1, NAN), (1, 4), "{name} must be in [1, inf), got {value!r}")
# RAdam's threshold: r_t is real only for ρ_t > 4; inf never rectifies.
AT_LEAST_FOUR = Kind((3.9, 0.0, -1.0, NAN), (4.0, 5.0, float("inf")),
                     "{name} must be in [4, inf], got {value!r}")
# clip_singular_values' lower bound stays below its default upper bound 1.
BELOW_ONE = NON_NEGATIVE._replace(good=(0.0, 0.5))
INDEX = Kind((-1, 2.5, "2"), (0, 2), "{name} must be an integer >= 0, got {value!r}")
# Numbers or schedules (learning rates, weight decays): these are refused too.
NOT_A_SCHEDULE = ("0.1", None, [0.1])
BAD_FORMATS = ("int4", "float64x", jnp.int32, 3)


def _zeros(config, params):
  return jax.tree.map(jnp.zeros_like, params)


def _decay(config, params):
  return jax.tree.map(lambda p: config["weight_decay"] * p, params)


class Entry(NamedTuple):
  """One transform factory."""

  build: Callable[..., optax.GradientTransformation]  # required arguments filled in
  ranges: dict  # numeric argument -> Kind
  choices: dict = {}  # argument -> ((bad value, message prefix), ...)
  configs: dict = {"default": {}}  # name -> kwargs, for the behaviour checks
  # The update of zero gradients, from (config, params).
  zero_update: Callable = _zeros
  # A GradientTransformation argument (graft's, on_matrix_views'): refused
  # when it is not one.
  transform_args: tuple = ()


_DEFAULT = object()  # a wrapped transform the test does not pass (the table picks one)


TABLE = {
    gt.clip_singular_values: Entry(
        gt.clip_singular_values, dict(min_value=BELOW_ONE, max_value=UNBOUNDED)),
    gt.coupled_weight_decay: Entry(
        lambda weight_decay=0.1, **kw: gt.coupled_weight_decay(weight_decay, **kw),
        dict(weight_decay=FINITE_NON_NEGATIVE),
        configs={"no_decay": dict(weight_decay=0.0), "decay": dict(weight_decay=0.1)},
        zero_update=_decay),
    gt.decoupled_weight_decay: Entry(
        lambda weight_decay=0.1, **kw: gt.decoupled_weight_decay(weight_decay, **kw),
        dict(weight_decay=FINITE_NON_NEGATIVE),
        configs={"no_decay": dict(weight_decay=0.0), "decay": dict(weight_decay=0.1),
                 "cautious": dict(weight_decay=0.1, cautious_weight_decay=True)},
        zero_update=_decay),
    gt.cautious: Entry(
        lambda inner=_DEFAULT, **kw: gt.cautious(
            gt.scale_by_adam() if inner is _DEFAULT else inner, **kw),
        {}, transform_args=("inner",)),
    gt.ema: Entry(
        gt.ema, dict(decay=DECAY),
        configs={"default": {}, "debias_nesterov": dict(nesterov=True, debias=True)}),
    gt.graft: Entry(
        lambda magnitude=_DEFAULT, direction=_DEFAULT, **kw: gt.graft(
            gt.scale_by_adam() if magnitude is _DEFAULT else magnitude,
            gt.scale_by_sign() if direction is _DEFAULT else direction, **kw),
        dict(block_size=COUNT, max_precondition_dim=COUNT),
        configs={"per_leaf": {}, "blocks": dict(block_size=4)},
        transform_args=("magnitude", "direction")),
    # K-FAC on PARAMS (no leaf named "kernel"): the diagonal rule, no records;
    # its dense blocks need records and are tested in test_kfac.py.
    gt.kfac_precondition: Entry(
        gt.kfac_precondition,
        dict(damping=POSITIVE, precondition_b2=DECAY, precondition_every=COUNT,
             norm_constraint=POSITIVE),
        choices=dict(root_method=(("svd", "root_method must be one of"),)),
        configs={"default": {}, "every_2_constrained": dict(
            precondition_every=2, norm_constraint=1.0)}),
    # Its behaviour needs update(..., grad_fn=): tests/transforms/test_mars.py.
    gt.gradients_at_previous_point: Entry(
        lambda inner=_DEFAULT: gt.gradients_at_previous_point(
            gt.scale_by_mars(exact=True) if inner is _DEFAULT else inner),
        {}, configs={}, transform_args=("inner",)),
    gt.hyperball_step: Entry(
        lambda learning_rate=0.1, **kw: gt.hyperball_step(learning_rate, **kw),
        dict(learning_rate=FINITE_NON_NEGATIVE),
        configs={"default": {}, "schedule": dict(learning_rate=lambda c: 0.1 / (1 + c))}),
    gt.in_factored_geometry: Entry(
        lambda inner=_DEFAULT, **kw: gt.in_factored_geometry(
            gt.orthogonalize_newton_schulz() if inner is _DEFAULT else inner, **kw),
        dict(b2=DECAY, eps=NON_NEGATIVE), transform_args=("inner",)),
    gt.kronecker_precondition: Entry(
        gt.kronecker_precondition,
        dict(precondition_b2=UNIT, damping=NON_NEGATIVE, precondition_every=COUNT,
             block_size=COUNT, max_precondition_dim=COUNT, relative_damping=NON_NEGATIVE),
        choices=dict(root_method=(("svd", "root_method must be one of"),)),
        configs={"blocks": dict(block_size=4)}),
    gt.momentum: Entry(
        gt.momentum, dict(momentum=DECAY, dampening=DECAY),
        configs={"default": {}, "nesterov": dict(nesterov=True),
                 "no_momentum": dict(momentum=0.0)}),
    gt.normalize_by_second_moment: Entry(
        gt.normalize_by_second_moment, dict(b2=DECAY, eps=NON_NEGATIVE),
        choices=dict(granularity=(("row", "granularity must be one of"),),
                     renormalize=(("spectral", "renormalize must be one of"),)),
        configs={"default": {}, "normuon": dict(granularity="fan_out", renormalize="input",
                                                debias=False),
                 "adamuon": dict(renormalize="orthogonal"),
                 "bf16_nu": dict(nu_dtype=jnp.bfloat16)}),
    gt.on_matrix_views: Entry(
        lambda inner=_DEFAULT, **kw: gt.on_matrix_views(
            gt.scale_by_sign() if inner is _DEFAULT else inner, **kw),
        {}, transform_args=("inner",)),
    gt.orthogonalize_low_rank: Entry(
        lambda rank=2, **kw: gt.orthogonalize_low_rank(rank, **kw),
        dict(momentum=DECAY, power_iters=COUNT, eps=NON_NEGATIVE, seed=INDEX),
        choices=dict(orthonormalize=(("svd", "orthonormalize must be one of"),)),
        configs={"default": {}, "momentum_cholesky_qr": dict(
            momentum=0.95, orthonormalize="cholesky_qr"),
                 "no_feedback": dict(error_feedback=False, rank=0.5),
                 "batch_same_shape": dict(batch_same_shape=True, momentum=0.9)}),
    gt.orthogonalize_newton_schulz: Entry(
        gt.orthogonalize_newton_schulz, dict(ns_steps=COUNT, eps=NON_NEGATIVE),
        choices=dict(
            coefficients=(("nope", "coefficients must be one of"),
                          ([(1.0, 2.0)], "coefficients must be a name or a non-empty")),
            method=(("fast", "method must be 'standard' or 'gram'"),),
            preconditioning=(("nuclear", "preconditioning must be one of"),))),
    gt.scale_by_adadelta: Entry(
        gt.scale_by_adadelta, dict(decay=DECAY, eps=NON_NEGATIVE),
        configs={"default": {}, "bf16_state": dict(nu_dtype=jnp.bfloat16)}),
    gt.scale_by_adagrad: Entry(
        gt.scale_by_adagrad, dict(initial_accumulator_value=NON_NEGATIVE, eps=NON_NEGATIVE)),
    gt.scale_by_adam: Entry(
        gt.scale_by_adam, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, eps_root=NON_NEGATIVE),
        configs={"default": {}, "amsgrad_nesterov": dict(amsgrad=True, nesterov=True),
                 "bf16_moments": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)}),
    gt.scale_by_ademamix: Entry(
        gt.scale_by_ademamix,
        dict(b1=DECAY, b2=DECAY, b3=DECAY, alpha=FINITE_NON_NEGATIVE, eps=NON_NEGATIVE,
             eps_root=NON_NEGATIVE),
        configs={"default": {}, "schedules_int8": dict(
            alpha=optax.linear_schedule(0.0, 5.0, 4), b3=lambda count: 0.9 + 0.0 * count,
            mu_dtype="int8", nu_dtype=jnp.bfloat16)}),
    gt.scale_by_mars: Entry(
        gt.scale_by_mars, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, gamma=NON_NEGATIVE),
        configs={"default": {}, "strong_bf16": dict(gamma=0.5, mu_dtype=jnp.bfloat16)}),
    gt.scale_by_adam_mini: Entry(
        gt.scale_by_adam_mini,
        dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, num_heads=COUNT)),
    gt.scale_by_belief: Entry(
        gt.scale_by_belief, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE),
        configs={"default": {}, "nesterov": dict(nesterov=True)}),
    gt.scale_by_factored_rms: Entry(
        gt.scale_by_factored_rms,
        dict(decay_rate=UNIT, min_dim_size_to_factor=COUNT, eps=NON_NEGATIVE,
             decay_offset=INDEX),
        configs={"factored": dict(min_dim_size_to_factor=2)}),
    gt.scale_by_learning_rate: Entry(
        lambda learning_rate=0.1, **kw: gt.scale_by_learning_rate(learning_rate, **kw),
        dict(learning_rate=FINITE_NON_NEGATIVE),
        configs={"schedule": dict(learning_rate=lambda c: 0.1 / (1 + c))}),
    gt.scale_by_lion: Entry(
        gt.scale_by_lion, dict(b1=DECAY, b2=DECAY, smooth_beta=POSITIVE),
        choices=dict(mode=(("soft", "mode must be one of"),)),
        configs={"default": {}, "smooth": dict(mode="smooth", smooth_beta=0.5),
                 "refined": dict(mode="refined")}),
    gt.proximal_weight_decay: Entry(
        lambda learning_rate=0.1, weight_decay=0.1, **kw: gt.proximal_weight_decay(
            learning_rate=learning_rate, weight_decay=weight_decay, **kw),
        dict(learning_rate=FINITE_NON_NEGATIVE, weight_decay=FINITE_NON_NEGATIVE),
        configs={"decay": {}, "cautious_schedule": dict(
            learning_rate=lambda c: 0.1 + 0.0 * c, cautious_weight_decay=True)},
        zero_update=lambda config, params: jax.tree.map(
            lambda p: -0.1 * 0.1 * p / (1 + 0.1 * 0.1), params)),
    gt.scale_by_adan: Entry(
        gt.scale_by_adan,
        dict(b1=DECAY, b2=DECAY, b3=DECAY, eps=NON_NEGATIVE, eps_root=NON_NEGATIVE),
        configs={"default": {}, "int8_bf16": dict(mu_dtype="int8", nu_dtype=jnp.bfloat16)}),
    gt.scale_by_sm3: Entry(
        gt.scale_by_sm3, dict(b1=DECAY, eps_root=NON_NEGATIVE),
        configs={"default": {}, "no_momentum": dict(b1=0.0),
                 "bf16_momentum": dict(mu_dtype=jnp.bfloat16)}),
    gt.scale_by_acprop: Entry(
        gt.scale_by_acprop, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE),
        configs={"default": {}, "amsgrad_int8": dict(
            amsgrad=True, mu_dtype="int8", nu_dtype="int8")}),
    gt.scale_by_adamax: Entry(
        gt.scale_by_adamax, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE),
        configs={"default": {}, "int8": dict(mu_dtype="int8", nu_dtype="int8")}),
    gt.scale_by_radam: Entry(
        gt.scale_by_radam, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, threshold=AT_LEAST_FOUR),
        configs={"default": {},
                 "bf16_moments": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
                 "nesterov_threshold_8": dict(nesterov=True, threshold=8.0)}),
    gt.scale_by_yogi: Entry(
        gt.scale_by_yogi, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, eps_root=NON_NEGATIVE,
                               initial_accumulator_value=NON_NEGATIVE)),
    gt.scale_by_adopt: Entry(
        gt.scale_by_adopt, dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE),
        configs={"default": {}, "int8": dict(mu_dtype="int8", nu_dtype="int8"),
                 "nesterov_unclipped": dict(nesterov=True, use_clipping=False),
                 "clip_value_fn": dict(clip_value_fn=lambda count: 2.0 + count)}),
    gt.scale_by_matrix_shape: Entry(
        gt.scale_by_matrix_shape, {},
        choices=dict(scale=(("big", "scale must be one of ('jordan', 'moonlight') or None"),))),
    gt.scale_by_param_rms: Entry(
        gt.scale_by_param_rms, dict(min_ndim=INDEX, min_scale=NON_NEGATIVE),
        configs={"default": {}, "adafactor": dict(min_ndim=0, min_scale=1e-3)}),
    gt.clip_by_block_rms: Entry(
        lambda clipping_threshold=1.0, **kw: gt.clip_by_block_rms(clipping_threshold, **kw),
        dict(clipping_threshold=POSITIVE)),
    gt.scale_by_psgd_kron: Entry(
        gt.scale_by_psgd_kron,
        dict(b1=DECAY, precond_update_probability=PROBABILITY, max_size_triangular=COUNT,
             min_ndim_triangular=INDEX, precond_lr=NON_NEGATIVE,
             precond_init_scale=POSITIVE, seed=INDEX),
        choices=dict(memory_save_mode=(("two_diag", "memory_save_mode must be one of"),)),
        configs={"default": {}, "one_diag_bf16": dict(
            memory_save_mode="one_diag", precond_dtype=jnp.bfloat16,
            precond_update_probability=0.5)}),
    gt.scale_by_novograd: Entry(
        gt.scale_by_novograd, dict(b2=DECAY, eps=NON_NEGATIVE, eps_root=NON_NEGATIVE)),
    gt.scale_by_rms: Entry(
        gt.scale_by_rms,
        dict(decay=DECAY, eps=NON_NEGATIVE, eps_root=NON_NEGATIVE, initial_scale=NON_NEGATIVE),
        configs={"default": {}, "centered": dict(centered=True),
                 # Debiased and centered, the first variance is 0 (v̂₁ = ḡ₁²) up
                 # to round-off, which √ magnifies: ε_root sets the first step.
                 "centered_debiased": dict(centered=True, debias=True, eps_root=1e-2)}),
    gt.scale_by_sign: Entry(
        gt.scale_by_sign, dict(tau=NON_NEGATIVE),
        configs={"sign": {}, "soft_sign": dict(tau=0.1)}),
    gt.scale_by_soap: Entry(
        gt.scale_by_soap,
        dict(b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, precondition_b2=DECAY,
             precondition_every=COUNT, max_precondition_dim=COUNT),
        choices=dict(refresh=(("power", "refresh must be one of"),)),
        configs={"default": dict(precondition_every=2)}),
    gt.scale_by_tiger: Entry(gt.scale_by_tiger, dict(beta=DECAY)),
    gt.scale_by_trust_ratio: Entry(
        gt.scale_by_trust_ratio,
        dict(min_norm=NON_NEGATIVE, trust_coefficient=POSITIVE, eps=NON_NEGATIVE,
             weight_decay=FINITE_NON_NEGATIVE),
        configs={"default": {}, "min_norm": dict(min_norm=1e-3)}),
}

# Known gaps in the source: each pair here fails the contract today (strict
# xfail, so that fixing one makes its test pass and asks for its removal).
KNOWN_GAPS = {}
# The same for the check that tracers pass (what inject_hyperparams does under jit).
TRACER_GAPS = {}

def _is_transform(name):
  f = getattr(gt, name)
  return inspect.isfunction(f) and inspect.signature(f).return_annotation in (
      optax.GradientTransformation, optax.GradientTransformationExtraArgs)


def _param(factory, name, *values, gaps=KNOWN_GAPS, raises=pytest.fail.Exception):
  """A test case; one of a known gap is a strict xfail."""
  marks = ()
  if (factory, name) in gaps:
    marks = pytest.mark.xfail(strict=True, raises=raises, reason=gaps[factory, name])
  return pytest.param(factory, name, *values, id=f"{factory.__name__}-{name}", marks=marks)


def _numeric(select=lambda kind: True, **gaps):
  return [_param(f, name, kind, **gaps) for f, entry in TABLE.items()
          for name, kind in entry.ranges.items() if select(kind)]


def _build(factory, **kwargs):
  return TABLE[factory].build(**kwargs)


def test_table_covers_every_transform_and_argument():
  assert set(TABLE) == {getattr(gt, n) for n in gt.__all__ if _is_transform(n)}
  for factory, entry in TABLE.items():
    parameters = inspect.signature(factory).parameters.values()
    numeric = {p.name for p in parameters
               if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}
    choices = {p.name for p in parameters if isinstance(p.default, str)}
    transforms = {p.name for p in parameters
                  if p.annotation is optax.GradientTransformation}
    assert numeric <= set(entry.ranges), (factory.__name__, numeric - set(entry.ranges))
    assert choices <= set(entry.choices), (factory.__name__, choices - set(entry.choices))
    assert transforms == set(entry.transform_args), factory.__name__


# --- bad arguments ----------------------------------------------------------


def _refusal(factory, name, value):
  with pytest.raises(ValueError) as error:
    _build(factory, **{name: value})
  return str(error.value)


@pytest.mark.parametrize("factory, name, kind", _numeric())
def test_out_of_range_value_is_refused_naming_the_argument_and_range(factory, name, kind):
  for value in kind.bad:
    assert _refusal(factory, name, value) == kind.message.format(name=name, value=value)


@pytest.mark.parametrize("factory, name, kind", _numeric(gaps={}))
def test_in_range_values_are_accepted(factory, name, kind):
  for value in kind.good + (np.asarray(kind.good[-1])[()],):
    assert isinstance(_build(factory, **{name: value}), optax.GradientTransformation)


@pytest.mark.parametrize(
    "factory, name, kind", _numeric(
        lambda k: k not in (COUNT, INDEX), gaps=TRACER_GAPS,
        raises=jax.errors.ConcretizationTypeError))
def test_arrays_and_tracers_are_not_checked(factory, name, kind):
  """What inject_hyperparams passes: arrays at init, tracers under jit."""
  def build(value):
    _build(factory, **{name: value})
    return value

  for value in kind.bad[:1] + kind.good:
    build(jnp.asarray(value, jnp.float32))
    jax.eval_shape(build, jnp.asarray(value, jnp.float32))


@pytest.mark.parametrize("factory, name, kind", _numeric())
def test_a_string_is_refused_where_a_number_belongs(factory, name, kind):
  assert _refusal(factory, name, "0.5").startswith(f"{name} must be")


_SCHEDULES = [_param(f, name) for f, entry in TABLE.items() for name in entry.ranges
              if name in ("learning_rate", "weight_decay")]


@pytest.mark.parametrize("factory, name", _SCHEDULES)
def test_schedule_arguments_refuse_what_is_neither_number_nor_schedule(factory, name):
  for value in NOT_A_SCHEDULE:
    message = _refusal(factory, name, value)
    assert message.startswith(f"{name} must be a non-negative number or a schedule"), message
  assert isinstance(_build(factory, **{name: optax.linear_schedule(0.1, 0.0, 10)}),
                    optax.GradientTransformation)


_CHOICES = [_param(f, name, bad, prefix) for f, entry in TABLE.items()
            for name, values in entry.choices.items() for bad, prefix in values]


@pytest.mark.parametrize("factory, name, bad, prefix", _CHOICES)
def test_unknown_choice_is_refused_naming_the_argument(factory, name, bad, prefix):
  message = _refusal(factory, name, bad)
  assert message.startswith(prefix) and repr(bad) in message, message


_FORMATS = [_param(f, name) for f in TABLE for name in ("mu_dtype", "nu_dtype")
            if name in inspect.signature(f).parameters]


@pytest.mark.parametrize("factory, name", _FORMATS)
def test_unknown_state_format_is_refused(factory, name):
  for value in BAD_FORMATS:
    assert _refusal(factory, name, value).startswith(f"{name} must be")


_TRANSFORM_ARGS = [_param(f, name) for f, entry in TABLE.items() for name in entry.transform_args]


@pytest.mark.parametrize("factory, name", _TRANSFORM_ARGS)
def test_a_non_transformation_is_refused(factory, name):
  for value in (optax.adam, None):
    try:
      message = _refusal(factory, name, value)
    except Exception as error:  # noqa: BLE001 (anything but ValueError fails)
      pytest.fail(f"{type(error).__name__}: {error}")
    assert message.startswith(f"{name} must be an optax.GradientTransformation"), message


# --- behaviour --------------------------------------------------------------

_RNG = np.random.default_rng(0)
PARAMS = {"w": jnp.asarray(_RNG.normal(size=(4, 6)), jnp.float32),
          "b": jnp.asarray(_RNG.normal(size=(6,)), jnp.float32)}
GRADS = [jax.tree.map(lambda p: jnp.asarray(_RNG.normal(size=p.shape), jnp.float32), PARAMS)
         for _ in range(3)]
_CONFIGS = [pytest.param(f, config, id=f"{f.__name__}-{config}")
            for f, entry in TABLE.items() for config in entry.configs]


def _make(factory, config):
  return _build(factory, **TABLE[factory].configs[config])


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(jnp.asarray(x, jnp.float32))))
             for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact))


def _steps(tx, update, grads_seq, params):
  state, out = tx.init(params), []
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    out.append(updates)
  return out, state


@pytest.mark.parametrize("factory, config", _CONFIGS)
def test_zero_gradients_give_finite_updates(factory, config):
  """Three jitted steps of zero gradients, from a fresh state."""
  tx = _make(factory, config)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates_seq, state = _steps(tx, jax.jit(tx.update), [zeros] * 3, PARAMS)
  assert _finite(updates_seq) and _finite(state)
  expected = TABLE[factory].zero_update
  for updates in updates_seq:
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6, atol=0),
                 updates, expected(TABLE[factory].configs[config], PARAMS))


@pytest.mark.parametrize("factory, config", _CONFIGS)
def test_jit_equals_eager(factory, config):
  tx = _make(factory, config)
  jitted, _ = _steps(tx, jax.jit(tx.update), GRADS, PARAMS)
  eager, _ = _steps(tx, tx.update, GRADS, PARAMS)
  for a, b in zip(jitted, eager):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
    assert {u.dtype for u in jax.tree.leaves(a)} == {jnp.dtype(jnp.float32)}
  assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(jitted))


@pytest.mark.parametrize("factory, config", _CONFIGS)
def test_bfloat16_gradients_give_bfloat16_updates(factory, config):
  tx = _make(factory, config)
  as_bf16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)
  params = as_bf16(PARAMS)
  updates_seq, state = _steps(tx, jax.jit(tx.update), [as_bf16(g) for g in GRADS[:2]], params)
  for updates in updates_seq:
    assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
  assert _finite(updates_seq) and _finite(state)
  assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates_seq))


@pytest.mark.parametrize("name", sorted(helpers.MATRIX_TRANSFORMS))
def test_matrix_work_is_traced_once_per_shape(name):
  # The same-shape leaves stacked, batched or mapped: the matrix products do
  # not multiply with the number of matrices that share a shape.
  factory = helpers.MATRIX_TRANSFORMS[name]
  two, eight = (helpers.matrix_products(factory(), helpers.two_shape_tree(n)) for n in (2, 8))
  assert two > 0 and eight == two
