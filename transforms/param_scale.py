"""Step sizes that follow the parameter's own scale: Tiger's per-tensor RMS."""

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree


def scale_by_param_rms(*, min_ndim: int = 2) -> optax.GradientTransformation:
  r"""Multiplies each leaf's update by the root mean square of its parameter.

  .. math:: u \leftarrow \operatorname{RMS}(p)\, u,\qquad
    \operatorname{RMS}(p) = \sqrt{\tfrac{1}{n}\textstyle\sum_i p_i^2}

  for leaves with at least ``min_ndim`` dimensions; other leaves (biases and
  norm scales, which may start at exactly 0) pass through unchanged. This is
  the per-tensor adaptive learning rate of the Tiger reference code, which
  makes a sign update's relative size independent of the weight's scale. The
  reference also halves the step of biases/norms and uses a per-row RMS for
  embeddings, by variable name; gradtx leaves that to ``optax.multi_transform``.

  Args:
    min_ndim: leaves with fewer dimensions are not rescaled.

  Returns:
    A stateless ``optax.GradientTransformation`` that needs ``params``.

  Reference: Su Jianlin, github.com/bojone/tiger (``tiger.py``).
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_param_rms needs params: update(u, state, params)")

    def leaf(u, p):
      if p.ndim < min_ndim:
        return u
      dtype = _tree.compute_dtype(u)
      rms = jnp.sqrt(jnp.mean(jnp.square(p.astype(dtype))))
      return (rms * u.astype(dtype)).astype(u.dtype)

    return jax.tree.map(leaf, updates, params), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
