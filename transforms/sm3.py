"""SM3: AdaGrad with one accumulator per row, column (per axis) of each tensor."""

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import routing as _routing
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScaleBySm3State(NamedTuple):
  """State of ``scale_by_sm3``.

  For a leaf with two or more axes ``axis_accumulators`` holds one vector
  per axis (the k-th of length ``shape[k]``) and ``sum_of_squares`` is
  ``optax.MaskedNode()``; a vector or scalar keeps the full
  ``sum_of_squares`` (AdaGrad's, shaped like it) and ``None`` in
  ``axis_accumulators``. Both are in the parameter's real dtype, at least
  float32.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    axis_accumulators: per-axis accumulators :math:`μ` of leaves with >= 2 axes.
    sum_of_squares: the full accumulator of leaves with fewer axes.
    mu: momentum, an EMA of the preconditioned gradients (``mu_dtype``);
      ``None`` with ``b1=0``.
  """

  count: jax.Array
  axis_accumulators: optax.Updates
  sum_of_squares: optax.Updates
  mu: Optional[optax.Updates]


def _other_axes(axis: int, ndim: int) -> tuple:
  return tuple(a for a in range(ndim) if a != axis)


@_validate.checks_arguments
def scale_by_sm3(
    b1: float = 0.9,
    *,
    eps_root: float = 1e-30,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Divides updates by SM3-II's per-axis cover of the summed squared gradients.

  For a leaf with axes :math:`k = 1..K` and accumulators :math:`μ^{(k)}` (one
  number per index of axis k, zeros at first), SM3-II (Anil et al. 2019,
  Algorithm 2, its covers the rows, columns, ... of each tensor) takes

  .. math::
    ν_t(i) = \min_k μ^{(k)}_{t-1}(i_k) + |g_t(i)|^2,\quad
    μ^{(k)}_t(j) = \max_{i:\, i_k = j} ν_t(i),\quad
    u_t = \frac{g_t}{\sqrt{ν_t + ε_{root}}}

  (0/0 = 0, as in the paper), and with ``b1`` the momentum of the paper's
  experiments and of the official code, :math:`m_t = β_1 m_{t-1} + (1-β_1)
  u_t`, output :math:`m_t`. A vector or scalar keeps AdaGrad's full sum
  :math:`ν_t = ν_{t-1} + |g_t|^2`. :math:`ν_t` upper-bounds AdaGrad's sum of
  squares, so steps are never larger than AdaGrad's; the state costs the
  sum of the axes' lengths instead of their product.

  This is the official TensorFlow ``SM3Optimizer``
  (google-research/sm3/sm3.py; ``ε_root`` = 1e-30 there) and
  pytorch_optimizer's ``SM3`` at its ``beta=0``. ``optax.scale_by_sm3``
  follows the same rule and momentum with ``eps`` = 1e-8 inside the root
  (``eps_root=1e-8`` here), and fails on scalar leaves; its ``b2 < 1``
  (and pytorch_optimizer's ``beta > 0``) replace the sum by an EMA, which is
  not in the paper and not implemented. Complex leaves use :math:`|g|^2` (the
  references refuse them).

  A NaN gradient spreads through the max and min to every coordinate of its
  leaf (float states, as in optax); with ``mu_dtype="int8"`` a non-finite
  coordinate instead gets a zero update, its momentum restarts from zero and
  it adds nothing to the accumulators (as ``scale_by_adam``'s int8 moments).

  Args:
    b1: decay of the momentum, in [0, 1); a plain (untraced) 0 keeps none.
    eps_root: added inside the square root, >= 0.
    mu_dtype: storage of the momentum, as ``scale_by_adam``'s ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleBySm3State``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_sm3(b1=0.0)
    >>> state = tx.init(jnp.zeros((2, 3)))
    >>> _, state = tx.update(jnp.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]), state)
    >>> state.axis_accumulators[0], state.axis_accumulators[1]  # row and column maxima
    (Array([4., 9.], dtype=float32), Array([1., 4., 9.], dtype=float32))

  Reference: Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive
  Optimization", NeurIPS 2019 (SM3-II); github.com/google-research/
  google-research/tree/master/sm3.
  """
  _validate.check_decay("b1", b1)
  _validate.check_non_negative("eps_root", eps_root)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  quantized = state_format.is_quantized(mu_format)
  keeps_mu = not _validate.is_static_zero(b1)

  def statistics_dtype(p):
    return _tree.real_dtype(_tree.compute_dtype(p))

  def init_fn(params):
    def per_axis(p):
      shape, dtype = jnp.shape(p), statistics_dtype(p)
      if len(shape) < 2:
        return (None,)
      return (tuple(jnp.zeros((n,), dtype) for n in shape),)

    def role(p):  # gt.describe's branch: the covers the accumulators keep
      shape = jnp.shape(p)
      return None if len(shape) < 2 else "per-axis " + "+".join(str(n) for n in shape)

    _routing.report_per_leaf(params, "roles", [role(p) for p in jax.tree.leaves(params)])
    (accumulators,) = _tree.map_statistics(per_axis, 1, params)
    return ScaleBySm3State(
        count=jnp.zeros([], jnp.int32),
        axis_accumulators=accumulators,
        sum_of_squares=_tree.zeros_where(
            params, lambda _, p: jnp.ndim(p) < 2, statistics_dtype),
        mu=(state_format.zeros_like_tree(params, mu_format, signed=True)
            if keeps_mu else None),
    )

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.mu, "scale_by_sm3", of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format)

    def leaf(g, accumulators, s, m, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      g_ = g.astype(dtype)
      g2 = _tree.abs_sq(g_)
      if quantized:  # a non-finite coordinate adds nothing (and steps 0)
        g2 = jnp.where(jnp.isfinite(g2), g2, 0)
      if accumulators is None:
        nu = s.astype(real) + g2
        s, nu = state_format.stored_and_used(nu, s, None)
      else:
        _check_accumulators(g.shape, accumulators)
        expanded = [jnp.expand_dims(a.astype(real), _other_axes(k, g.ndim))
                    for k, a in enumerate(accumulators)]
        nu = functools.reduce(jnp.minimum, expanded) + g2
        # initial=0 (ν >= 0): an empty axis gives zeros, not max()'s error.
        # Each accumulator keeps the sharding init gave it (explicit meshes).
        accumulators = tuple(
            state_format.stored_and_used(
                jnp.max(nu, axis=_other_axes(k, g.ndim), initial=0.0), a, None)[0]
            for k, a in enumerate(accumulators))
      # The paper's 0/0 = 0: a coordinate that never had a gradient stays put.
      # (ν = 0 only where g = 0; a NaN ν propagates.)
      zero = nu == 0
      u = jnp.where(zero, 0, g_ * jax.lax.rsqrt(jnp.where(zero, 1, nu) + eps_root))
      if quantized:
        (u,) = state_format.reset_non_finite(g_, u)
      m_stored = None
      if keeps_mu:
        m_new = b1 * state_format.load(m, dtype) + (1 - b1) * u
        if quantized:
          (m_new,) = state_format.reset_non_finite(g_, m_new)
        m_stored, u = state_format.stored_and_used(m_new, m, mu_format, seed)
      return u.astype(g.dtype), accumulators, s, m_stored

    u, accumulators, sums, mu = _tree.map_leaves(
        leaf, 4, updates, state.axis_accumulators, state.sum_of_squares, state.mu, seeds,
        once_per_shape=True)
    return u, ScaleBySm3State(count, accumulators, sums, mu if keeps_mu else None)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_accumulators(shape: tuple, accumulators: tuple) -> None:
  lengths = tuple(a.shape[0] for a in accumulators)
  if lengths != tuple(shape):
    raise ValueError(
        f"scale_by_sm3: a gradient of shape {tuple(shape)} met accumulators for shape"
        f" {lengths}: is the state this optimizer's own, for these parameters?")
