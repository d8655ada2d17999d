"""gradtx.transforms: the building blocks, each an ``optax.GradientTransformation``.

>>> from gradtx import transforms as gt
"""

from gradtx.transforms.learning_rate import ScaleByLearningRateState
from gradtx.transforms.learning_rate import scale_by_learning_rate
from gradtx.transforms.matrix_shape import on_matrix_views
from gradtx.transforms.matrix_shape import scale_by_matrix_shape
from gradtx.transforms.moments import ScaleByAdagradState
from gradtx.transforms.moments import ScaleByAdamState
from gradtx.transforms.moments import ScaleByBeliefState
from gradtx.transforms.moments import ScaleByRmsState
from gradtx.transforms.moments import scale_by_adagrad
from gradtx.transforms.moments import scale_by_adam
from gradtx.transforms.moments import scale_by_belief
from gradtx.transforms.moments import scale_by_rms
from gradtx.transforms.momentum import EmaState
from gradtx.transforms.momentum import MomentumState
from gradtx.transforms.momentum import ema
from gradtx.transforms.momentum import momentum
from gradtx.transforms.orthogonalize import Coefficients
from gradtx.transforms.orthogonalize import clip_singular_values
from gradtx.transforms.orthogonalize import newton_schulz
from gradtx.transforms.orthogonalize import orthogonalize_newton_schulz
from gradtx.transforms.sign import ScaleByLionState
from gradtx.transforms.sign import scale_by_lion
from gradtx.transforms.sign import scale_by_sign
from gradtx.transforms.sign import scale_by_tiger
from gradtx.transforms.trust_ratio import ScaleByTrustRatioState
from gradtx.transforms.trust_ratio import scale_by_param_rms
from gradtx.transforms.trust_ratio import scale_by_trust_ratio
from gradtx.transforms.weight_decay import WeightDecayState
from gradtx.transforms.weight_decay import coupled_weight_decay
from gradtx.transforms.weight_decay import decoupled_weight_decay
from gradtx.transforms.kronecker import KroneckerPreconditionState
from gradtx.transforms.matrix_roots import inverse_pth_root
from gradtx.transforms.kronecker import kronecker_precondition
from gradtx.transforms.graft import GraftState
from gradtx.transforms.graft import graft
from gradtx.transforms.soap import ScaleBySoapState
from gradtx.transforms.soap import scale_by_soap
from gradtx.transforms.adam_mini import Blocks
from gradtx.transforms.adam_mini import PartitionRule
from gradtx.transforms.adam_mini import ScaleByAdamMiniState
from gradtx.transforms.adam_mini import adam_mini_blocks
from gradtx.transforms.adam_mini import scale_by_adam_mini
from gradtx.transforms.factored import ScaleByFactoredRmsState
from gradtx.transforms.factored import factored_axes
from gradtx.transforms.factored import scale_by_factored_rms
from gradtx.transforms.quantize import QuantizedArray
from gradtx.transforms.quantize import dequantize_blockwise
from gradtx.transforms.quantize import dynamic_code_map
from gradtx.transforms.quantize import quantize_blockwise
from gradtx.transforms.quantize import stochastic_round
from gradtx.transforms.state_format import Int8Blocks
from gradtx.transforms.state_format import StochasticBfloat16


__all__ = [
    "Coefficients",
    "clip_singular_values",
    "newton_schulz",
    "on_matrix_views",
    "orthogonalize_newton_schulz",
    "scale_by_matrix_shape",
    "EmaState",
    "MomentumState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByBeliefState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByRmsState",
    "WeightDecayState",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "ema",
    "momentum",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_belief",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_param_rms",
    "ScaleByTrustRatioState",
    "scale_by_trust_ratio",
    "scale_by_rms",
    "scale_by_sign",
    "scale_by_tiger",
    "GraftState",
    "KroneckerPreconditionState",
    "ScaleBySoapState",
    "graft",
    "inverse_pth_root",
    "kronecker_precondition",
    "scale_by_soap",
    "Blocks",
    "Int8Blocks",
    "PartitionRule",
    "QuantizedArray",
    "ScaleByAdamMiniState",
    "ScaleByFactoredRmsState",
    "StochasticBfloat16",
    "adam_mini_blocks",
    "dequantize_blockwise",
    "dynamic_code_map",
    "factored_axes",
    "quantize_blockwise",
    "scale_by_adam_mini",
    "scale_by_factored_rms",
    "stochastic_round",
]
