"""MARS: a variance-reduced gradient fed to Adam's moments.

MARS (Yuan et al. 2024) replaces the gradient by a scaled recursive-momentum
estimate, c = g + γ·β₁/(1−β₁)·(g − g_prev), clipped per leaf to unit norm,
and preconditions it as Adam does. In the approximate form g_prev is the
previous step's gradient, kept in the state; in the exact form it is the
gradient at the previous step's parameters on this step's batch, which needs
one more gradient evaluation per step (``gradients_at_previous_point``).
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule
from gradtx.transforms.second_moment import scale_by_adam


class MarsCorrectionState(NamedTuple):
  """State of the MARS correction in ``scale_by_mars``.

  Attributes:
    previous_grads: the previous step's gradient (zeros before the first
      step); ``None`` in the exact form, which is given it at each step.
  """

  previous_grads: Optional[optax.Updates]


def _corrected(g, previous, coefficient, batch):
  """c = g + k (g − g_prev), divided by ‖c‖_F where that exceeds 1, the norm
  taken per matrix (over all axes but the ``batch`` ones)."""
  dtype = _tree.compute_dtype(g)
  g_ = g.astype(dtype)
  c = g_ + coefficient * (g_ - previous.astype(dtype))
  if batch:
    norm = _tree.norms(c, [a for a in range(c.ndim) if a not in batch])
  else:
    norm = _tree.norm(c)
  return (c / jnp.maximum(norm, 1)).astype(g.dtype)


def _mars_correction(b1, gamma, exact: bool,
                     matrix_view) -> optax.GradientTransformationExtraArgs:
  def init_fn(params):
    if exact:
      return MarsCorrectionState(None)
    return MarsCorrectionState(optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None, *, previous_grads=None, **extra_args):
    del params, extra_args
    if exact and previous_grads is None:
      raise ValueError(
          "scale_by_mars(exact=True) needs the gradient at the previous step's"
          " parameters: wrap the chain in gt.gradients_at_previous_point and call"
          " update(grads, state, params, grad_fn=...)")
    previous = previous_grads if exact else state.previous_grads
    _validate.check_matching_shapes(
        updates, previous, "scale_by_mars", of="previous gradient" if exact else "state")
    coefficient = gamma * b1 / (1 - b1)
    batches = iter(_matrix_view.batch_axes_of(updates, matrix_view))
    c = jax.tree.map(lambda g, p: _corrected(g, p, coefficient, next(batches)),
                     updates, previous)
    if exact:
      return c, MarsCorrectionState(None)
    kept = jax.tree.map(lambda g, s: g.astype(s.dtype), updates, state.previous_grads)
    return c, MarsCorrectionState(kept)

  return keeps_init_names(optax.GradientTransformationExtraArgs(init_fn, update_fn))


@_validate.checks_arguments
def scale_by_mars(
    *,
    b1: float = 0.95,
    b2: float = 0.99,
    eps: float = 1e-8,
    gamma: float = 0.025,
    exact: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by MARS-AdamW: Adam's moments of a variance-reduced gradient.

  .. math::
    c_t = g_t + γ\frac{β_1}{1-β_1}\left(g_t - \tilde g_{t-1}\right),\quad
    c_t \leftarrow \frac{c_t}{\max(1, \lVert c_t\rVert_F)},\\
    m_t = β_1 m_{t-1} + (1-β_1) c_t,\quad v_t = β_2 v_{t-1} + (1-β_2) c_t^2,\quad
    u_t = \frac{m_t/(1-β_1^t)}{\sqrt{v_t/(1-β_2^t)} + ε}

  with the norm taken per leaf, as in the official code (``torch.norm`` per
  parameter), and per matrix of a stack (a scanned layer, an expert: the
  batch axes of ``matrix_view``'s view; Levanter's ``scale_by_mars`` clips the whole tree's norm at
  ``max_grad_norm`` instead). Approximate MARS (the default, the paper's
  MARS-approx): :math:`\tilde g_{t-1} = g_{t-1}`, the previous gradient,
  kept in the state. Exact MARS (``exact=True``): :math:`\tilde g_{t-1} =
  ∇f(x_{t-1}, ξ_t)`, the gradient at the previous parameters on this step's
  batch, which ``update`` then takes as ``previous_grads=``; wrap the chain
  in ``gt.gradients_at_previous_point`` to compute it from ``grad_fn``. In
  both forms :math:`\tilde g_0 = 0`, as the official code's ``last_grad``
  starts at zero: the first step's c is :math:`(1 + γβ_1/(1-β_1))g_1`
  before the clip. The Adam part is ``gt.scale_by_adam``.

  Args:
    b1: β₁, decay of the first moment and the correction's scale, in [0, 1).
    b2: β₂, decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    gamma: γ, the strength of the gradient correction, >= 0 (0: Adam on the
      gradient clipped to unit norm per leaf).
    exact: take :math:`\tilde g_{t-1}` from ``update(..., previous_grads=)``
      instead of the state.
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the second moment (``gt.scale_by_adam``).
    matrix_view: the matrix-view rule whose batch axes (the layers or
      experts of a stack) the clip's norm is taken per (see
      ``gt.flax_matrix_view``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (a chain) with state
    ``(MarsCorrectionState, ScaleByAdamState)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_mars()
    >>> u, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
    >>> u.round(3)  # the first step is sign(c) up to eps
    Array([ 1., -1.], dtype=float32)

  Reference: Yuan et al., "MARS: Unleashing the Power of Variance Reduction
  for Training Large Models", arXiv 2411.10438, 2024 (Algorithm 1;
  AGI-Arena/MARS ``mars.py``, ``mars_type="mars-adamw"``).
  """
  _validate.check_decay("b1", b1)
  _validate.check_non_negative("gamma", gamma)
  return optax.chain(
      _mars_correction(b1, gamma, exact, matrix_view),
      scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
  )


class PreviousPointState(NamedTuple):
  """State of ``gradients_at_previous_point``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    previous_params: the parameters of the previous step (the initial ones
      before the first).
    inner_state: the wrapped transformation's state.
  """

  count: jax.Array
  previous_params: optax.Params
  inner_state: optax.OptState


def gradients_at_previous_point(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  r"""Gives ``inner`` the gradient at the previous step's parameters, ``previous_grads=``.

  .. math::
    \tilde g_{t-1} = \operatorname{grad\_fn}(x_{t-1})
    \;(\tilde g_0 = 0),\qquad
    u = \operatorname{inner}(g_t;\, \text{previous\_grads}=\tilde g_{t-1})

  ``update`` takes ``params`` and ``grad_fn=``, a traceable function
  params → gradient tree on the current batch (as ``go.sam``'s), and calls
  it once per step on the parameters the previous step was given; this is
  exact MARS's :math:`∇f(x_{t-1}, ξ_t)` (two gradient evaluations per step).
  The first step passes zeros, as the official MARS code does. Further
  keyword arguments go to ``inner``; inside an ``optax.multi_transform``
  built with ``mask_compatible_extra_args=True`` each part receives its own
  leaves of ``previous_grads``.

  Args:
    inner: the transformation that takes ``previous_grads=`` (e.g. a chain
      with ``gt.scale_by_mars(exact=True)``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    ``PreviousPointState``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from gradtx import transforms as gt
    >>> grad_fn = jax.grad(lambda w: jnp.sum(w ** 2))
    >>> tx = gt.gradients_at_previous_point(gt.scale_by_mars(exact=True))
    >>> w = jnp.array([1.0, -2.0])
    >>> u, state = tx.update(grad_fn(w), tx.init(w), w, grad_fn=grad_fn)
    >>> u.round(3)
    Array([ 1., -1.], dtype=float32)

  Reference: Yuan et al., "MARS: Unleashing the Power of Variance Reduction
  for Training Large Models", arXiv 2411.10438, 2024 (MARS-exact;
  AGI-Arena/MARS ``train_mars.py``, ``update_previous_grad``).
  """
  _validate.check_transformation("inner", inner)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    # Its own buffers, for donation; zeros for abstract leaves, as every init.
    copy = jax.tree.map(lambda p: jnp.zeros_like(p)  # sharded like p
                        if isinstance(p, jax.ShapeDtypeStruct) else jnp.array(p), params)
    return PreviousPointState(jnp.zeros([], jnp.int32), copy, inner.init(params))

  def update_fn(updates, state, params=None, *,
                grad_fn: Optional[Callable[[Any], Any]] = None, **extra_args):
    if params is None or grad_fn is None:
      raise ValueError(
          "gradients_at_previous_point's update needs params and grad_fn"
          " (params -> gradients), as in tx.update(grads, state, params,"
          f" grad_fn=...); got params={'None' if params is None else 'given'},"
          f" grad_fn={grad_fn!r}")
    first = state.count == 0
    previous_grads = jax.tree.map(
        lambda g, u: jnp.where(first, jnp.zeros_like(u), g.astype(u.dtype)),
        grad_fn(state.previous_params), updates)
    updates, inner_state = inner.update(
        updates, state.inner_state, params, previous_grads=previous_grads, **extra_args)
    return updates, PreviousPointState(
        optax.safe_increment(state.count), params, inner_state)

  return keeps_init_names(optax.GradientTransformationExtraArgs(init_fn, update_fn))
