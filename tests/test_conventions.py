"""The argument convention, checked on every public factory with ``inspect``.

* Optimizers take ``learning_rate`` (wrappers: ``base``) positionally and
  everything else by keyword, so a positional call can never mean something
  else than it does in optax. Transforms take positionally only what their
  optax counterpart takes in the same place with the same meaning (or their
  one defining argument).
* One name per meaning: every argument name is in ``NAMES`` with its meaning;
  a new name needs a line there (and in the README's Conventions table).
* ``mask`` wherever weight decay is added, ``cautious_weight_decay`` wherever
  it is decoupled, ``mu_dtype`` wherever a first
  moment or momentum buffer is kept, ``nu_dtype`` wherever an element-wise
  second moment is, and each accepts every state format.
* Every docstring documents each argument under ``Args:`` and cites a source.
"""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import contrib
from gradtx import optimizers as go
from gradtx import transforms as gt

# name -> meaning. The README's Conventions table is the user-facing copy.
NAMES = {
    "learning_rate": "step size η, a float or a schedule",
    "base": "the optimizer a wrapper wraps",
    "momentum": "heavy-ball momentum μ: m ← μm + g (signsgd: its sign; madgrad: x ← μx + (1−μ)z)",
    "b1": "first-moment EMA decay: m ← b1·m + (1−b1)·g (Lion, Schedule-Free: its interpolation)",
    "b2": "second-moment EMA decay (Lion: its momentum's decay)",
    "b3": "AdEMAMix's slow-EMA decay; Adan's second-moment decay; Prodigy's decay of its D sums",
    "alpha": "AdEMAMix's weight of the slow EMA; COCOB's α (its bet's denominator ≥ αL)",
    "beta": "the EMA decay of muon's and tiger's momentum (the API's name)",
    "decay": "decay of a transform's one EMA (gt.ema, scale_by_rms / torch alpha)",
    "decay_rate": "Adafactor's decay exponent c in 1 − t^(−c)",
    "decay_offset": "Adafactor's step offset of that schedule",
    "dampening": "torch SGD's dampening of the momentum buffer",
    "debias": "divide an EMA by its total weight 1 − decay^t",
    "nesterov": "Nesterov look-ahead",
    "sign_momentum": "orthogonalize sign(momentum) (AdaMuon's paper)",
    "eps": "added to a denominator (outside a square root)",
    "eps_root": "added inside a square root",
    "damping": "absolute ridge added to a matrix before a root",
    "relative_damping": "ridge relative to the largest eigenvalue",
    "weight_decay": "decay coefficient λ, a float or a schedule",
    "mask": "which leaves get weight decay (optax.masked semantics)",
    "cautious_weight_decay": "decay only where the update has the weight's sign",
    "trust_ratio_mask": "which leaves get the trust ratio",
    "mu_dtype": "storage format of a first moment / momentum buffer",
    "nu_dtype": "storage format of an element-wise second moment",
    "amsgrad": "keep the running maximum of the second moment",
    "centered": "RMSProp's centered variance",
    "initial_scale": "starting value of RMSProp's v",
    "initial_accumulator_value": "starting value of AdaGrad's sum / Yogi's v",
    "precondition_b2": "decay of matrix statistics (Kronecker factors)",
    "precondition_every": "recompute period of a preconditioner",
    "block_size": "side of a preconditioner / quantization block",
    "max_precondition_dim": "sides longer than this are not preconditioned",
    "root_method": "how inverse roots are computed",
    "refresh": "how SOAP's eigenbasis is refreshed",
    "grafting": "the grafted optimizer that sets Shampoo's step norms",
    "matrix_view": "the rule that sees leaves as matrices",
    "ns_steps": "Newton–Schulz iterations",
    "coefficients": "Newton–Schulz polynomial coefficients",
    "compute_dtype": "dtype of the Newton–Schulz iterations",
    "method": "Newton–Schulz variant (standard / gram)",
    "batch_same_shape": "stack same-shape matrices into one call",
    "scale": "Muon's shape scale rule",
    "is_muon_param": "Muon's routing rule",
    "is_hyperball_param": "the hyperball optimizers' routing rule (AdamH leaves)",
    "is_mars_param": "MARS's routing rule",
    "gamma": "MARS's strength γ of the gradient correction",
    "exact": "MARS-exact: the previous gradient at the previous parameters (grad_fn=)",
    "adam_learning_rate": "learning rate of muon's AdamW leaves",
    "adam_b1": "b1 of muon's AdamW leaves",
    "adam_b2": "b2 of muon's AdamW leaves",
    "adam_eps": "eps of muon's AdamW leaves",
    "adam_weight_decay": "weight decay of muon's AdamW leaves",
    "embedding_learning_rate": "learning rate of muon's AdamW on the embeddings",
    "min_dim_size_to_factor": "Adafactor: factor only axes at least this long",
    "multiply_by_parameter_scale": "Adafactor's relative step",
    "clipping_threshold": "Adafactor's update clipping d",
    "min_scale": "the floor of a parameter-RMS step factor (Adafactor's 1e-3)",
    "factored": "Adafactor: factor the second moments at all",
    "num_heads": "attention heads (Adam-mini's per-head blocks)",
    "blocks": "Adam-mini's partition rule",
    "trust_coefficient": "LARS's η in the trust ratio",
    "param_rms_scaling": "Tiger's per-tensor RMS step scale",
    "rho": "SAM's radius",
    "adaptive": "ASAM's scale-invariant neighbourhood; Muon's step times ⟨M, O⟩ (optax's names)",
    "eta": "ASAM's offset of |w| + η",
    "sync_period": "Lookahead's k",
    "slow_step_size": "Lookahead's α",
    "reset_state": "Lookahead: re-initialise the base at syncs",
    "start_step": "the step after which a parameter EMA starts averaging",
    "warmup_steps": "steps of a linear learning-rate warm-up",
    "preconditioning": "how Newton–Schulz's input is scaled to spectral norm ≤ 1",
    "weight_lr_power": "Schedule-Free: power of the largest η in the averaging weights",
    "r": "Schedule-Free: power of the step t in the averaging weights",
    "state_dtype": "Schedule-Free: storage of its iterates z (optax's name)",
    "estim_lr0": "Prodigy, D-Adaptation: the initial estimate d₀ of the step size (optax's name)",
    "estim_lr_coef": "Prodigy: the coefficient of its step-size estimate (optax's name)",
    "growth_rate": "Prodigy, D-Adaptation: the largest factor the step size grows by in a step",
    "use_bias_correction": "Prodigy, D-Adaptation: Adam's bias correction in the step (official)",
    "s_decay": "Mechanic: the tuner's decay λ in its inner product h (the official name)",
    "s_init": "Mechanic: the scale of its initial wealth (the official name)",
    "num_betas": "Mechanic: the number of tuners, β = 1 − 10⁻ⁱ (optax's name)",
    "reps_rel": "DoG: its initial distance r_ε relative to 1 + ‖p₀‖ (the official name)",
    "init_eta": "DoG: the first step's step size (the official name)",
    "layer_wise": "DoG: one step size per leaf (the official LDoG)",
    "init_estim_sq_dist": "DoWG: the initial estimate r_ε² of the squared distance (optax's)",
    "decouple_decay": "MADGRAD: decay x after the step instead of L2 (the official name)",
    "safeguard_warmup": "Prodigy: its sum s without the learning rate (the official name)",
    "tau": "soft-sign constant",
    "mode": "Lion's sign variant: hard, smooth (tanh) or refined (optax's name)",
    "smooth_beta": "Lion's smooth mode: the slope β_s of tanh(β_s x) (optax's name)",
    "min_value": "lower singular-value bound",
    "max_value": "upper singular-value bound",
    "magnitude": "grafting's norm-giving transform",
    "direction": "grafting's direction-giving transform",
    "inner": "the transform a wrapper applies",
    "flip_sign": "negate the step (descent)",
    "min_ndim": "leaves with fewer dimensions pass through",
    "warmup_init": "Adafactor's warm-up variant of the relative step",
    "norm_constraint": "K-FAC's bound c on ⟨u, g⟩ (kfac-jax's norm_constraint)",
    "is_dense": "K-FAC's rule of which leaves are dense kernels",
    "rank": "k of a low-rank update (an int, or a fraction of min(m, n))",
    "power_iters": "power iterations per step (Dion)",
    "orthonormalize": "how a low-rank basis is orthonormalized (QR / Cholesky-QR)",
    "error_feedback": "feed what a low-rank update left out into the next step",
    "seed": "seed of random state (Dion's bases, PSGD's probes)",
    "precond_update_probability": "PSGD: how often its preconditioner is fitted (or a schedule)",
    "max_size_triangular": "PSGD: longer axes get a diagonal factor",
    "min_ndim_triangular": "PSGD: leaves with fewer axes get diagonal factors",
    "memory_save_mode": "PSGD: which axes get diagonal factors to save memory",
    "momentum_into_precond_update": "PSGD: fit the preconditioner on the momentum",
    "precond_lr": "PSGD: step size of the preconditioner's fit",
    "precond_init_scale": "PSGD: scale of the initial preconditioner",
    "precond_dtype": "storage dtype of a preconditioner",
    "threshold": "the value past which a rule acts: QK-clip's cap τ on the max attention"
                 " logit; RAdam's ρ_t past which it rectifies (optax's name)",
    "use_clipping": "ADOPT: clip the normalized gradient (optax's name)",
    "clip_value_fn": "ADOPT: the clipping bound as a function of the step count (optax's name)",
    "rule": "QK-clip's rule of which leaves are queries/keys and their heads",
    "granularity": "what a second moment is kept per: element, output or input neuron",
    "min_norm": "a floor on both norms of a trust ratio (optax's name)",
    "renormalize": "the Frobenius norm a normalized matrix update is rescaled to",
}

# Transforms: the parameters they may take positionally, and why.
POSITIONAL = {
    "scale_by_adam": ("b1", "b2", "eps", "eps_root"),  # optax.scale_by_adam
    "scale_by_belief": ("b1", "b2", "eps"),  # optax.scale_by_belief
    "scale_by_rms": ("decay", "eps"),  # optax.scale_by_rms
    "scale_by_adagrad": ("initial_accumulator_value", "eps"),  # optax.scale_by_rss
    "scale_by_lion": ("b1", "b2"),  # optax.scale_by_lion
    # optax.contrib.scale_by_ademamix
    "scale_by_ademamix": ("b1", "b2", "b3", "alpha", "eps", "eps_root"),
    "scale_by_acprop": ("b1", "b2", "eps"),  # optax.contrib.scale_by_acprop's first three
    "scale_by_adamax": ("b1", "b2", "eps"),  # optax.scale_by_adamax
    "scale_by_radam": ("b1", "b2", "eps"),  # optax.scale_by_radam's first three
    "scale_by_yogi": ("b1", "b2", "eps", "eps_root", "initial_accumulator_value"),
    "scale_by_adopt": ("b1", "b2", "eps"),  # optax.contrib.scale_by_adopt's first three
    "scale_by_adan": ("b1", "b2", "b3", "eps", "eps_root"),  # optax.scale_by_adan
    "scale_by_sm3": ("b1",),  # optax.scale_by_sm3's first
    "scale_by_trust_ratio": ("min_norm",),  # optax.scale_by_trust_ratio's first
    "cautious": ("inner",),  # the transform it wraps
    "decoupled_weight_decay": ("weight_decay", "mask"),  # optax.add_decayed_weights
    "coupled_weight_decay": ("weight_decay", "mask"),
    "scale_by_learning_rate": ("learning_rate",),  # optax.scale_by_learning_rate
    "clip_by_block_rms": ("clipping_threshold",),  # optax.clip_by_block_rms(threshold)
    "hyperball_step": ("learning_rate",),  # it replaces scale_by_learning_rate
    "gradients_at_previous_point": ("inner",),  # the transform it wraps
    "ema": ("decay",),  # optax.ema
    "momentum": ("momentum",),  # optax.trace's decay, the one defining argument
    "scale_by_sign": ("tau",),
    "scale_by_tiger": ("beta",),
    "scale_by_matrix_shape": ("scale",),
    "orthogonalize_newton_schulz": ("ns_steps", "coefficients"),  # API.md
    "clip_singular_values": ("min_value", "max_value"),  # API.md
    "graft": ("magnitude", "direction"),
    "on_matrix_views": ("inner", "matrix_view"),
    "in_factored_geometry": ("inner",),  # the transform it wraps
    "orthogonalize_low_rank": ("rank",),  # its one defining argument
}

# Optimizers that keep a moment but fix its format, and why.
NO_MU_DTYPE = {
    "adamw_8bit": "both moments are int8 blocks by definition",
    # Dion's momentum lives in its error-feedback buffer M = B − (1−μ)PRᵀ,
    # which holds the un-applied remainder of every update and is kept in
    # the parameter's dtype; its AdamW leaves use adamw's defaults.
    "dion": "the momentum is the error-feedback buffer, kept in the parameter's dtype",
    # b1 interpolates; the one buffer is the iterate z, kept in float32 or wider.
    "schedule_free": "no momentum buffer: z is an iterate, not a moment",
    "schedule_free_sgd": "no momentum buffer: z is an iterate, not a moment",
    "schedule_free_adamw": "no momentum buffer: z is an iterate, not a moment",
    # momentum weighs x against z in an average; the state keeps x₀ and two sums.
    "madgrad": "no momentum buffer: x averages the dual-averaging iterate z",
}
NO_NU_DTYPE = {
    "novograd": "one float32 second moment per leaf (layer), not element-wise",
    "adamw_8bit": "both moments are int8 blocks by definition",
    "adam_mini": "one float32 value per block, 0.1% of the parameters",
    "lion": "b2 decays Lion's momentum; there is no second moment",
    "adafactor": "factored statistics, not an element-wise second moment",
}


# Factories (annotated to return a transformation); the helpers next to them
# (is_hidden_matrix, relative_step_size, the scaling rules) are not optimizers.
OPTIMIZERS = [
    getattr(module, n) for module in (go, contrib) for n in module.__all__
    if inspect.isfunction(getattr(module, n))
    and inspect.signature(getattr(module, n)).return_annotation
    in (optax.GradientTransformation, optax.GradientTransformationExtraArgs)
]
TRANSFORMS = [
    getattr(gt, n) for n in gt.__all__
    if inspect.isfunction(getattr(gt, n))
    and inspect.signature(getattr(gt, n)).return_annotation
    in (optax.GradientTransformation, optax.GradientTransformationExtraArgs)
]
ids = lambda f: f.__name__


def test_the_lists_are_not_empty():
  assert len(OPTIMIZERS) >= 19 and len(TRANSFORMS) >= 23


@pytest.mark.parametrize("factory", OPTIMIZERS, ids=ids)
def test_optimizers_take_only_the_learning_rate_or_base_positionally(factory):
  parameters = list(inspect.signature(factory).parameters.values())
  wrappers = (go.sam, go.lookahead, go.qk_clip, go.parameter_ema, go.schedule_free,
              go.mechanize)
  first = "base" if factory in wrappers else "learning_rate"
  assert parameters[0].name == first
  assert parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
  positional = [p.name for p in parameters[1:] if p.kind is not p.KEYWORD_ONLY]
  assert not positional, f"{factory.__name__}: {positional} must be keyword-only"


@pytest.mark.parametrize("factory", TRANSFORMS, ids=ids)
def test_transforms_take_positionally_only_what_optax_does(factory):
  parameters = inspect.signature(factory).parameters.values()
  positional = tuple(p.name for p in parameters if p.kind is not p.KEYWORD_ONLY)
  assert positional == POSITIONAL.get(factory.__name__, ()), factory.__name__


@pytest.mark.parametrize("factory", OPTIMIZERS + TRANSFORMS, ids=ids)
def test_every_argument_name_has_one_listed_meaning(factory):
  unknown = set(inspect.signature(factory).parameters) - set(NAMES)
  assert not unknown, f"{factory.__name__}: add {unknown} to NAMES (and the README)"


# Optimizers whose weight decay is the L2 gradient (coupled, torch's
# ``weight_decay``) or lies inside a trust ratio: no cautious form.
COUPLED_DECAY = {
    "sgd", "adam", "adagrad", "rmsprop", "lars", "adamax", "radam", "adopt", "adadelta",
    "dog", "dowg", "cocob"}


@pytest.mark.parametrize("factory", OPTIMIZERS, ids=ids)
def test_decoupled_weight_decay_has_its_cautious_form(factory):
  names = set(inspect.signature(factory).parameters)
  if "weight_decay" in names and factory.__name__ not in COUPLED_DECAY:
    assert "cautious_weight_decay" in names, factory.__name__


@pytest.mark.parametrize("factory", OPTIMIZERS, ids=ids)
def test_mask_goes_with_weight_decay_and_dtypes_with_moments(factory):
  names = set(inspect.signature(factory).parameters)
  name = factory.__name__
  if "weight_decay" in names:
    assert "mask" in names, name
  keeps_first_moment = bool(names & {"momentum", "b1", "beta"})
  if keeps_first_moment and name not in NO_MU_DTYPE:
    assert "mu_dtype" in names, name
  if "b2" in names and name not in NO_NU_DTYPE:
    assert "nu_dtype" in names, name


# "int8" keeps leaves under 4096 elements in float32: Int8Blocks(64, 0) codes
# even the small test leaves.
_FORMATS = [jnp.bfloat16, gt.StochasticBfloat16(seed=3), gt.Int8Blocks(64, 0)]
_PARAMS = {"w": jnp.linspace(-1.0, 1.0, 96).reshape(8, 12), "b": jnp.linspace(0.0, 1.0, 12)}
# A non-zero momentum where the default keeps none.
_WITH_MOMENTUM = {go.sgd: dict(momentum=0.9), go.rmsprop: dict(momentum=0.9, centered=True),
                  go.signsgd: dict(momentum=0.9), go.adafactor: dict(b1=0.9)}


def _dtype_cases():
  for factory in OPTIMIZERS:
    names = inspect.signature(factory).parameters
    for argument in ("mu_dtype", "nu_dtype"):
      if argument in names:
        for fmt in _FORMATS:
          yield pytest.param(factory, argument, fmt,
                             id=f"{factory.__name__}-{argument}-{fmt}")


@pytest.mark.parametrize("factory, argument, fmt", list(_dtype_cases()))
def test_state_dtypes_accept_every_state_format(factory, argument, fmt):
  tx = factory(0.1, **_WITH_MOMENTUM.get(factory, {}), **{argument: fmt})
  state = tx.init(_PARAMS)
  stored = {type(x).__name__ if isinstance(x, gt.QuantizedArray) else jnp.dtype(x.dtype)
            for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, gt.QuantizedArray))}
  expected = "QuantizedArray" if isinstance(fmt, gt.Int8Blocks) else jnp.dtype(jnp.bfloat16)
  assert expected in stored, (factory.__name__, argument, stored)
  params = _PARAMS
  for _ in range(2):
    grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))


def _documented_arguments(doc):
  """The names of the entries of the ``Args:`` block (its least-indented lines)."""
  block = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
  entries = re.findall(r"^( +)(\w+):", block, re.M)
  indent = min(len(spaces) for spaces, _ in entries)
  return {name for spaces, name in entries if len(spaces) == indent}


@pytest.mark.parametrize("factory", OPTIMIZERS + TRANSFORMS, ids=ids)
def test_docstrings_document_every_argument(factory):
  doc = inspect.getdoc(factory)
  assert doc and "Args:" in doc and "Returns:" in doc, factory.__name__
  missing = set(inspect.signature(factory).parameters) - _documented_arguments(doc)
  assert not missing, f"{factory.__name__} does not document {missing}"


@pytest.mark.parametrize("factory", OPTIMIZERS, ids=ids)
def test_optimizer_docstrings_state_the_rule_and_cite_a_source(factory):
  doc = inspect.getdoc(factory)
  assert ".. math::" in doc or ":math:" in doc, factory.__name__
  assert "Reference" in doc, factory.__name__


def test_no_two_names_for_one_meaning():
  meanings = list(NAMES.values())
  assert len(meanings) == len(set(meanings))
  assert np.all([m.strip() for m in meanings])
