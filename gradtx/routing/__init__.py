"""Which leaf is what: matrix views (batch x rows x columns of a leaf), Flax
axis names read as roles, and the rule that sends hidden matrices to a
matrix optimizer and output heads, embeddings and vectors elsewhere."""

from gradtx.routing.axis_names import (
    AxisNamesMatrixView,
    add_axis_names,
    keeps_init_names,
    matrix_view_from_axes,
)
from gradtx.routing.matrix_view import (
    AmbiguousMatrixViewWarning,
    MatrixView,
    MatrixViewRule,
    einsum_matrix_view,
    flax_matrix_view,
    fused_qkv_matrix_view,
    on_matrix_views,
    stacked_matrix_view,
)
from gradtx.routing.roles import PathLeafRule, is_hidden_matrix, matrix_roles

__all__ = [
    "AmbiguousMatrixViewWarning",
    "AxisNamesMatrixView",
    "MatrixView",
    "MatrixViewRule",
    "PathLeafRule",
    "add_axis_names",
    "einsum_matrix_view",
    "flax_matrix_view",
    "fused_qkv_matrix_view",
    "is_hidden_matrix",
    "keeps_init_names",
    "matrix_roles",
    "matrix_view_from_axes",
    "on_matrix_views",
    "stacked_matrix_view",
]
