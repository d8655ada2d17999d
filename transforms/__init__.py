"""gradtx.transforms: the building blocks, each an ``optax.GradientTransformation``.

>>> from gradtx import transforms as gt
"""

# What the transforms take and give that is not a transform, re-exported so
# one ``gt`` namespace serves a user: matrix views and routing rules, state
# formats, mesh shardings, model records, inverse roots, ``describe``.
from gradtx.describe import Description, LeafDescription, describe  # noqa: E402
from gradtx.distributed import state_shardings  # noqa: E402
from gradtx.flax_integration import DenseRecord, Records  # noqa: E402
from gradtx.linalg import inverse_pth_root  # noqa: E402
from gradtx.routing import (  # noqa: E402
    AmbiguousMatrixViewWarning,
    AxisNamesMatrixView,
    MatrixView,
    MatrixViewRule,
    PathLeafRule,
    add_axis_names,
    einsum_matrix_view,
    flax_matrix_view,
    fused_qkv_matrix_view,
    is_hidden_matrix,
    keeps_init_names,
    matrix_roles,
    matrix_view_from_axes,
    on_matrix_views,
    stacked_matrix_view,
)
from gradtx.storage import (  # noqa: E402
    Int8Blocks,
    QuantizedArray,
    StochasticBfloat16,
    dequantize_blockwise,
    dynamic_code_map,
    quantize_blockwise,
    stochastic_round,
)
from gradtx.transforms.acprop import ScaleByAcpropState, scale_by_acprop
from gradtx.transforms.adadelta import ScaleByAdadeltaState, scale_by_adadelta
from gradtx.transforms.adam_mini import (
    Blocks,
    PartitionRule,
    ScaleByAdamMiniState,
    adam_mini_blocks,
    scale_by_adam_mini,
)
from gradtx.transforms.adam_variants import (
    ScaleByAdamaxState,
    ScaleByAdoptState,
    ScaleByRadamState,
    ScaleByYogiState,
    scale_by_adamax,
    scale_by_adopt,
    scale_by_radam,
    scale_by_yogi,
)
from gradtx.transforms.adamw_side import AdamWSide
from gradtx.transforms.adan import ScaleByAdanState, proximal_weight_decay, scale_by_adan
from gradtx.transforms.ademamix import ScaleByAdemamixState, scale_by_ademamix
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
from gradtx.transforms.momentum import EmaState, MomentumState, ema, momentum
from gradtx.transforms.normalize import (
    NormalizeBySecondMomentState,
    normalize_by_second_moment,
)
from gradtx.transforms.novograd import ScaleByNovogradState, scale_by_novograd
from gradtx.transforms.orthogonalize import (
    Coefficients,
    clip_singular_values,
    newton_schulz,
    orthogonalize_newton_schulz,
)
from gradtx.transforms.param_scale import clip_by_block_rms, scale_by_param_rms
from gradtx.transforms.psgd_kron import (
    ScaleByPsgdKronState,
    precond_update_prob_schedule,
    scale_by_psgd_kron,
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
from gradtx.transforms.sm3 import ScaleBySm3State, scale_by_sm3
from gradtx.transforms.soap import ScaleBySoapState, scale_by_soap
from gradtx.transforms.trust_ratio import ScaleByTrustRatioState, scale_by_trust_ratio
from gradtx.transforms.weight_decay import (
    MaskOrFn,
    WeightDecayState,
    coupled_weight_decay,
    decoupled_weight_decay,
    weight_decay_mask,
)

__all__ = [
    "ScaleByAdamaxState",
    "ScaleByAdoptState",
    "ScaleByRadamState",
    "ScaleByYogiState",
    "scale_by_adamax",
    "scale_by_adopt",
    "scale_by_radam",
    "scale_by_yogi",
    "AdamWSide",
    "AmbiguousMatrixViewWarning",
    "AxisNamesMatrixView",
    "Blocks",
    "CautiousState",
    "Coefficients",
    "DenseRecord",
    "Description",
    "EmaState",
    "GraftState",
    "HyperballStepState",
    "InFactoredGeometryState",
    "Int8Blocks",
    "KfacPreconditionState",
    "KroneckerPreconditionState",
    "LeafDescription",
    "MarsCorrectionState",
    "MaskOrFn",
    "MatrixView",
    "MatrixViewRule",
    "MomentumState",
    "NormalizeBySecondMomentState",
    "OrthogonalizeLowRankState",
    "PartitionRule",
    "PathLeafRule",
    "PreviousPointState",
    "QuantizedArray",
    "Records",
    "ScaleByAcpropState",
    "ScaleByAdadeltaState",
    "ScaleByAdagradState",
    "ScaleByAdamMiniState",
    "ScaleByAdamState",
    "ScaleByAdanState",
    "ScaleByAdemamixState",
    "ScaleByBeliefState",
    "ScaleByFactoredRmsState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByNovogradState",
    "ScaleByPsgdKronState",
    "ScaleByRmsState",
    "ScaleBySm3State",
    "ScaleBySoapState",
    "ScaleByTrustRatioState",
    "StochasticBfloat16",
    "WeightDecayState",
    "adam_mini_blocks",
    "add_axis_names",
    "cautious",
    "clip_by_block_rms",
    "clip_singular_values",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "dequantize_blockwise",
    "describe",
    "dynamic_code_map",
    "einsum_matrix_view",
    "ema",
    "factored_axes",
    "flax_matrix_view",
    "fused_qkv_matrix_view",
    "gradients_at_previous_point",
    "graft",
    "hyperball_step",
    "in_factored_geometry",
    "inverse_pth_root",
    "is_dense_kernel",
    "is_hidden_matrix",
    "kfac_precondition",
    "kronecker_precondition",
    "low_rank_orthogonalize",
    "keeps_init_names",
    "matrix_roles",
    "matrix_view_from_axes",
    "momentum",
    "newton_schulz",
    "normalize_by_second_moment",
    "on_matrix_views",
    "orthogonalize_low_rank",
    "orthogonalize_newton_schulz",
    "precond_update_prob_schedule",
    "proximal_weight_decay",
    "quantize_blockwise",
    "scale_by_acprop",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adam_mini",
    "scale_by_adan",
    "scale_by_ademamix",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_mars",
    "scale_by_matrix_shape",
    "scale_by_novograd",
    "scale_by_param_rms",
    "scale_by_psgd_kron",
    "scale_by_rms",
    "scale_by_sign",
    "scale_by_sm3",
    "scale_by_soap",
    "scale_by_tiger",
    "scale_by_trust_ratio",
    "stacked_matrix_view",
    "state_shardings",
    "stochastic_round",
    "weight_decay_mask",
]
