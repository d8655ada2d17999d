"""Step sizes that depend on a matrix's shape: Muon's scale rules."""

import math
from typing import Optional

import jax
import optax

from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names

SCALES = ("jordan", "moonlight")


def shape_scale(scale: Optional[str], fan_in: int, fan_out: int) -> float:
  """The step multiplier of a (fan_in, fan_out) matrix update.

  ``"jordan"``: sqrt(max(1, fan_out / fan_in)), the reference Muon's
  sqrt(max(1, rows/cols)) for PyTorch's (out, in) layout; ``"moonlight"``:
  0.2·sqrt(max(fan_in, fan_out)), which gives an orthogonalized update the
  RMS of a typical AdamW update (Liu et al. 2025); ``None``: 1. An empty
  matrix gets 1.
  """
  if scale is None or fan_in == 0 or fan_out == 0:
    if scale is not None and scale not in SCALES:
      raise ValueError(f"scale must be one of {SCALES} or None, got {scale!r}")
    return 1.0
  if scale == "jordan":
    return math.sqrt(max(1.0, fan_out / fan_in))
  if scale == "moonlight":
    return 0.2 * math.sqrt(max(fan_in, fan_out))
  raise ValueError(f"scale must be one of {SCALES} or None, got {scale!r}")


def scale_by_matrix_shape(
    scale: Optional[str] = "jordan",
    *,
    matrix_view: Optional[_matrix_view.MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Multiplies each matrix leaf by ``shape_scale`` of its matrix view.

  .. math:: u \leftarrow s(\text{fan\_in}, \text{fan\_out})\, u

  with (fan_in, fan_out) the (rows, cols) of the leaf's matrix view.

  Args:
    scale: ``"jordan"``, ``"moonlight"`` or ``None`` (see ``shape_scale``).
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default);
      leaves without a view pass through.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural
  networks", 2024 (``"jordan"``); Liu et al., "Muon is Scalable for LLM
  Training", arXiv 2502.16982, 2025 (``"moonlight"``).
  """
  shape_scale(scale, 1, 1)  # validates

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    views = _matrix_view.views_of(updates, matrix_view)
    out = []
    for u, view in zip(leaves, views):
      if view is not None:
        _, fan_in, fan_out = view.matrix_shape(u.shape)
        u = (shape_scale(scale, fan_in, fan_out) * u).astype(u.dtype)
      out.append(u)
    return treedef.unflatten(out), state

  return keeps_init_names(optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn))
