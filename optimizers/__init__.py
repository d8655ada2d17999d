"""gradtx.optimizers: complete optimizers, each a short chain of gradtx transforms.

>>> from gradtx import optimizers as go
"""

from gradtx.optimizers.adaptive import adabelief
from gradtx.optimizers.adaptive import adagrad
from gradtx.optimizers.adaptive import adam
from gradtx.optimizers.adaptive import adamw
from gradtx.optimizers.adaptive import rmsprop
from gradtx.optimizers.muon import is_hidden_matrix
from gradtx.optimizers.muon import muon
from gradtx.optimizers.sgd import sgd
from gradtx.optimizers.sign import lion
from gradtx.optimizers.sign import signsgd
from gradtx.optimizers.sign import tiger
from gradtx.optimizers.shampoo import shampoo
from gradtx.optimizers.shampoo import soap
from gradtx.optimizers.memory import adafactor
from gradtx.optimizers.memory import adam_mini
from gradtx.optimizers.memory import adamw_8bit
from gradtx.optimizers.memory import relative_step_size
from gradtx.optimizers.large_batch import lamb
from gradtx.optimizers.large_batch import lars
from gradtx.optimizers.lookahead import LookaheadState
from gradtx.optimizers.lookahead import lookahead
from gradtx.optimizers.sam import SamState
from gradtx.optimizers.sam import sam
from gradtx.optimizers.scaling_rules import learning_rate_for_batch_size
from gradtx.optimizers.scaling_rules import weight_decay_schedule


__all__ = [
    "adabelief",
    "adagrad",
    "adam",
    "adamw",
    "is_hidden_matrix",
    "lion",
    "muon",
    "rmsprop",
    "sgd",
    "signsgd",
    "tiger",
    "shampoo",
    "soap",
    "adafactor",
    "adam_mini",
    "lamb",
    "lars",
    "LookaheadState",
    "lookahead",
    "SamState",
    "sam",
    "adamw_8bit",
    "relative_step_size",
    "learning_rate_for_batch_size",
    "weight_decay_schedule",
]
