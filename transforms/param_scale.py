"""Per-leaf root mean squares: steps scaled by the parameter's RMS, or clipped by
the update's own (Tiger's per-tensor step, Adafactor's relative step and clipping)."""

import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate


def scale_by_param_rms(
    *, min_ndim: int = 2, min_scale: float = 0.0
) -> optax.GradientTransformation:
  r"""Multiplies each leaf's update by the root mean square of its parameter.

  .. math:: u \leftarrow \max\big(\operatorname{RMS}(p), s\big)\, u,\qquad
    \operatorname{RMS}(p) = \sqrt{\tfrac{1}{n}\textstyle\sum_i |p_i|^2}

  for leaves with at least ``min_ndim`` dimensions; other leaves pass
  through unchanged. With the defaults (s = 0, matrices only: biases and norm
  scales may start at exactly 0) this is the per-tensor adaptive learning
  rate of the Tiger reference code, which makes a sign update's relative size
  independent of the weight's scale; the reference also halves the step of
  biases/norms and uses a per-row RMS for embeddings, by variable name, which
  gradtx leaves to ``optax.multi_transform``. With ``min_ndim=0`` and
  s = 10⁻³ it is Adafactor's relative step (``optax.scale_by_param_block_rms``,
  whose forward values it gives with one reduction per leaf instead of two).

  Args:
    min_ndim: leaves with fewer dimensions are not rescaled, an integer >= 0.
    min_scale: s, the floor of the factor, >= 0.

  Returns:
    A stateless ``optax.GradientTransformation`` that needs ``params``.

  References: Su Jianlin, github.com/bojone/tiger (``tiger.py``); Shazeer &
  Stern, "Adafactor", ICML 2018 (relative step sizes).
  """
  min_ndim = _validate.check_integer("min_ndim", min_ndim, 0)
  _validate.check_non_negative("min_scale", min_scale)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_param_rms needs params: update(u, state, params)")

    def leaf(u, p):
      if jnp.ndim(p) < min_ndim:
        return (u,)
      dtype = _tree.compute_dtype(u)
      scale = jnp.maximum(_tree.rms(p.astype(dtype)), min_scale)
      return ((scale * u.astype(dtype)).astype(u.dtype),)

    (out,) = _tree.map_leaves(leaf, 1, updates, params, once_per_shape=True)
    return out, state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def clip_by_block_rms(clipping_threshold: float) -> optax.GradientTransformation:
  r"""Scales each leaf's update down to a root mean square of at most d.

  .. math:: u \leftarrow \frac{u}{\max\big(1, \operatorname{RMS}(u)/d\big)}

  (d = ``clipping_threshold``, optax's ``threshold``; the "block" is the
  whole leaf), Adafactor's update clipping: ``optax.clip_by_block_rms``'s
  values, traced once per leaf shape.
  A zero update stays zero; a non-finite one stays non-finite.

  Args:
    clipping_threshold: d, > 0.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
  Sublinear Memory Cost", ICML 2018 (update clipping, section 6).
  """
  _validate.check_in_range(
      "clipping_threshold", clipping_threshold, 0.0, np.inf, low_inclusive=False)

  def update_fn(updates, state, params=None):
    del params

    def leaf(u):
      clipped = _tree.clipped_to_rms(u.astype(_tree.compute_dtype(u)), clipping_threshold)
      return (clipped.astype(u.dtype),)

    (out,) = _tree.map_leaves(leaf, 1, updates, once_per_shape=True)
    return out, state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
