"""Adan: Nesterov momentum estimated from gradient differences, and its proximal decay."""

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format
from gradtx.transforms.weight_decay import MaskOrFn, WeightDecayState, weight_decay_mask


class ScaleByAdanState(NamedTuple):
  """State of ``scale_by_adan``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: EMA of the gradients, :math:`m` (stored in ``mu_dtype``).
    mu_diff: EMA of the gradient differences, :math:`v` (``mu_dtype``).
    nu: EMA of the squared Nesterov gradients, :math:`n` (``nu_dtype``).
    previous_grads: the previous step's gradient (the parameter's dtype).
  """

  count: jax.Array
  mu: optax.Updates
  mu_diff: optax.Updates
  nu: optax.Updates
  previous_grads: optax.Updates


@_validate.checks_arguments
def scale_by_adan(
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adan's Nesterov moment ratio (the official step).

  With the gradient difference :math:`δ_t = g_t - g_{t-1}` (:math:`δ_1 = 0`),

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) δ_t,\\
    n_t = β_3 n_{t-1} + (1-β_3) |g_t + β_2 δ_t|^2,\quad
    u_t = \frac{m_t/(1-β_1^t) + β_2 v_t/(1-β_2^t)}{\sqrt{n_t/(1-β_3^t) + ε_{root}} + ε}

  the step of the authors' code (sail-sg/Adan ``adan.py``, ``_single_tensor_adan``):
  the β's are decays (the paper's β are their complements, 1 − 0.98 = 0.02
  ...), each moment is bias-corrected, and the first step's previous
  gradient is the gradient itself. Algorithm 1 of the paper has no bias
  correction. ``optax.scale_by_adan`` weighs the difference by
  :math:`1-β_2` (0.08) where the official code and the paper weigh it by
  :math:`β_2` (0.92, the paper's :math:`1-β_2`), in :math:`n_t` and in
  :math:`u_t`; that form is not reachable by arguments (how far apart the
  trajectories end depends on the problem: 30 steps of
  tests/transforms/test_adan.py's logistic problem, 1.1 relative in the
  parameters; 2% on another).

  Complex leaves use :math:`|·|^2` (one real :math:`n` per coordinate);
  pytorch_optimizer's ``Adan`` keeps one per real and imaginary part.
  With float moments a NaN gradient propagates into every moment (as in optax
  and torch); with ``"int8"`` moments a coordinate whose gradient is not
  finite gets a zero update, its moments restart from zero and its previous
  gradient is kept, as ``scale_by_adam`` does.

  Args:
    b1: decay of the gradient EMA, in [0, 1).
    b2: decay of the gradient-difference EMA (and the weight of the
      difference in the Nesterov gradient), in [0, 1).
    b3: decay of the squared Nesterov-gradient EMA, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    mu_dtype: storage of both first moments (of the gradients and of their
      differences), as ``scale_by_adam``'s ``mu_dtype``. The previous
      gradient stays in the parameter's dtype: it is a gradient, not a moment.
    nu_dtype: storage of :math:`n`, as ``scale_by_adam``'s ``nu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdanState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_adan()
    >>> u, _ = tx.update(jnp.array([2.0, -3.0]), tx.init(jnp.zeros(2)))
    >>> u.round(3)  # the first step is sign(g) up to eps
    Array([ 1., -1.], dtype=float32)

  Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for
  Faster Optimizing Deep Models", TPAMI 2024; github.com/sail-sg/Adan.
  """
  for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
    _validate.check_decay(name, value)
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)
  quantized = state_format.is_quantized(mu_format, nu_format)

  def init_fn(params):
    return ScaleByAdanState(
        count=jnp.zeros([], jnp.int32),
        mu=state_format.zeros_like_tree(params, mu_format, signed=True),
        mu_diff=state_format.zeros_like_tree(params, mu_format, signed=True),
        nu=state_format.zeros_like_tree(params, nu_format, signed=False, real=True),
        previous_grads=state_format.zeros_like_tree(params, None, signed=True),
    )

  def update_fn(updates, state, params=None):
    del params
    for field in (state.mu, state.nu, state.previous_grads):
      _validate.check_matching_shapes(updates, field, "scale_by_adan", of="state")
    first = state.count == 0
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)

    def leaf(g, m, v, n, g_prev, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      g_ = g.astype(dtype)
      # The official code sets the previous gradient to g on the first step.
      diff = jnp.where(first, jnp.zeros_like(g_), g_ - g_prev.astype(dtype))
      m_new = b1 * state_format.load(m, dtype) + (1 - b1) * g_
      v_new = b2 * state_format.load(v, dtype) + (1 - b2) * diff
      n_new = b3 * state_format.load(n, real) + (1 - b3) * _tree.abs_sq(g_ + b2 * diff)
      if not quantized:  # the step from the moments as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
        v_stored, v_new = state_format.stored_and_used(v_new, v, mu_format, seed, stream=1)
        n_stored, n_new = state_format.stored_and_used(n_new, n, nu_format, seed, stream=2)
      numerator = (m_new / _tree.bias_correction(b1, count, dtype)
                   + b2 * v_new / _tree.bias_correction(b2, count, dtype))
      n_hat = n_new / _tree.bias_correction(b3, count, dtype)
      u = numerator / (_tree.root(n_hat + eps_root) + eps)
      g_kept = g
      if quantized:
        u, m_new, v_new, n_new = state_format.reset_non_finite(g_, u, m_new, v_new, n_new)
        m_stored = state_format.store(m_new, m, mu_format, seed, stream=0)
        v_stored = state_format.store(v_new, v, mu_format, seed, stream=1)
        n_stored = state_format.store(n_new, n, nu_format, seed, stream=2)
        g_kept = jnp.where(jnp.isfinite(g_ * g_), g, g_prev.astype(g.dtype))
      return u.astype(g.dtype), m_stored, v_stored, n_stored, g_kept.astype(g_prev.dtype)

    u, mu, mu_diff, nu, previous = _tree.map_leaves(
        leaf, 5, updates, state.mu, state.mu_diff, state.nu, state.previous_grads, seeds,
        once_per_shape=True)
    return u, ScaleByAdanState(count, mu, mu_diff, nu, previous)

  return optax.GradientTransformation(init_fn, update_fn)


@_validate.checks_arguments
def proximal_weight_decay(
    *,
    learning_rate: Union[float, optax.Schedule],
    weight_decay: Union[float, optax.Schedule],
    mask: MaskOrFn = None,
    cautious_weight_decay: bool = False,
) -> optax.GradientTransformation:
  r"""The learning-rate step followed by the proximal step of an L2 penalty.

  .. math:: p \leftarrow \frac{p - η_t u}{1 + η_t λ_t},\quad\text{i.e.}\quad
    u \leftarrow -\frac{η_t (u + λ_t p)}{1 + η_t λ_t}

  on the decayed coordinates and :math:`u \leftarrow -η_t u` elsewhere: the
  proximal operator of :math:`\tfrac{λ}{2}\|p\|^2` after the step, Adan's
  weight decay (Algorithm 1 of the paper; the official code's default
  ``no_prox=False``). It replaces ``decoupled_weight_decay`` and
  ``scale_by_learning_rate`` at the end of a chain; the two agree to first
  order in :math:`η λ` (``decoupled_weight_decay`` is the official code's
  ``no_prox=True`` and ``optax.adan``'s decay). With a zero update it
  shrinks :math:`p` by :math:`1/(1 + ηλ)`. The step is not affine in
  :math:`η` where the decay is on. Cautious weight decay (Chen et al. 2025)
  decays, as ``decoupled_weight_decay`` does, only where :math:`u \odot p
  \ge 0` (:math:`\operatorname{Re}(\bar u p)` for complex leaves).

  Args:
    learning_rate: η, a non-negative number or a schedule of the step count.
    weight_decay: λ, a non-negative number or a schedule of the step count.
    mask: which leaves get the decay (``optax.masked`` semantics); the
      others get the plain step :math:`-η_t u`.
    cautious_weight_decay: decay only where ``u * p >= 0``.

  Returns:
    An ``optax.GradientTransformation`` with state ``WeightDecayState`` when
    η or λ is a schedule, else ``optax.EmptyState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.proximal_weight_decay(learning_rate=0.5, weight_decay=1.0)
    >>> p = jnp.array([3.0])
    >>> u, _ = tx.update(jnp.array([0.0]), tx.init(p), p)
    >>> p + u  # 3 / (1 + 0.5)
    Array([2.], dtype=float32)

  Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for
  Faster Optimizing Deep Models", TPAMI 2024 (Algorithm 1, line 7).
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)
  counts = callable(learning_rate) or callable(weight_decay)

  def init_fn(params):
    del params
    return WeightDecayState(jnp.zeros([], jnp.int32)) if counts else optax.EmptyState()

  def update_fn(updates, state, params=None):
    count = state.count if counts else None
    eta = _tree.resolve_schedule(learning_rate, count)
    if _validate.is_static_zero(weight_decay):
      return jax.tree.map(lambda u: (-eta * u).astype(u.dtype), updates), _tree.counted(state)
    if params is None:
      raise ValueError(
          "proximal_weight_decay needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "proximal_weight_decay")
    decay = _tree.resolve_schedule(weight_decay, count)
    decayed = weight_decay_mask(mask, params)

    def leaf(u, p, on):
      dtype = _tree.compute_dtype(u)
      u_, p_ = u.astype(dtype), p.astype(dtype)
      step = -eta * u_
      if on:
        proximal = -eta * (u_ + decay * p_) / (1 + eta * decay)
        if cautious_weight_decay:
          agrees = (jnp.real(jnp.conj(u_) * p_) if _tree.is_complex(u_) else u_ * p_) >= 0
          proximal = jnp.where(agrees, proximal, step)
        step = proximal
      return step.astype(u.dtype)

    updates = jax.tree.map(leaf, updates, params, decayed)
    return updates, _tree.counted(state)

  return optax.GradientTransformation(init_fn, update_fn)
