"""Argument validation of every optimizer factory in gradtx.optimizers.

The contract (STYLE.md, "Errors"): a bad hyper-parameter raises ``ValueError``
when the factory is called (not at ``init`` or the first ``update``), through
the shared helper, with a message that names the argument and the allowed
range (``b1 must be in [0, 1), got 1.5``); traced values, such as those
``optax.inject_hyperparams`` feeds back in, are not checked.

``RANGES`` lists, per factory, every numeric argument and its kind of range,
``CHOICES`` every string-valued one with a value it refuses;
``test_ranges_cover_every_argument`` keeps both complete. The transforms'
arguments are checked by tests/transforms/test_contract.py, the wrappers'
(``sam``, ``lookahead``) in their own test modules.
"""

import inspect
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import contrib
from gradtx import optimizers as go
from gradtx import transforms as gt
from gradtx._internal import validate
from tests.support import cases
from tests.support.cases import is_optimizer

LR = 0.1
NAN = float("nan")


class Kind(NamedTuple):
  """A kind of range: values outside it, one inside, message fragments."""

  bad: tuple
  good: tuple
  fragments: tuple  # one of these must appear in the message


DECAY = Kind((-0.1, 1.0, NAN), (0.0, 0.999), ("[0, 1)",))
UNIT = Kind((-0.1, 1.5, NAN), (0.0, 1.0), ("[0, 1]",))
NON_NEGATIVE = Kind((-1e-3, NAN), (0.0, 3.0), ("[0, inf]", "[0, inf)", "non-negative", ">= 0"))
POSITIVE = Kind((0.0, -1.0, NAN), (1e-3,), ("(0, inf)", "> 0"))
COUNT = Kind((0, -1), (1,), (">= 1", "[1, inf)"))
INDEX = Kind((-1,), (0, 5), (">= 0", "[0, inf)", "[0, inf]"))
ABOVE_ONE = Kind((1.0, 0.5, NAN), (1.02, float("inf")), ("(1, inf]",))
AT_LEAST_FOUR = Kind((3.9, NAN), (4.0, float("inf")), ("[4, inf]",))
PROBABILITY = Kind((0.0, -0.1, 1.5, NAN), (0.5, 1.0), ("(0, 1]",))

RANGES = {
    go.sgd: dict(
        learning_rate=NON_NEGATIVE, momentum=DECAY, weight_decay=NON_NEGATIVE,
        dampening=DECAY,
    ),
    go.adagrad: dict(
        learning_rate=NON_NEGATIVE, initial_accumulator_value=NON_NEGATIVE,
        eps=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.rmsprop: dict(
        learning_rate=NON_NEGATIVE, decay=DECAY, eps=NON_NEGATIVE,
        eps_root=NON_NEGATIVE, momentum=DECAY, weight_decay=NON_NEGATIVE,
        initial_scale=NON_NEGATIVE,
    ),
    go.adam: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE, eps_root=NON_NEGATIVE,
    ),
    go.adamw: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE, eps_root=NON_NEGATIVE,
    ),
    go.adadelta: dict(
        learning_rate=NON_NEGATIVE, decay=DECAY, eps=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.novograd: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        eps_root=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.fromage: dict(learning_rate=NON_NEGATIVE, min_norm=NON_NEGATIVE),
    go.prodigy: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, b3=DECAY, eps=POSITIVE,
        estim_lr0=POSITIVE, estim_lr_coef=POSITIVE, growth_rate=ABOVE_ONE,
        weight_decay=NON_NEGATIVE,
    ),
    go.dadapt_adamw: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=POSITIVE,
        estim_lr0=POSITIVE, growth_rate=ABOVE_ONE, weight_decay=NON_NEGATIVE,
    ),
    go.dog: dict(
        learning_rate=NON_NEGATIVE, reps_rel=POSITIVE, eps=NON_NEGATIVE, init_eta=POSITIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.dowg: dict(
        learning_rate=NON_NEGATIVE, eps=POSITIVE, init_estim_sq_dist=POSITIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.cocob: dict(
        learning_rate=NON_NEGATIVE, alpha=POSITIVE, eps=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.madgrad: dict(
        learning_rate=NON_NEGATIVE, momentum=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.adabelief: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.acprop: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.adamax: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.adamaxw: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.radam: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE, threshold=AT_LEAST_FOUR,
    ),
    go.radamw: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE, threshold=AT_LEAST_FOUR,
    ),
    go.adopt: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.adoptw: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.yogi: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, eps_root=NON_NEGATIVE,
        initial_accumulator_value=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.adan: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, b3=DECAY, eps=NON_NEGATIVE,
        eps_root=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.sm3: dict(learning_rate=NON_NEGATIVE, b1=DECAY, eps_root=NON_NEGATIVE),
    go.schedule_free_sgd: dict(
        learning_rate=NON_NEGATIVE, b1=PROBABILITY, warmup_steps=INDEX,
        weight_decay=NON_NEGATIVE, weight_lr_power=NON_NEGATIVE, r=NON_NEGATIVE,
    ),
    go.schedule_free_adamw: dict(
        learning_rate=NON_NEGATIVE, b1=PROBABILITY, b2=DECAY, eps=NON_NEGATIVE,
        warmup_steps=INDEX, weight_decay=NON_NEGATIVE, weight_lr_power=NON_NEGATIVE,
        r=NON_NEGATIVE,
    ),
    go.ademamix: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, b3=DECAY, alpha=NON_NEGATIVE,
        eps=NON_NEGATIVE, eps_root=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.signsgd: dict(learning_rate=NON_NEGATIVE, momentum=DECAY,
                     weight_decay=NON_NEGATIVE),
    go.lion: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, weight_decay=NON_NEGATIVE,
        smooth_beta=POSITIVE,
    ),
    go.tiger: dict(learning_rate=NON_NEGATIVE, beta=DECAY, weight_decay=NON_NEGATIVE),
    go.muon: dict(
        learning_rate=NON_NEGATIVE, beta=DECAY, ns_steps=COUNT,
        weight_decay=NON_NEGATIVE, eps=NON_NEGATIVE,
        adam_learning_rate=NON_NEGATIVE, adam_b1=DECAY, adam_b2=DECAY,
        adam_eps=NON_NEGATIVE, adam_weight_decay=NON_NEGATIVE,
        embedding_learning_rate=NON_NEGATIVE,
    ),
    go.shampoo: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        precondition_b2=UNIT, damping=NON_NEGATIVE,
        precondition_every=COUNT, block_size=COUNT, weight_decay=NON_NEGATIVE,
        max_precondition_dim=COUNT, relative_damping=NON_NEGATIVE,
    ),
    go.soap: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, precondition_b2=DECAY,
        eps=NON_NEGATIVE, precondition_every=COUNT, max_precondition_dim=COUNT,
        weight_decay=NON_NEGATIVE,
    ),
    go.adafactor: dict(
        learning_rate=NON_NEGATIVE, min_dim_size_to_factor=COUNT,
        decay_rate=UNIT, decay_offset=INDEX, clipping_threshold=POSITIVE,
        b1=DECAY, weight_decay=NON_NEGATIVE, eps=NON_NEGATIVE,
    ),
    go.adam_mini: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE,
    ),
    go.adamw_8bit: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        eps_root=NON_NEGATIVE, weight_decay=NON_NEGATIVE, block_size=COUNT,
    ),
    go.lars: dict(
        learning_rate=NON_NEGATIVE, momentum=DECAY, weight_decay=NON_NEGATIVE,
        trust_coefficient=POSITIVE, eps=NON_NEGATIVE,
    ),
    go.lamb: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        eps_root=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
    ),
    go.kfac: dict(
        learning_rate=NON_NEGATIVE, damping=POSITIVE, precondition_b2=DECAY,
        precondition_every=COUNT, norm_constraint=POSITIVE, momentum=DECAY,
        weight_decay=NON_NEGATIVE,
    ),
    go.psgd_kron: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, weight_decay=NON_NEGATIVE,
        precond_update_probability=PROBABILITY, max_size_triangular=COUNT,
        min_ndim_triangular=INDEX, precond_lr=NON_NEGATIVE, precond_init_scale=POSITIVE,
        seed=INDEX,
    ),
    go.dion: dict(
        learning_rate=NON_NEGATIVE, rank=COUNT, momentum=DECAY,
        power_iters=COUNT, weight_decay=NON_NEGATIVE, eps=NON_NEGATIVE,
        seed=INDEX, adam_learning_rate=NON_NEGATIVE, adam_b1=DECAY,
        adam_b2=DECAY, adam_eps=NON_NEGATIVE, adam_weight_decay=NON_NEGATIVE,
        embedding_learning_rate=NON_NEGATIVE,
    ),
    **{f: dict(
        learning_rate=NON_NEGATIVE, beta=DECAY, b2=DECAY, eps=NON_NEGATIVE, ns_steps=COUNT,
        weight_decay=NON_NEGATIVE, adam_learning_rate=NON_NEGATIVE, adam_b1=DECAY,
        adam_b2=DECAY, adam_eps=NON_NEGATIVE, adam_weight_decay=NON_NEGATIVE,
        embedding_learning_rate=NON_NEGATIVE,
    ) for f in (go.normuon, go.adamuon, go.vmuon)},
    go.mars_adamw: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE, gamma=NON_NEGATIVE,
        weight_decay=NON_NEGATIVE, adam_learning_rate=NON_NEGATIVE, adam_b1=DECAY,
        adam_b2=DECAY, adam_weight_decay=NON_NEGATIVE,
    ),
    go.adamh: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, eps=NON_NEGATIVE,
        adam_learning_rate=NON_NEGATIVE, adam_b1=DECAY, adam_b2=DECAY,
        adam_eps=NON_NEGATIVE, adam_weight_decay=NON_NEGATIVE,
    ),
    go.muonh: dict(
        learning_rate=NON_NEGATIVE, momentum=DECAY, ns_steps=COUNT, eps=NON_NEGATIVE,
        adam_learning_rate=NON_NEGATIVE, adam_b1=DECAY, adam_b2=DECAY,
        adam_eps=NON_NEGATIVE, adam_weight_decay=NON_NEGATIVE,
    ),
    contrib.adamuon_lm: dict(
        learning_rate=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
        adam_learning_rate=NON_NEGATIVE, adam_b2=DECAY, adam_weight_decay=NON_NEGATIVE,
        embedding_learning_rate=NON_NEGATIVE,
    ),
    go.soap_muon: dict(
        learning_rate=NON_NEGATIVE, b1=DECAY, b2=DECAY, precondition_b2=DECAY,
        eps=NON_NEGATIVE, precondition_every=COUNT, max_precondition_dim=COUNT,
        ns_steps=COUNT, weight_decay=NON_NEGATIVE, adam_learning_rate=NON_NEGATIVE,
        adam_b1=DECAY, adam_b2=DECAY, adam_eps=NON_NEGATIVE, adam_weight_decay=NON_NEGATIVE,
        embedding_learning_rate=NON_NEGATIVE,
    ),
}


# String-valued arguments: (a refused value, the start of the refusal).
CHOICES = {
    go.shampoo: dict(grafting=("adagrad", "grafting must be one of"),
                     root_method=("svd", "root_method must be one of")),
    go.soap: dict(refresh=("power", "refresh must be one of")),
    go.lion: dict(mode=("soft", "mode must be one of")),
    go.kfac: dict(root_method=("svd", "root_method must be one of")),
    go.psgd_kron: dict(memory_save_mode=("two_diag", "memory_save_mode must be one of")),
    go.dion: dict(orthonormalize=("svd", "orthonormalize must be one of"),
                  scale=("big", "scale must be one of")),
    go.muon: dict(coefficients=("nope", "coefficients must be one of"),
                  scale=("big", "scale must be one of"),
                  method=("fast", "method must be 'standard' or 'gram'"),
                  preconditioning=("nuclear", "preconditioning must be one of")),
    **{f: dict(coefficients=("nope", "coefficients must be one of"),
               scale=("big", "scale must be one of"),
               method=("fast", "method must be 'standard' or 'gram'"))
       for f in (go.normuon, go.adamuon, go.soap_muon, go.vmuon)},
    contrib.adamuon_lm: dict(method=("fast", "method must be 'standard' or 'gram'")),
    go.muonh: dict(coefficients=("nope", "coefficients must be one of"),
                   method=("fast", "method must be 'standard' or 'gram'")),
}
# Moments that exist only with a momentum (adafactor keeps none by default,
# and then ignores mu_dtype).
WITH_MOMENTUM = {go.adafactor: dict(b1=0.9)}
BAD_FORMATS = ("int4", "float64x", jnp.int32, 3)


def _call(factory, name, value):
  if name == "learning_rate":
    return factory(value)
  return factory(LR, **{name: value})


def _names(message, name):
  """Whether ``message`` names ``name`` itself (not ``adam_`` + name)."""
  return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) is not None


def _params(select):
  return [
      pytest.param(f, name, kind, id=f"{f.__name__}-{name}")
      for f, args in RANGES.items()
      for name, kind in args.items()
      if select(name, kind)
  ]


def test_ranges_cover_every_argument():
  optimizers = set(filter(is_optimizer, go.__all__)) | set(contrib.__all__)
  assert {f.__name__ for f in RANGES} == optimizers
  for factory, args in RANGES.items():
    numeric = {
        k
        for k, v in inspect.signature(factory).parameters.items()
        if isinstance(v.default, (int, float)) and not isinstance(v.default, bool)
    }
    assert numeric <= set(args), (factory.__name__, numeric - set(args))
    strings = {k for k, v in inspect.signature(factory).parameters.items()
               if isinstance(v.default, str)}
    assert strings <= set(CHOICES.get(factory, {})), (factory.__name__, strings)


@pytest.mark.parametrize("factory,name,kind", _params(lambda n, k: True))
def test_out_of_range_value_is_rejected_at_factory_time(factory, name, kind):
  for value in kind.bad:
    with pytest.raises(ValueError) as error:
      _call(factory, name, value)
    message = str(error.value)
    assert _names(message, name), f"{name}={value!r}: {message}"
    assert any(f in message for f in kind.fragments), f"{name}={value!r}: {message}"


@pytest.mark.parametrize("factory,name,kind", _params(lambda n, k: True))
def test_in_range_values_are_accepted(factory, name, kind):
  for value in kind.good:
    assert isinstance(_call(factory, name, value), optax.GradientTransformation)
  assert isinstance(
      _call(factory, name, np.asarray(kind.good[-1])[()]), optax.GradientTransformation
  )


@pytest.mark.parametrize(
    "factory,name,kind", _params(lambda n, k: k is not COUNT and k is not INDEX)
)
def test_traced_values_are_not_checked(factory, name, kind):
  """What inject_hyperparams passes: arrays at init, tracers under jit."""
  def build(value):
    _call(factory, name, value)
    return value

  for value in kind.bad[:1] + kind.good:
    build(jnp.asarray(value, jnp.float32))
    jax.eval_shape(build, jnp.asarray(value, jnp.float32))


@pytest.mark.parametrize("factory", list(RANGES), ids=lambda f: f.__name__)
def test_non_number_is_rejected_at_factory_time(factory):
  """A string where a number belongs must not wait for the first update.

  (Some are even accepted for good: ``jnp.asarray("0.5", jnp.float32)``
  parses the string, so ``adam(b1="0.5")`` trains.)
  """
  accepted = []
  for name in RANGES[factory]:
    try:
      _call(factory, name, "0.5")
    except ValueError as error:
      assert _names(str(error), name), str(error)
    else:
      accepted.append(name)
  assert not accepted, f"{factory.__name__} accepts a string for {accepted}"


_SCHEDULABLE = [
    pytest.param(f, name, id=f"{f.__name__}-{name}")
    for f in RANGES
    for name in ("learning_rate", "weight_decay", "adam_learning_rate")
    if name in inspect.signature(f).parameters
]


@pytest.mark.parametrize("factory,name", _SCHEDULABLE)
@pytest.mark.parametrize(
    "value", ["0.1", [0.1], {"lr": 0.1}], ids=["str", "list", "dict"]
)
def test_non_callable_non_number_schedule_is_rejected(factory, name, value):
  with pytest.raises(ValueError) as error:
    _call(factory, name, value)
  message = str(error.value)
  assert _names(message, name) and "schedule" in message, message


@pytest.mark.parametrize("factory,name", _SCHEDULABLE)
def test_schedules_are_accepted(factory, name):
  _call(factory, name, optax.linear_schedule(LR, 0.0, 10))
  _call(factory, name, lambda count: LR)


_CHOICE_PARAMS = [
    pytest.param(f, name, bad, prefix, id=f"{f.__name__}-{name}")
    for f, args in CHOICES.items() for name, (bad, prefix) in args.items()
]


@pytest.mark.parametrize("factory,name,bad,prefix", _CHOICE_PARAMS)
def test_unknown_choice_is_rejected_at_factory_time(factory, name, bad, prefix):
  with pytest.raises(ValueError) as error:
    _call(factory, name, bad)
  message = str(error.value)
  assert message.startswith(prefix) and repr(bad) in message, message


_FORMAT_PARAMS = [
    pytest.param(f, name, id=f"{f.__name__}-{name}")
    for f in RANGES for name in ("mu_dtype", "nu_dtype")
    if name in inspect.signature(f).parameters
]


@pytest.mark.parametrize("factory,name", _FORMAT_PARAMS)
def test_unknown_state_format_is_rejected_at_factory_time(factory, name):
  for value in BAD_FORMATS:
    with pytest.raises(ValueError, match=f"^{name} must be"):
      factory(LR, **WITH_MOMENTUM.get(factory, {}), **{name: value})


# Every matrix transform, given a gradient transposed relative to its
# parameter: a ValueError naming the leaf and both shapes (with the params),
# or the block shape the state lacks (stateful transforms without them).
_MATRIX_TRANSFORMS = {
    "orthogonalize_newton_schulz": lambda: gt.orthogonalize_newton_schulz(),
    "clip_singular_values": lambda: gt.clip_singular_values(),
    "kronecker_precondition": lambda: gt.kronecker_precondition(),
    "scale_by_soap": lambda: gt.scale_by_soap(),
    "kfac_precondition": lambda: gt.kfac_precondition(),
    "orthogonalize_low_rank": lambda: gt.orthogonalize_low_rank(rank=2),
    "normalize_by_second_moment": lambda: gt.normalize_by_second_moment(),
    "in_factored_geometry": lambda: gt.in_factored_geometry(gt.orthogonalize_newton_schulz()),
}


@pytest.mark.parametrize("name", list(_MATRIX_TRANSFORMS))
def test_a_transposed_gradient_is_named(name):
  tx = _MATRIX_TRANSFORMS[name]()
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16)}
  grads = {"w": jnp.ones((16, 8)), "b": jnp.ones(16)}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"\['w'\].*\(16, 8\).*\(8, 16\)"):
    tx.update(grads, state, params)


@pytest.mark.parametrize("name", ["kronecker_precondition", "scale_by_soap"])
def test_a_transposed_gradient_without_params_is_named(name):
  tx = _MATRIX_TRANSFORMS[name]()
  state = tx.init({"w": jnp.ones((8, 16))})
  with pytest.raises(ValueError, match=r"\['w'\].*\(16, 8\).*16x8"):
    tx.update({"w": jnp.ones((16, 8))}, state)


# The element-wise optimizers: a gradient transposed relative to its parameter,
# or a tree with one leaf more, is refused by the first transform that keeps a
# per-leaf state (or by the weight decay, which reads the parameters), naming
# the leaf and both shapes, not by a broadcasting TypeError deep inside.
_ELEMENTWISE = {
    "adamw": lambda: go.adamw(LR), "adamw_8bit": lambda: go.adamw_8bit(LR),
    "adabelief": lambda: go.adabelief(LR), "rmsprop": lambda: go.rmsprop(LR),
    "adagrad": lambda: go.adagrad(LR), "lion": lambda: go.lion(LR),
    "sgd": lambda: go.sgd(LR), "sgd_momentum": lambda: go.sgd(LR, momentum=0.9),
    "signum": lambda: go.signsgd(LR, momentum=0.9),
    "adamax": lambda: go.adamax(LR), "radam": lambda: go.radam(LR),
    "yogi": lambda: go.yogi(LR), "adopt": lambda: go.adopt(LR),
    "acprop": lambda: go.acprop(LR),
}


@pytest.mark.parametrize("name", list(_ELEMENTWISE))
def test_an_element_wise_optimizer_names_a_transposed_gradient(name):
  tx = _ELEMENTWISE[name]()
  params = {"w": jnp.ones((64, 96)), "b": jnp.ones(16)}  # w: 8-bit state in adamw_8bit
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"\['w'\].*\(96, 64\).*\(64, 96\)"):
    tx.update({"w": jnp.ones((96, 64)), "b": jnp.ones(16)}, state, params)
  with pytest.raises(ValueError, match="3 leaves"):
    tx.update({**params, "extra": jnp.ones(3)}, state, params)



_BROADCASTING = {  # a (1, 6) gradient broadcast silently (mars, sam) or failed opaquely
    "mars_adamw": lambda: go.mars_adamw(LR), "sam": lambda: go.sam(go.adamw(LR)),
    "adafactor": lambda: go.adafactor(LR), "adam_mini": lambda: go.adam_mini(LR),
}


@pytest.mark.parametrize("name", list(_BROADCASTING))
def test_a_gradient_that_would_broadcast_is_named(name):
  tx = _BROADCASTING[name]()
  params = {"Dense_0": {"kernel": jnp.ones((8, 6)), "bias": jnp.ones(6)}}
  state = tx.init(params)
  grads = {"Dense_0": {"kernel": jnp.ones((1, 6)), "bias": jnp.ones(6)}}
  extra = {"grad_fn": lambda p: p} if name == "sam" else {}
  message = r"\['kernel'\] has shape \(1, 6\) but its \w+ has shape \(8, 6\)"
  with pytest.raises(ValueError, match=message):
    tx.update(grads, state, params, **extra)


_MASKED = [(f, n) for f in RANGES for n in ("mask", "trust_ratio_mask")
           if n in inspect.signature(f).parameters]


@pytest.mark.parametrize("factory,name", _MASKED, ids=lambda x: getattr(x, "__name__", x))
def test_a_mask_that_is_a_string_or_a_number_is_refused(factory, name):
  """optax.masked takes "kernel" or 3 for a prefix selecting every leaf."""
  for bad in ("kernel", 3):
    with pytest.raises(ValueError, match=rf"{name} must be None, a callable"):
      factory(learning_rate=LR, **{name: bad})
  factory(learning_rate=LR, **{name: True})


_PARTITIONED = {  # matrix rule + AdamW in one optax.multi_transform
    "muon": lambda: go.muon(LR), "adamuon": lambda: go.adamuon(LR),
    "normuon": lambda: go.normuon(LR), "dion": lambda: go.dion(LR),
}


@pytest.mark.parametrize("name", list(_PARTITIONED))
def test_a_partitioned_optimizer_names_a_gradient_tree_that_does_not_match(name):
  """optax.multi_transform raised JAX's bare pytree error for a missing leaf."""
  tx = _PARTITIONED[name]()
  params = {"w": jnp.ones((8, 6)), "b": jnp.ones(6)}
  state = tx.init(params)
  with pytest.raises(ValueError, match=rf"{name} \(with AdamW beside it\): the updates have 1"):
    tx.update({"w": jnp.ones((8, 6))}, state, params)
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(6, 8\)"):
    tx.update({"w": jnp.ones((6, 8)), "b": jnp.ones(6)}, state, params)

def test_nesterov_with_dampening_is_rejected_as_torch_does():
  """torch.optim.SGD: "Nesterov momentum requires a momentum and zero dampening"."""
  for make in (lambda d: go.sgd(LR, momentum=0.9, nesterov=True, dampening=d),
               lambda d: gt.momentum(0.9, nesterov=True, dampening=d)):
    with pytest.raises(ValueError, match=r"dampening must be 0 with nesterov"):
      make(0.1)
    make(0.0)
    make(jnp.asarray(0.0))  # injected values are not checked


@pytest.mark.parametrize("value", [True, np.bool_(True), jnp.asarray(True)],
                         ids=["bool", "numpy", "array"])
def test_a_boolean_learning_rate_is_refused(value):
  with pytest.raises(ValueError, match="learning_rate must be a non-negative number"):
    go.adamw(value)


_INFINITE = [(f, n) for f, ranges in RANGES.items() for n in ("learning_rate", "weight_decay")
             if n in ranges]


@pytest.mark.parametrize("factory,name", _INFINITE, ids=lambda x: getattr(x, "__name__", x))
def test_an_infinite_learning_rate_or_decay_is_refused(factory, name):
  """Every update would be non-finite: refused where the value is given."""
  kwargs = {"learning_rate": LR, name: float("inf")}
  with pytest.raises(ValueError, match=rf"{name} must be in \[0, inf\), got inf"):
    factory(**kwargs)

@pytest.mark.parametrize("case", cases.CASES + cases.STRUCTURED, ids=lambda case: case.name)
def test_the_float0_gradient_of_an_integer_leaf_is_named(case):
  """jax.grad(..., allow_int=True) gives an integer leaf a float0 gradient,
  which no arithmetic accepts: a TypeError naming the leaf and what to do,
  not "float0 is not a valid dtype for JAX type promotion" from inside."""
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16), "step": jnp.array(0, jnp.int32)}
  grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"]), allow_int=True)(params)
  tx = case.make()
  with pytest.raises(TypeError, match=r"\['step'\] has dtype float0.*wrt=nnx.Param"):
    tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("case", cases.CASES + cases.STRUCTURED, ids=lambda case: case.name)
def test_an_integer_gradient_is_named(case):
  """An integer array passed as a gradient: the update came back integer, its
  step truncated (optax casts it, but truncates an integer parameter's);
  refused, naming it."""
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16)}
  grads = {"w": jnp.ones((8, 16), jnp.int32), "b": jnp.ones(16)}
  tx = case.make()
  with pytest.raises(TypeError, match=r"\['w'\] has dtype int32.*floating"):
    tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("make, name", [
    (lambda s: go.adamw(LR, b2=s), "b2"),
    (lambda s: go.muon(LR, beta=s), "beta"),
    (lambda s: go.parameter_ema(go.sgd(LR), decay=s), "decay"),
    (lambda s: go.lookahead(go.sgd(LR), slow_step_size=s), "slow_step_size"),
    (lambda s: go.lars(LR, trust_coefficient=s), "trust_coefficient"),
])
def test_a_schedule_where_only_a_number_is_documented_is_refused_at_construction(make, name):
  """It was accepted, then failed at the first update with "float() argument
  must be a string or a real number, not 'function'"."""
  schedule = optax.linear_schedule(0.9, 0.99, 100)
  with pytest.raises(ValueError, match=f"^{name} must be a number, got the callable"):
    make(schedule)


def test_ademamixs_documented_schedules_are_still_accepted():
  go.ademamix(LR, b3=optax.linear_schedule(0.9, 0.9999, 100),
              alpha=optax.linear_schedule(0.0, 5.0, 100))


@pytest.mark.parametrize("make", [
    lambda v: gt.orthogonalize_low_rank(2, power_iters=v),
    lambda v: go.lookahead(go.sgd(0.1), sync_period=v),
    lambda v: go.shampoo(0.1, precondition_every=v),
    lambda v: go.psgd_kron(0.1, seed=v - 2),
], ids=["power_iters", "sync_period", "precondition_every", "seed"])
def test_numpy_integers_are_checked_as_python_ones(make):
  """np.int64 scalars passed unchecked as 'traced': power_iters=np.int64(0)
  gave all-zero updates with no error."""
  for value in (0, np.int64(0)):
    with pytest.raises(ValueError, match="must be an integer >="):
      make(value)
  make(np.int64(3))


@pytest.mark.parametrize("make, name", [
    (lambda v: go.adam(0.1, eps=v), "eps"),
    (lambda v: go.lars(0.1, eps=v), "eps"),
    (lambda v: go.sam(go.sgd(0.1), rho=v), "rho"),
    (lambda v: go.shampoo(0.1, damping=v), "damping"),
    (lambda v: go.adagrad(0.1, initial_accumulator_value=v), "initial_accumulator_value"),
    (lambda v: go.psgd_kron(0.1, precond_lr=v), "precond_lr"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_an_infinite_or_boolean_constant_is_refused(make, name):
  """eps = inf froze Adam at 0 and made LARS's update NaN; True passed as 1."""
  with pytest.raises(ValueError, match=rf"{name} must be in \[0, inf\), got inf"):
    make(float("inf"))
  with pytest.raises(ValueError, match=rf"{name} must be a number, got True"):
    make(True)


def test_clip_singular_values_keeps_an_infinite_upper_bound():
  gt.clip_singular_values(0.0, float("inf"))  # no upper clip


@pytest.mark.parametrize("make", [
    lambda **k: go.muon(0.02, **k), lambda **k: go.muonh(0.02, **k),
    lambda **k: gt.orthogonalize_newton_schulz(**k)])
def test_newton_schulz_coefficients_and_compute_dtype_are_checked(make):
  """A NaN coefficient or a boolean compute dtype gave NaN updates, an int32 one
  zero updates, None or 3.0 a TypeError naming nothing."""
  for bad in (None, 3.0, [(float("nan"), 1.0, 1.0)], [(1.0, 2.0)], "nope"):
    with pytest.raises(ValueError, match="coefficients must be"):
      make(coefficients=bad)
  for bad in (jnp.bool_, jnp.int32, "float7"):
    with pytest.raises(ValueError, match="compute_dtype must be None or a floating dtype"):
      make(compute_dtype=bad)
  make(compute_dtype="bfloat16", coefficients=[(3.0, -3.0, 1.0)])


def test_psgd_kron_names_an_unknown_precond_dtype():
  with pytest.raises(ValueError, match="precond_dtype must be None or a floating dtype"):
    go.psgd_kron(0.1, precond_dtype="float7")


def test_mars_names_its_adam_weight_decay():
  with pytest.raises(ValueError, match="adam_weight_decay must be a non-negative number"):
    go.mars_adamw(0.01, adam_weight_decay=None)


def _public_arguments(takes) -> list:
  """(factory, argument) for every public factory's argument ``takes(name,
  parameter)`` selects."""
  found = []
  for module in (go, gt, contrib):
    for name in sorted(getattr(module, "__all__", dir(module))):
      factory = getattr(module, name, None)
      if not inspect.isfunction(factory) or name.startswith("_"):
        continue
      for arg, p in inspect.signature(factory).parameters.items():
        if takes(arg, p):
          found.append((factory, arg))
  return found


# Every argument annotated bool.
_FLAGS = _public_arguments(lambda arg, p: p.annotation in (bool, "bool"))


def test_the_flags_found_cover_the_public_api():
  names = {f"{f.__name__}.{a}" for f, a in _FLAGS}
  assert {"adam.nesterov", "sgd.nesterov", "adafactor.multiply_by_parameter_scale",
          "scale_by_mars.exact", "muon.nesterov", "lookahead.reset_state"} <= names
  assert len(names) > 50


@pytest.mark.parametrize("factory,name", _FLAGS,
                         ids=[f"{f.__name__}-{a}" for f, a in _FLAGS])
def test_a_flag_that_is_not_a_bool_is_refused(factory, name):
  """"False", 0.5 or None were read by truthiness: go.adam(nesterov="False")
  stepped as nesterov=True, adafactor's multiply_by_parameter_scale=None
  switched a default-on feature off, silently."""
  required = {p: 0.1 for p, v in inspect.signature(factory).parameters.items()
              if v.default is inspect.Parameter.empty and v.kind is v.POSITIONAL_OR_KEYWORD}
  for bad in ("False", 0.5, None):
    with pytest.raises(ValueError, match=rf"{name} must be True or False, got"):
      factory(**required, **{name: bad})


# Every argument that takes a function (``validate.RULE_ARGUMENTS``; not the
# schedules' string ``rule``).
_RULES = _public_arguments(
    lambda arg, p: arg in validate.RULE_ARGUMENTS and p.annotation not in (str, "str"))
# What a factory's other required arguments take.
_REQUIRED = {"base": lambda: go.sgd(0.1), "params": dict}


@pytest.mark.parametrize("factory,name", _RULES, ids=[f"{f.__name__}-{a}" for f, a in _RULES])
def test_a_rule_that_is_not_a_function_is_refused_when_given(factory, name):
  """is_muon_param="w" (or a set of names, a bool) was taken, and failed with
  "'str' object is not callable" at init or inside the first jitted update."""
  required = {p: _REQUIRED.get(p, lambda: 0.1)()
              for p, v in inspect.signature(factory).parameters.items()
              if v.default is inspect.Parameter.empty and v.kind is v.POSITIONAL_OR_KEYWORD
              and p != name}
  for bad in ("w", True, {"w"}):
    with pytest.raises(ValueError, match=rf"{name} must be a function"):
      factory(**required, **{name: bad})


def test_the_rules_found_cover_the_public_api():
  names = {f"{f.__name__}.{a}" for f, a in _RULES}
  assert {"muon.is_muon_param", "adamh.is_hyperball_param", "muonh.is_hyperball_param",
          "mars_adamw.is_mars_param", "kfac.is_dense", "kfac_precondition.is_dense",
          "qk_clip.rule", "stacked_matrix_view.where", "dion.is_muon_param"} <= names


def test_the_array_level_functions_name_a_bad_argument():
  """gt.inverse_pth_root of a vector failed in a transpose, p=0 divided by zero
  and p=-2 returned A^(1/2); newton_schulz of a vector raised IndexError and
  ns_steps=2.5 a fori_loop TypeError; quantize_blockwise(block_size=0) divided
  by zero; PSGD's probability schedule took max_prob=2 and min_prob > max_prob."""
  a = jnp.eye(3)
  for bad, message in ((jnp.ones(3), "takes \\(..., n, n\\) matrices"),
                       (jnp.ones((2, 3)), "takes \\(..., n, n\\) matrices")):
    with pytest.raises(ValueError, match=message):
      gt.inverse_pth_root(bad, 2)
  for p in (0, -2, NAN):
    with pytest.raises(ValueError, match="p must be in \\(0, inf\\)"):
      gt.inverse_pth_root(a, p)
  with pytest.raises(ValueError, match="damping must be in \\[0, inf\\)"):
    gt.inverse_pth_root(a, 2, damping=NAN)
  with pytest.raises(ValueError, match="newton_schulz takes"):
    gt.newton_schulz(jnp.ones(3))
  for steps in (2.5, 0, -1):
    with pytest.raises(ValueError, match="ns_steps must be"):
      gt.newton_schulz(a, steps)
  with pytest.raises(ValueError, match="eps must be in"):
    gt.newton_schulz(a, 5, eps=-1.0)
  for size in (0, -4, 7.5):
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
      gt.quantize_blockwise(jnp.ones(8), signed=True, block_size=size)
  with pytest.raises(ValueError, match="max_prob must be in \\(0, 1\\]"):
    gt.precond_update_prob_schedule(max_prob=2.0)
  with pytest.raises(ValueError, match="max_prob must be >= min_prob"):
    gt.precond_update_prob_schedule(max_prob=0.1, min_prob=0.5)
  np.testing.assert_allclose(gt.inverse_pth_root(4.0 * a, 2), 0.5 * a, rtol=1e-6)


def test_bool_arrays_and_string_flags_are_refused_and_an_endless_flat_start_is_kept():
  """A 0-d NumPy bool array passed as 1.0; dynamic_code_map("False") gave the
  signed map; a NumPy integer got the inject_hyperparams hint; PSGD's
  flat_start=inf (never anneal) stays accepted."""
  for value in (np.array(True), np.bool_(True)):
    with pytest.raises(ValueError, match="eps must be a number"):
      go.adam(1e-3, eps=value)
  with pytest.raises(ValueError, match="signed must be True or False"):
    gt.dynamic_code_map("False")
  with pytest.raises(ValueError) as error:
    go.shampoo(0.1, precondition_every=np.int64(0))
  assert "static_args" not in str(error.value)
  schedule = gt.precond_update_prob_schedule(flat_start=float("inf"))
  assert float(schedule(jnp.asarray(10_000))) == 1.0
