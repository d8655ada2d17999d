"""Cautious updates: keep only the coordinates where the update agrees with the gradient."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate

# The reference code's floor on the kept fraction: a leaf where (almost)
# every coordinate disagrees is scaled by at most 1000, not divided by 0.
_MIN_KEPT_FRACTION = 1e-3


class CautiousState(NamedTuple):
  """State of ``cautious``: the wrapped transform's state (it keeps none of its own)."""

  inner_state: optax.OptState


def agreement(u: jax.Array, g: jax.Array) -> jax.Array:
  """Re(conj(g)·u), coordinate-wise: its sign says whether u and g agree."""
  if jnp.iscomplexobj(u) or jnp.iscomplexobj(g):
    return jnp.real(jnp.conj(g) * u)
  return g * u


def _cautious_leaf(u, g):
  dtype = _tree.compute_dtype(u)
  u_ = u.astype(dtype)
  product = agreement(u_, g.astype(dtype))
  kept = (product > 0).astype(_tree.real_dtype(dtype))
  scale = 1 / jnp.maximum(jnp.mean(kept), _MIN_KEPT_FRACTION)
  masked = jnp.where(product > 0, u_ * scale, 0)
  # Not zeroed where u or g is NaN: the failure stays visible.
  return jnp.where(jnp.isnan(product), jnp.nan, masked).astype(u.dtype),


def cautious(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  r"""Zeroes the coordinates where ``inner``'s update disagrees in sign with the gradient.

  With g the incoming gradient and u = inner(g), per leaf of n coordinates:

  .. math::
    φ = \mathbb{1}[u \odot g > 0],\qquad
    u \leftarrow \frac{u \odot φ}{\max(\tfrac{1}{n}\sum_i φ_i,\ 10^{-3})}

  so the leaf's mean step size is kept where only a part of it survives
  (Liang et al.'s reference code, ``c_adamw.py``: ``mask /
  mask.mean().clamp(min=1e-3)``). For complex leaves the agreement is
  :math:`\operatorname{Re}(\bar g\, u) > 0`. Where u or g is NaN the update
  is NaN (the references would zero it, hiding the failure; as elsewhere in
  gradtx, ``optax.apply_if_finite`` skips such steps).

  Sign convention: u must point along the gradient, as a preconditioner's
  output does *before* ``gt.scale_by_learning_rate`` negates it. So wrap the
  direction, not a whole optimizer, and keep decoupled weight decay outside
  (the decay is not a data direction, and the references add it after the
  mask)::

    optax.chain(gt.cautious(gt.scale_by_adam()),
                gt.decoupled_weight_decay(0.1),
                gt.scale_by_learning_rate(1e-3))

  is C-AdamW, but for where Adam's ε sits: ``c_adamw.py`` divides by
  √v + ε and scales the step by √(1−β₂ᵗ)/(1−β₁ᵗ) (Hugging Face's form: an
  ε/√(1−β₂ᵗ) on √v̂), ``gt.scale_by_adam`` by √v̂ + ε (torch's); the two
  differ by 3e-5 of a 12-step move at ε = 1e-8, and agree to round-off with
  ε placed alike. Wrapping a complete optimizer (whose updates are −η·u)
  would mask every coordinate that descends.

  Args:
    inner: the transform whose updates are masked (e.g. ``gt.scale_by_adam()``,
      ``gt.ema(0.9)``, ``gt.scale_by_lion()``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``CautiousState``;
    its updates have the inner updates' dtypes. Keyword arguments of
    ``update`` go to ``inner``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.cautious(gt.momentum(0.5))
    >>> state = tx.init(jnp.zeros(4))
    >>> _, state = tx.update(jnp.ones(4), state)
    >>> u, _ = tx.update(jnp.array([1.0, 1.0, -0.25, -0.25]), state)
    >>> u  # momentum (1.5, 1.5, 0.25, 0.25): two kept, rescaled by 1/0.5
    Array([3., 3., 0., 0.], dtype=float32)

  Reference: Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving
  Training with One Line of Code", arXiv 2411.16085, 2024 (github.com/
  kyleliang919/C-Optim). Levanter's ``scale_by_cautious`` divides by
  mean + 1e-8 instead of clamping; heavyball's ``caution`` compares sign bits
  (a +0 gradient agrees with a positive u) and floors the kept count at one
  coordinate. The three agree wherever g·u ≠ 0 and more than 0.1% is kept.
  Followed by ``decoupled_weight_decay(..., cautious_weight_decay=True)``, a
  masked (zero) coordinate is decayed in full, as the record's
  ``(u * p) >= 0`` says; heavyball's sign bits decay it only where p >= 0.
  """
  _validate.check_transformation("inner", inner)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return CautiousState(inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    directions, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args)
    (masked,) = _tree.map_leaves(_cautious_leaf, 1, directions, updates, once_per_shape=True)
    return masked, CautiousState(inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
