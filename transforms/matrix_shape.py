"""Viewing parameters as matrices, and step sizes that depend on their shape.

gradtx follows flax's kernel layout: a dense kernel is (fan_in, fan_out), a
convolution kernel (kh, kw, fan_in, fan_out). A "matrix view" of a leaf is
``(..., fan_in, fan_out)`` with any leading axes a batch.
"""

import math
from typing import Optional

import jax
import optax


SCALES = ("jordan", "moonlight")


def matrix_view_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The matrix view of a leaf shape.

  ndim 2 and 3: unchanged (ndim 3 is a stack of matrices, e.g. scanned
  layers); ndim 4: a convolution kernel, flattened to (kh·kw·fan_in, fan_out).
  Other ranks have no matrix view.
  """
  if len(shape) in (2, 3):
    return shape
  if len(shape) == 4:
    return (math.prod(shape[:3]), shape[3])
  raise ValueError(f"a leaf of shape {shape} has no matrix view (ndim 2-4)")


def on_matrix_views(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformation:
  """Runs a stateless ``inner`` transform on the matrix view of every leaf.

  Convolution kernels are reshaped to (kh·kw·fan_in, fan_out) for ``inner``
  and back afterwards; leaves of ndim 2 and 3 are passed as they are.
  """

  def update_fn(updates, state, params=None):
    views = jax.tree.map(lambda u: u.reshape(matrix_view_shape(u.shape)), updates)
    views, state = inner.update(views, state, params)
    return jax.tree.map(lambda v, u: v.reshape(u.shape), views, updates), state

  return optax.GradientTransformation(inner.init, update_fn)


def shape_scale(scale: Optional[str], fan_in: int, fan_out: int) -> float:
  """The step multiplier of a (fan_in, fan_out) matrix update.

  ``"jordan"``: sqrt(max(1, fan_out / fan_in)), the reference Muon's
  sqrt(max(1, rows/cols)) for PyTorch's (out, in) layout; ``"moonlight"``:
  0.2·sqrt(max(fan_in, fan_out)), which gives an orthogonalized update the
  RMS of a typical AdamW update (Liu et al. 2025); ``None``: 1.
  """
  if scale is None:
    return 1.0
  if scale == "jordan":
    return math.sqrt(max(1.0, fan_out / fan_in))
  if scale == "moonlight":
    return 0.2 * math.sqrt(max(fan_in, fan_out))
  raise ValueError(f"scale must be one of {SCALES} or None, got {scale!r}")


def scale_by_matrix_shape(scale: Optional[str] = "jordan") -> optax.GradientTransformation:
  r"""Multiplies each matrix leaf (…, fan_in, fan_out) by ``shape_scale``.

  .. math:: u \leftarrow s(\text{fan\_in}, \text{fan\_out})\, u

  Args:
    scale: ``"jordan"``, ``"moonlight"`` or ``None`` (see ``shape_scale``).

  Returns:
    A stateless ``optax.GradientTransformation``; leaves with ndim < 2 pass
    through.
  """
  shape_scale(scale, 1, 1)  # validates

  def leaf(u):
    if u.ndim < 2:
      return u
    return (shape_scale(scale, u.shape[-2], u.shape[-1]) * u).astype(u.dtype)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(leaf, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
