"""gradtx.optimizers: complete optimizers, each a short chain of gradtx transforms.

>>> from gradtx import optimizers as go
"""

import warnings as _warnings

from gradtx.optimizers.acprop import acprop
from gradtx.optimizers.adabelief import adabelief
from gradtx.optimizers.adadelta import adadelta
from gradtx.optimizers.adafactor import adafactor, relative_step_size
from gradtx.optimizers.adagrad import adagrad
from gradtx.optimizers.adam import adam, adamw, adamw_8bit
from gradtx.optimizers.adam_mini import adam_mini
from gradtx.optimizers.adam_variants import adamax, adamaxw, adopt, adoptw, radam, radamw, yogi
from gradtx.optimizers.adan import adan
from gradtx.optimizers.ademamix import ademamix
from gradtx.optimizers.cocob import CocobState, cocob
from gradtx.optimizers.dadapt import DAdaptAdamState, dadapt_adamw
from gradtx.optimizers.dion import dion
from gradtx.optimizers.dog import DoGState, DoWGState, dog, dowg
from gradtx.optimizers.fourth_quadrant import adamuon, normuon, soap_muon, vmuon
from gradtx.optimizers.fromage import fromage
from gradtx.optimizers.hyperball import adamh, muonh
from gradtx.optimizers.kfac import kfac
from gradtx.optimizers.lookahead import LookaheadState, lookahead
from gradtx.optimizers.madgrad import MadgradState, madgrad
from gradtx.optimizers.mars import mars_adamw
from gradtx.optimizers.mechanic import MechanicState, mechanize
from gradtx.optimizers.muon import is_hidden_matrix, muon
from gradtx.optimizers.nnx_records import max_logits, observe_attention, value_grad_and_records
from gradtx.optimizers.novograd import novograd
from gradtx.optimizers.parameter_ema import ParameterEmaState, ema_params, parameter_ema
from gradtx.optimizers.prodigy import ProdigyState, prodigy
from gradtx.optimizers.psgd_kron import psgd_kron
from gradtx.optimizers.qk_clip import HeadScaling, QkClipState, default_qk_rule, qk_clip
from gradtx.optimizers.rmsprop import rmsprop
from gradtx.optimizers.sam import SamState, sam
from gradtx.optimizers.scaling_rules import learning_rate_for_batch_size, weight_decay_schedule
from gradtx.optimizers.schedule_free import (
  ScheduleFreeState,
  schedule_free,
  schedule_free_adamw,
  schedule_free_eval_params,
  schedule_free_sgd,
)
from gradtx.optimizers.sgd import sgd
from gradtx.optimizers.shampoo import shampoo
from gradtx.optimizers.sign import lion, signsgd, tiger
from gradtx.optimizers.sm3 import sm3
from gradtx.optimizers.soap import soap
from gradtx.optimizers.trust_ratio import lamb, lars

__all__ = [
    "adamax",
    "adamaxw",
    "adopt",
    "adoptw",
    "radam",
    "radamw",
    "yogi",
    "LookaheadState",
    "ProdigyState",
    "prodigy",
    "DAdaptAdamState",
    "dadapt_adamw",
    "MadgradState",
    "madgrad",
    "DoGState",
    "DoWGState",
    "dog",
    "dowg",
    "CocobState",
    "cocob",
    "MechanicState",
    "mechanize",
    "SamState",
    "acprop",
    "adabelief",
    "adafactor",
    "adadelta",
    "adagrad",
    "adam",
    "adam_mini",
    "adamw",
    "adamw_8bit",
    "is_hidden_matrix",
    "lamb",
    "lars",
    "lion",
    "lookahead",
    "muon",
    "relative_step_size",
    "rmsprop",
    "sam",
    "sgd",
    "shampoo",
    "signsgd",
    "soap",
    "tiger",
    "learning_rate_for_batch_size",
    "weight_decay_schedule",
    "dion",
    "kfac",
    "qk_clip",
    "HeadScaling",
    "QkClipState",
    "default_qk_rule",
    "max_logits",
    "observe_attention",
    "value_grad_and_records",
    "adamuon",
    "normuon",
    "soap_muon",
    "vmuon",
    "ademamix",
    "ParameterEmaState",
    "ema_params",
    "parameter_ema",
    "adamh",
    "muonh",
    "mars_adamw",
    "psgd_kron",
    "adan",
    "sm3",
    "ScheduleFreeState",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "fromage",
    "novograd",
]


def __getattr__(name):
  # go.adamuon_lm moved to gradtx.contrib: the old name still works, with a warning.
  if name == "adamuon_lm":
    _warnings.warn(
        "gradtx.optimizers.adamuon_lm is deprecated: it is an experimental recipe tuned on "
        "one benchmark, now gradtx.contrib.adamuon_lm", DeprecationWarning, stacklevel=2)
    from gradtx.contrib import adamuon_lm
    return adamuon_lm
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
