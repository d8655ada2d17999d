"""NovoGrad's normalization: each layer's gradient divided by the running RMS of its norm."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate


class ScaleByNovogradState(NamedTuple):
  """State of ``scale_by_novograd``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    nu: per leaf, one scalar: the EMA of the squared gradient norm
      :math:`\\lVert g\\rVert^2` (float32, or float64 for float64 leaves).
  """

  count: jax.Array
  nu: optax.Updates


def scale_by_novograd(
    *,
    b2: float = 0.25,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformation:
  r"""Divides each leaf's update by the running RMS of its gradient norm.

  .. math::
    v_1 = \lVert g_1\rVert^2,\quad
    v_t = β_2 v_{t-1} + (1-β_2)\lVert g_t\rVert^2,\quad
    u_t = \frac{g_t}{\sqrt{v_t + ε_{root}} + ε}

  with the Frobenius norm over the whole leaf: a leaf is a layer, as in
  the paper and ``optax.scale_by_novograd``; :math:`v` is one scalar per
  leaf, so the state costs nothing next to Adam's. This is the second-moment
  half of NovoGrad (Ginsburg et al. 2019, Algorithm 1): ``go.novograd``
  follows it with the weight decay and the momentum
  :math:`m_t = β_1 m_{t-1} + (u_t + λ w_t)` (``gt.decoupled_weight_decay``,
  ``gt.momentum``). ``optax.scale_by_novograd`` takes those two steps inside
  (its ``b1`` and ``weight_decay``); its arguments here are ``b2``, ``eps``
  and ``eps_root`` with the same meanings and defaults. The first step sets
  :math:`v_1 = \lVert g_1\rVert^2` (no bias from :math:`v_0 = 0`, nothing to
  correct), as in the paper, optax, pytorch_optimizer and apex (OpenSeq2Seq
  tests :math:`v = 0` instead of the step count).

  A complex leaf uses :math:`\lVert g\rVert^2 = \sum |g_i|^2`. A NaN or
  ±inf gradient makes :math:`v` of its leaf non-finite, and the whole leaf's
  update NaN from then on (a ±inf norm would otherwise zero the leaf's other
  coordinates silently); with an int8 momentum after it (``go.novograd(...,
  mu_dtype="int8")``) the int8 guard turns those NaN into zero steps: the leaf
  stops moving for good, with finite parameters.

  Args:
    b2: β₂, the decay of the squared-norm average, in [0, 1).
    eps: ε, added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByNovogradState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_novograd()
    >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
    >>> u["w"]  # g / ‖g‖ on the first step
    Array([0.6, 0.8], dtype=float32)

  Reference: Ginsburg et al., "Stochastic Gradient Methods with Layer-wise
  Adaptive Moments for Training of Deep Networks", 2019 (arXiv:1905.11286).
  """
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)

  def init_fn(params):
    (nu,) = _tree.map_statistics(
        lambda p: (jnp.zeros([], _tree.real_dtype(_tree.compute_dtype(p))),), 1, params)
    return ScaleByNovogradState(jnp.zeros([], jnp.int32), nu)

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, None, "scale_by_novograd")
    count = optax.safe_increment(state.count)

    def leaf(g, v):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      g_ = g.astype(dtype)
      norm_sq = _tree.sum_squares(g_).astype(real)
      averaged = (jnp.asarray(b2, real) * v.astype(real)
                  + jnp.asarray(1 - b2, real) * norm_sq)
      v_new = jnp.where(count == 1, norm_sq, averaged)
      denominator = jnp.where(
          jnp.isfinite(v_new), _tree.root(v_new + eps_root) + eps, jnp.nan)
      return (g_ / denominator).astype(g.dtype), v_new.astype(v.dtype)

    u, nu = _tree.map_leaves(leaf, 2, updates, state.nu, once_per_shape=True)
    return u, ScaleByNovogradState(count, nu)

  return optax.GradientTransformation(init_fn, update_fn)
