"""Adam's second-moment variants: AdaMax, RAdam, Yogi and ADOPT.

Each keeps Adam's two element-wise moments and changes what the second one
is or how it enters the step: AdaMax's infinity norm, RAdam's rectified
variance, Yogi's additive update, ADOPT's normalization by the previous
second moment. They share one per-leaf skeleton (``_moment_step``): load the
moments, update them in at least float32, store them in ``mu_dtype`` /
``nu_dtype`` and compute the step from the moments as stored.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.storage import state_format


class ScaleByAdamaxState(NamedTuple):
  """State of ``scale_by_adamax``: the step count, the first moment ``mu``
  and ``nu``, the exponentially weighted infinity norm of the gradients."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


class ScaleByRadamState(NamedTuple):
  """State of ``scale_by_radam``: the step count, the first moment ``mu``
  and ``nu``, the EMA of the squared gradients."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


class ScaleByYogiState(NamedTuple):
  """State of ``scale_by_yogi``: the step count, the first moment ``mu``
  and ``nu``, Yogi's additively updated second moment."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


class ScaleByAdoptState(NamedTuple):
  """State of ``scale_by_adopt``: the step count, ``mu``, the EMA of the
  normalized (and clipped) gradients, and ``nu``, the EMA of the squared
  gradients."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _decays(b1, b2, real):
  """(b1, 1 − b1, b2, 1 − b2) in ``real``, 1 − b formed before the cast
  (1 − float32(0.999) is off by 1e-5)."""
  pairs = []
  for b in (b1, b2):
    if isinstance(b, (int, float)):
      pairs += [jnp.asarray(b, real), jnp.asarray(1 - b, real)]
    else:
      pairs += [jnp.asarray(b, real), 1 - jnp.asarray(b, real)]
  return pairs


def _init(state_cls, mu_format, nu_format, nu_value=0.0):
  def init_fn(params):
    return state_cls(
        jnp.zeros([], jnp.int32),
        state_format.zeros_like_tree(params, mu_format, signed=True),
        state_format.full_like_tree(params, nu_value, nu_format, signed=False, real=True))
  return init_fn


def _moment_step(name: str, state_cls, mu_format, nu_format,
                 moments: Callable, direction: Callable) -> Callable:
  """An ``update_fn`` over the two moments.

  ``moments(g, m, v, count) -> (m_new, v_new, m_input)`` updates them
  (``count`` is the step's 1-based number; ``m_input`` is what the first
  moment averages this step: g, or ADOPT's normalized g), ``direction(m, v,
  count, m_input) -> u`` makes the step from them as stored (``m_input`` for a
  Nesterov look-ahead). Int8 moments are reset where the gradient is not
  finite, as ``scale_by_adam``'s; float moments let NaN propagate.
  """
  quantized = state_format.is_quantized(mu_format, nu_format)

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.nu, name, of="state")
    _validate.check_matching_shapes(updates, state.mu, name, of="state")
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)

    def leaf(g, m, v, seed):
      dtype = _tree.compute_dtype(g)
      g_ = g.astype(dtype)
      m_new, v_new, m_input = moments(g_, state_format.load(m, dtype),
                                      state_format.load(v, _tree.real_dtype(dtype)), count)
      if not quantized:  # the step from the moments as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed, stream=0)
        v_stored, v_new = state_format.stored_and_used(v_new, v, nu_format, seed, stream=1)
      u = direction(m_new, v_new, count, m_input)
      if quantized:
        u, m_new, v_new = state_format.reset_non_finite(g_, u, m_new, v_new)
        m_stored = state_format.store(m_new, m, mu_format, seed, stream=0)
        v_stored = state_format.store(v_new, v, nu_format, seed, stream=1)
      return u.astype(g.dtype), m_stored, v_stored

    u, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu, seeds, once_per_shape=True)
    return u, state_cls(count, mu, nu)

  return update_fn


def _formats(b1, b2, mu_dtype, nu_dtype):
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  return (state_format.state_format("mu_dtype", mu_dtype),
          state_format.state_format("nu_dtype", nu_dtype))


def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by AdaMax's exponentially weighted infinity norm.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
    u_t^{∞} = \max(β_2 u_{t-1}^{∞}, |g_t| + ε),\quad
    u_t = \frac{m_t}{(1-β_1^t)\, u_t^{∞}}

  ``torch.optim.Adamax``'s rule, ε inside the maximum; ``optax.scale_by_adamax``
  is the same rule (both add ε to |g|). Kingma & Ba's Algorithm 2 has no ε
  (:math:`\max(β_2 u, |g|)`): ``eps=0`` is the paper's, except that a
  coordinate whose gradients were all 0 steps 0 here instead of 0/0. ε
  bounds the step by :math:`|m_t|/((1-β_1^t)ε)`; it changes a step by about
  ε/|g| relative (1e-7 at the default on gradients of 0.1). For a complex
  leaf :math:`|g_t|` is the modulus (torch takes real and imaginary parts
  apart).

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the infinity norm, in [0, 1).
    eps: added to |g| inside the maximum, >= 0.
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    nu_dtype: storage of the infinity norm, as ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdamaxState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_adamax()
    >>> u, _ = tx.update(jnp.array([2.0, -3.0]), tx.init(jnp.zeros(2)))
    >>> u.round(3)  # the first step is sign(g) up to eps
    Array([ 1., -1.], dtype=float32)

  Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization",
  ICLR 2015, Section 7.1 (AdaMax); ``torch.optim.Adamax``.
  """
  _validate.check_non_negative("eps", eps)
  mu_format, nu_format = _formats(b1, b2, mu_dtype, nu_dtype)

  def moments(g, m, v, count):
    b1_, c1, b2_, _ = _decays(b1, b2, v.dtype)
    return b1_ * m + c1 * g, jnp.maximum(b2_ * v, jnp.abs(g) + eps), g

  def direction(m, v, count, m_input):
    # v = 0 only where every gradient was 0 (then m = 0): a 0 step, not 0/0.
    return m / (_tree.bias_correction(b1, count, v.dtype) * jnp.where(v > 0, v, 1))

  return optax.GradientTransformation(
      _init(ScaleByAdamaxState, mu_format, nu_format),
      _moment_step("scale_by_adamax", ScaleByAdamaxState, mu_format, nu_format,
                   moments, direction))


@_validate.checks_arguments
def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    threshold: float = 5.0,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by RAdam's rectified Adam ratio.

  .. math::
    ρ_∞ = \frac{2}{1-β_2} - 1,\quad
    ρ_t = ρ_∞ - \frac{2 t β_2^t}{1-β_2^t},\quad
    r_t = \sqrt{\frac{(ρ_t-4)(ρ_t-2)ρ_∞}{(ρ_∞-4)(ρ_∞-2)ρ_t}},\\
    u_t = \hat m_t\, r_t \frac{\sqrt{1-β_2^t}}{\sqrt{v_t} + ε}
    \text{ if } ρ_t > \text{threshold}, \text{ else } u_t = \hat m_t

  with Adam's moments and :math:`\hat m_t = m_t/(1-β_1^t)`: while the
  variance estimate is too young (:math:`ρ_t \le 5`, the first 5 steps at
  β₂ = 0.999) the step is the bias-corrected momentum, unadapted.
  ``torch.optim.RAdam``'s rule. ``nesterov=True`` takes Dozat's look-ahead
  :math:`\hat m_t = β_1 m_t/(1-β_1^{t+1}) + (1-β_1) g_t/(1-β_1^t)` (as
  ``scale_by_adam``'s, and ``optax.radam(nesterov=True)``; torch's ``RAdam``
  has none). ``optax.scale_by_radam`` differs in two places: its ε is added
  to :math:`\sqrt{\hat v_t}` (torch's, here, to :math:`\sqrt{v_t}`, so it
  weighs :math:`1/\sqrt{1-β_2^t}` times more on :math:`\sqrt{\hat v_t}`:
  13x at t = 6, 1.26x at t = 1000 for β₂ = 0.999) and it rectifies from
  :math:`ρ_t \ge` its ``threshold`` where torch (and this) needs
  :math:`ρ_t >` it (5 in torch). For β₂ near 1 the ε change is a relative
  1e-7 of a step on gradients of 0.1; it grows as √v̂ nears ε.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1) (where :math:`ρ_∞ = 2/(1-β_2)
      - 1 \le` threshold, below 2/3 at 5, every step is the bias-corrected
      momentum).
    eps: added to :math:`\sqrt{v_t}` (torch's place), >= 0.
    threshold: the step is rectified where :math:`ρ_t` exceeds it; >= 4
      (:math:`r_t` is real only for :math:`ρ_t > 4`). 5 is the paper's and
      torch's; a larger one waits longer (``inf``: never, plain momentum SGD).
    nesterov: Dozat's look-ahead first moment (NAdam's), as ``scale_by_adam``.
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    nu_dtype: storage of the second moment, as ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByRadamState``.

  Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and
  Beyond", ICLR 2020; ``torch.optim.RAdam``.
  """
  _validate.check_non_negative("eps", eps)
  _validate.check_in_range("threshold", threshold, 4.0, np.inf, high_inclusive=True)
  mu_format, nu_format = _formats(b1, b2, mu_dtype, nu_dtype)

  def moments(g, m, v, count):
    b1_, c1, b2_, c2 = _decays(b1, b2, v.dtype)
    return b1_ * m + c1 * g, b2_ * v + c2 * _tree.abs_sq(g), g

  def direction(m, v, count, m_input):
    real = v.dtype
    t = count.astype(real)
    c2 = _tree.bias_correction(b2, count, real)
    # ρ_∞ from a Python β₂ in double precision: formed after a cast to
    # float32, 1 − 0.999 put ρ_∞ 0.026 high, which lifted ρ_5 (4.996) over 5
    # and rectified step 5 (a step 5x too small; torch's float32 waits).
    one_minus_b2 = 1 - b2 if isinstance(b2, (int, float)) else 1 - jnp.asarray(b2, real)
    rho_inf = jnp.asarray(2 / one_minus_b2 - 1, real)
    rho = rho_inf - 2 * t * jnp.asarray(b2, real) ** t / c2
    rectified = rho > jnp.asarray(threshold, real)
    # Rectification only where ρ_t > threshold >= 4 (then ρ_∞ > 4 too);
    # elsewhere 6/6 keeps r finite, so that no NaN reaches a derivative
    # through the where.
    rho_, rho_inf_ = jnp.where(rectified, rho, 6), jnp.where(rectified, rho_inf, 6)
    r = jnp.sqrt((rho_ - 4) * (rho_ - 2) * rho_inf_ / ((rho_inf_ - 4) * (rho_inf_ - 2) * rho_))
    m_hat = _tree.nesterov_debiased(b1, m, m_input, count, real) if nesterov else (
        m / _tree.bias_correction(b1, count, real))
    return jnp.where(rectified, m_hat * r * (jnp.sqrt(c2) / (_tree.root(v) + eps)), m_hat)

  return optax.GradientTransformation(
      _init(ScaleByRadamState, mu_format, nu_format),
      _moment_step("scale_by_radam", ScaleByRadamState, mu_format, nu_format,
                   moments, direction))


def scale_by_yogi(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
    *,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by Yogi's additively updated second moment.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
    v_t = v_{t-1} - (1-β_2)\,\mathrm{sign}(v_{t-1} - |g_t|^2)\,|g_t|^2,\\
    u_t = \frac{m_t/(1-β_1^t)}{\sqrt{v_t/(1-β_2^t) + ε_{root}} + ε}

  from :math:`m_0 = 0` and :math:`v_0` = ``initial_accumulator_value``
  (Algorithm 2 of the paper; the 1e-6 of its experiments and of TF-Addons,
  optax and pytorch-optimizer). v moves towards |g|² by a fixed
  fraction of |g|², not of the gap: it cannot jump up after one large gradient.
  The bias corrections are optax's and pytorch-optimizer's. Those two also
  start the first moment at ``initial_accumulator_value``, a quirk
  this does not copy (:math:`m_0 = 0`, as the paper and TF-Addons): their
  :math:`\hat m_t` is off by :math:`10^{-6}β_1^t/(1-β_1^t)` (0.9% of a first
  step on gradients of 1e-3).
  TF-Addons' ``Yogi`` puts ε outside the bias correction,
  :math:`\hat m_t/(\sqrt{\hat v_t} + ε/\sqrt{1-β_2^t})`.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: Yogi's β₂, the fraction of |g|² v moves by, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    initial_accumulator_value: :math:`v_0`, >= 0.
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    nu_dtype: storage of the second moment, as ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByYogiState``.

  Reference: Zaheer et al., "Adaptive Methods for Nonconvex Optimization",
  NeurIPS 2018.
  """
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)
  _validate.check_non_negative("initial_accumulator_value", initial_accumulator_value)
  mu_format, nu_format = _formats(b1, b2, mu_dtype, nu_dtype)

  def moments(g, m, v, count):
    b1_, c1, _, c2 = _decays(b1, b2, v.dtype)
    g2 = _tree.abs_sq(g)
    return b1_ * m + c1 * g, v - c2 * jnp.sign(v - g2) * g2, g

  def direction(m, v, count, m_input):
    m_hat = m / _tree.bias_correction(b1, count, v.dtype)
    return m_hat / (_tree.root(v / _tree.bias_correction(b2, count, v.dtype) + eps_root) + eps)

  return optax.GradientTransformation(
      _init(ScaleByYogiState, mu_format, nu_format, initial_accumulator_value),
      _moment_step("scale_by_yogi", ScaleByYogiState, mu_format, nu_format,
                   moments, direction))


def _clip_magnitude(x, limit):
  """x with its magnitude clipped to ``limit`` (a complex x keeps its phase)."""
  if not jnp.iscomplexobj(x):
    return jnp.clip(x, -limit, limit)
  size = jnp.abs(x)
  return jnp.where(size > limit, x * (limit / jnp.where(size > limit, size, 1)), x)


@_validate.checks_arguments
def scale_by_adopt(
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by ADOPT: momentum of gradients normalized by the
  previous second moment.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1)\,
      \mathrm{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, ε)}, (t-1)^{1/4}\right),
    \quad u_t = m_t,\quad v_t = β_2 v_{t-1} + (1-β_2) |g_t|^2

  for t ≥ 2; the first step only sets :math:`v_1 = |g_1|^2` and returns 0.
  Normalizing by :math:`v_{t-1}`, which does not hold :math:`g_t`, is what
  lets ADOPT converge for any β₂; there is no bias correction. The clipping
  bound :math:`(t-1)^{1/4}` (the step count before this step, 1 at the
  second) is the official code's default ``clip_lambda`` (Nov. 2024
  update), which keeps the convergence rate and guards the early near-zero
  :math:`v`; ``use_clipping=False`` is the paper's first, unclipped version,
  and ``clip_value_fn`` another bound. ``nesterov=True`` steps
  :math:`β_1 m_t + (1-β_1)\,\mathrm{clip}(\cdot)` (the look-ahead of
  ``optax.contrib.adopt(nesterov=True)``; not in the official code).
  ``optax.contrib.scale_by_adopt`` is the same rule. pytorch-optimizer's
  ``ADOPT`` evaluates the bound one step later (:math:`t^{1/4}`). A complex
  normalized gradient is clipped in modulus, keeping its phase (torch
  clips real and imaginary parts apart; it also keeps one v per part, where
  this keeps one of :math:`|g|^2`: ``optax.contrib.split_real_and_imaginary``
  around it is torch's). An infinite gradient is clipped, so its step is
  finite, and makes v infinite, so that coordinate's later steps decay to 0
  (as in the official code and optax); a NaN propagates.

  Args:
    b1: decay of the momentum, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: floor of :math:`\sqrt{v_{t-1}}`, >= 0.
    nesterov: step the look-ahead :math:`β_1 m_t + (1-β_1)\,\mathrm{clip}(\cdot)`.
    use_clipping: clip the normalized gradient (the official default).
    clip_value_fn: the bound as a function of the number of steps before this
      one (an int32 count, 1 at the second step, as optax passes it); ``None``
      is :math:`(t-1)^{1/4}` (in the moments' real dtype), as
      ``optax.contrib.adopt``'s default.
    mu_dtype: storage of the momentum, as in ``scale_by_adam``.
    nu_dtype: storage of the second moment, as ``mu_dtype``.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdoptState``.

  Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any
  β₂ with the Optimal Rate", NeurIPS 2024; github.com/iShohei220/adopt.
  """
  _validate.check_non_negative("eps", eps)
  mu_format, nu_format = _formats(b1, b2, mu_dtype, nu_dtype)

  def moments(g, m, v, count):
    b1_, c1, b2_, c2 = _decays(b1, b2, v.dtype)
    previous = count - 1  # optax's count: the steps before this one
    previous_real = previous.astype(v.dtype)
    normalized = g / jnp.maximum(_tree.root(v), eps)
    if use_clipping:
      limit = (previous_real ** 0.25 if clip_value_fn is None
               else jnp.asarray(clip_value_fn(previous), v.dtype))
      normalized = _clip_magnitude(normalized, limit)
    first = count == 1
    g2 = _tree.abs_sq(g)
    return (jnp.where(first, m, b1_ * m + c1 * normalized),
            jnp.where(first, v + g2, b2_ * v + c2 * g2), normalized)

  def direction(m, v, count, m_input):
    if nesterov:
      b1_, c1, _, _ = _decays(b1, b2, v.dtype)
      m = b1_ * m + c1 * m_input
    return jnp.where(count == 1, jnp.zeros_like(m), m)

  return optax.GradientTransformation(
      _init(ScaleByAdoptState, mu_format, nu_format),
      _moment_step("scale_by_adopt", ScaleByAdoptState, mu_format, nu_format,
                   moments, direction))
