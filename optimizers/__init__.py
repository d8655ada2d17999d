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
]
