"""gradtx.transforms: the building blocks, each an ``optax.GradientTransformation``.

>>> from gradtx import transforms as gt
"""

from gradtx.describe import Description, LeafDescription, describe
from gradtx.transforms.adam_mini import (
    Blocks,
    PartitionRule,
    ScaleByAdamMiniState,
    adam_mini_blocks,
    scale_by_adam_mini,
)
from gradtx.transforms.ademamix import ScaleByAdemamixState, scale_by_ademamix
from gradtx.transforms.axis_names import (
    AxisNamesMatrixView,
    add_axis_names,
    matrix_view_from_axes,
)
from gradtx.transforms.cautious import CautiousState, cautious
from gradtx.transforms.factored import ScaleByFactoredRmsState, factored_axes, scale_by_factored_rms
from gradtx.transforms.factored_geometry import InFactoredGeometryState, in_factored_geometry
from gradtx.transforms.graft import GraftState, graft
from gradtx.transforms.hyperball import HyperballStepState, hyperball_step
from gradtx.transforms.kfac import KfacPreconditionState, is_dense_kernel, kfac_precondition
from gradtx.transforms.kronecker import KroneckerPreconditionState, kronecker_precondition
from gradtx.transforms.learning_rate import ScaleByLearningRateState, scale_by_learning_rate
from gradtx.transforms.low_rank import (
    OrthogonalizeLowRankState,
    low_rank_orthogonalize,
    orthogonalize_low_rank,
)
from gradtx.transforms.mars import (
    MarsCorrectionState,
    PreviousPointState,
    gradients_at_previous_point,
    scale_by_mars,
)
from gradtx.transforms.matrix_roots import inverse_pth_root
from gradtx.transforms.matrix_routing import (
    AdamWSide,
    PathLeafRule,
    is_hidden_matrix,
    matrix_roles,
)
from gradtx.transforms.matrix_view import (
    AmbiguousMatrixViewWarning,
    MatrixView,
    MatrixViewRule,
    einsum_matrix_view,
    flax_matrix_view,
    fused_qkv_matrix_view,
    on_matrix_views,
    stacked_matrix_view,
)
from gradtx.transforms.model_records import DenseRecord, Records
from gradtx.transforms.momentum import EmaState, MomentumState, ema, momentum
from gradtx.transforms.normalize import (
    NormalizeBySecondMomentState,
    normalize_by_second_moment,
)
from gradtx.transforms.orthogonalize import (
    Coefficients,
    clip_singular_values,
    newton_schulz,
    orthogonalize_newton_schulz,
)
from gradtx.transforms.param_scale import scale_by_param_rms
from gradtx.transforms.psgd_kron import (
    ScaleByPsgdKronState,
    precond_update_prob_schedule,
    scale_by_psgd_kron,
)
from gradtx.transforms.quantize import (
    QuantizedArray,
    dequantize_blockwise,
    dynamic_code_map,
    quantize_blockwise,
    stochastic_round,
)
from gradtx.transforms.second_moment import (
    ScaleByAdagradState,
    ScaleByAdamState,
    ScaleByBeliefState,
    ScaleByRmsState,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_belief,
    scale_by_rms,
)
from gradtx.transforms.shape_scale import scale_by_matrix_shape
from gradtx.transforms.sign import ScaleByLionState, scale_by_lion, scale_by_sign, scale_by_tiger
from gradtx.transforms.soap import ScaleBySoapState, scale_by_soap
from gradtx.transforms.state_format import Int8Blocks, StochasticBfloat16
from gradtx.transforms.state_sharding import state_shardings
from gradtx.transforms.trust_ratio import ScaleByTrustRatioState, scale_by_trust_ratio
from gradtx.transforms.weight_decay import (
    WeightDecayState,
    coupled_weight_decay,
    decoupled_weight_decay,
)

__all__ = [
    "AxisNamesMatrixView",
    "Blocks",
    "Coefficients",
    "EmaState",
    "GraftState",
    "Int8Blocks",
    "KroneckerPreconditionState",
    "MatrixView",
    "MatrixViewRule",
    "MomentumState",
    "PartitionRule",
    "QuantizedArray",
    "ScaleByAdagradState",
    "ScaleByAdamMiniState",
    "ScaleByAdamState",
    "ScaleByBeliefState",
    "ScaleByFactoredRmsState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByRmsState",
    "ScaleBySoapState",
    "ScaleByTrustRatioState",
    "StochasticBfloat16",
    "WeightDecayState",
    "adam_mini_blocks",
    "add_axis_names",
    "clip_singular_values",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "dequantize_blockwise",
    "dynamic_code_map",
    "einsum_matrix_view",
    "ema",
    "factored_axes",
    "flax_matrix_view",
    "graft",
    "inverse_pth_root",
    "kronecker_precondition",
    "matrix_view_from_axes",
    "momentum",
    "newton_schulz",
    "on_matrix_views",
    "orthogonalize_newton_schulz",
    "quantize_blockwise",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adam_mini",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_matrix_shape",
    "scale_by_param_rms",
    "scale_by_rms",
    "scale_by_sign",
    "scale_by_soap",
    "scale_by_tiger",
    "scale_by_trust_ratio",
    "stacked_matrix_view",
    "state_shardings",
    "stochastic_round",
    "DenseRecord",
    "Records",
    "KfacPreconditionState",
    "is_dense_kernel",
    "kfac_precondition",
    "OrthogonalizeLowRankState",
    "low_rank_orthogonalize",
    "orthogonalize_low_rank",
    "InFactoredGeometryState",
    "in_factored_geometry",
    "fused_qkv_matrix_view",
    "NormalizeBySecondMomentState",
    "normalize_by_second_moment",
    "CautiousState",
    "cautious",
    "ScaleByAdemamixState",
    "scale_by_ademamix",
    "HyperballStepState",
    "hyperball_step",
    "MarsCorrectionState",
    "PreviousPointState",
    "gradients_at_previous_point",
    "scale_by_mars",
    "ScaleByPsgdKronState",
    "precond_update_prob_schedule",
    "scale_by_psgd_kron",
    "AmbiguousMatrixViewWarning",
    "Description",
    "LeafDescription",
    "describe",
    "AdamWSide",
    "PathLeafRule",
    "is_hidden_matrix",
    "matrix_roles",
]
