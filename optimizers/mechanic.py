"""Mechanic: a learned scale of a base optimizer's accumulated steps."""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate

# The official code's m₀: a constant there, not an argument.
_INITIAL_MAX = 1e-6


class MechanicState(NamedTuple):
  """State of ``mechanize``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    s: the scales :math:`s_β`, one per β (shape ``(num_betas,)``); the
      parameters are :math:`x_{ref} + (\\sum_β s_β) Δ`.
    v: the β²-weighted sums of :math:`h^2`, one per β.
    r: the rewards (the tuners' wealth beyond their start), one per β.
    m: the β-decayed running maxima of :math:`|h|`, one per β.
    x_ref: the reference point, the parameters of the first update (in at
      least float32).
    delta: Δ, the sum of the base's updates (scaled as the rule below), in
      at least float32: read for float32 and narrower parameters (their
      rounding would lose it), recovered from float64 ones as the official
      code does.
    inner_state: the state of the base optimizer.

  The scalars are float32, or float64 where a parameter is.
  """

  count: jax.Array
  s: jax.Array
  v: jax.Array
  r: jax.Array
  m: jax.Array
  x_ref: optax.Params
  delta: Optional[optax.Updates]
  inner_state: optax.OptState


@_validate.checks_arguments
def mechanize(
    base: optax.GradientTransformation,
    *,
    s_decay: float = 0.01,
    eps: float = 1e-8,
    s_init: float = 1e-8,
    num_betas: int = 6,
) -> optax.GradientTransformationExtraArgs:
  r"""Mechanic: a base optimizer's summed steps, scaled by a learned factor.

  With :math:`u_t` the base's update at the parameters :math:`x_t` (its
  learning rate and schedule applied), :math:`x_{ref}` the parameters of
  the first update, :math:`S_t = \sum_β s_{t,β}` (:math:`s_1 = 0`,
  :math:`m_0 = 10^{-6}`, :math:`v_0 = r_0 = 0`) and, for each
  :math:`β \in \{1 - 10^{-1}, …, 1 - 10^{-n}\}`:

  .. math::
    Δ_t = \frac{x_t - x_{ref}}{S_t + ε},\quad
    y_t = x_t + u_t,\quad
    h_t = \Big\langle Δ_t,\ g_t + λ S_t \frac{\lVert g_t\rVert}
      {\lVert y_t\rVert + ε}\, y_t \Big\rangle,\\
    m_t = \max(β m_{t-1}, |h_t|),\quad
    v_t = β^2 v_{t-1} + h_t^2,\quad
    r_t = \max(0,\ β r_{t-1} - s_{t,β} h_t),\\
    s_{t+1,β} = \frac{s_{init}\, m_t / n + r_t}{\sqrt{v_t} + ε},\quad
    x_{t+1} = x_{ref} + S_{t+1} (Δ_t + u_t)

  (norms and inner products over the whole tree). This is the official
  ``mechanic_pytorch`` step with its default ``store_delta=False``, which
  recovers Δ from the parameters and so shrinks it by
  :math:`S_t/(S_t + ε)` a step (1% while S is 1e-6), and which takes the
  decay term at the base-stepped :math:`y_t` (the paper and optax take
  :math:`x_t`). The base keeps its learning rate and schedule (the official
  code and optax leave them alone): Mechanic multiplies the sum of its
  steps by S, which starts at :math:`\bar β\, s_{init} m_0/ε` (about 1e-6
  with the defaults: the first h is 0) and grows geometrically while the
  steps help, so the base's η sets the size of the first steps and how long
  S takes to reach its scale (50 steps of the tests' logistic problem with
  ``go.sgd(η)``: loss 0.72 at η = 10, 0.74 at 1, 0.95 at 0.1, 0.997 at
  0.01, from 1.00). A schedule inside the base keeps its shape (optax advises a peak η
  of 1). ``mechanize`` forms :math:`x_{t+1}` itself, so it must be the last
  transformation: a step chained after it that rescales the updates
  belongs inside ``base``.

  Args:
    base: the optimizer whose steps are summed into Δ (e.g. ``go.adamw(1e-3)``,
      ``go.sgd(1.0)``).
    s_decay: λ, the tuner's decay toward smaller scales, >= 0 (the official
      name and default; optax's ``weight_decay``): it enters only h, not the
      base's steps, whose own weight decay is the base's.
    eps: ε, in the divisions by :math:`S_t + ε`, :math:`\lVert y\rVert + ε`
      and :math:`\sqrt{v} + ε`, > 0.
    s_init: :math:`s_{init}`, the scale of the initial wealth, > 0 (the
      official 1e-8; optax's is 1e-6).
    num_betas: n, the number of tuners, an integer >= 1: β = 1 − 10⁻ⁱ for
      i = 1, …, n (the official ``betas``' default list for n = 6; from
      n = 8 the last β rounds to 1 in float32).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs ``params``,
    with state ``MechanicState``; its updates have the base updates'
    dtypes. Keyword arguments of ``update`` go to the base.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.mechanize(go.sgd(1.0))
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(100):  # minimise |p|²/2: the gradient is p
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.abs(params).max() < 0.1), bool(state.s.sum() > 1e-3)  # S from ~1e-6
    (True, True)

  The scalars are float32 (float64 for float64 parameters); optax keeps
  them in the parameters' lowest dtype (bf16 for bf16 parameters). Δ is
  kept in the state (in at least float32: 4 bytes a parameter, where the
  official ``store_delta=True`` keeps it) and, for float32 and narrower
  parameters, :math:`x_t - x_{ref}` read as :math:`S_t Δ`, so the rule
  stays the one above (shrink included) without the parameters' rounding
  (float64 ones recover it, as the official code): recovered from float32
  parameters (the official default ``store_delta=False``, and optax), a
  first scaled step
  :math:`S_1 u ≈ 10^{-6} u` below half an ulp of a parameter rounds it back
  to :math:`x_{ref}`, Δ to 0, and where that holds for every coordinate (a
  base step under ~6% of the weights, e.g. ``go.adamw(1e-3)`` on weights of
  order 1, or pre-trained weights) the tuner stalls for good: the example
  above with ``go.adamw(1e-3)`` never moves in float32 there, in the
  official code too.
  A NaN or infinite gradient makes h, S and so every leaf's step NaN for
  good, as in the official code (``optax.apply_if_finite`` skips such
  steps). Complex parameters are refused.

  Reference: Cutkosky, Defazio & Mehta, "Mechanic: A Learning Rate Tuner",
  NeurIPS 2023, Algorithm 1; the official ``mechanic-pytorch`` 0.0.1 (the
  same steps to round-off in float64 with torch SGD and Adam as bases,
  tests/optimizers/test_mechanic.py). It keeps its scalars in torch's
  default dtype (float32 for float64 parameters). ``optax.contrib.mechanize``
  starts from :math:`m_0 = 0` (and :math:`s_1 = s_{init}`, which the first
  h = 0 makes moot), takes
  :math:`m_t = \max(β m_{t-1}, |h_t| + ε)`, clips h to
  :math:`[-m_{t-1}, m_{t-1}]` in r (its "not in the paper" change), takes
  the decay at :math:`x_t` and defaults to :math:`s_{init} = 10^{-6}`: its
  S grows more slowly, 18-90% off the official trajectory after 50 steps
  (m₀ and the clipping; ε in m: 1e-8, the decay's point: 1e-6), and its
  bf16 parameters never move (recovered Δ, bf16 scalars).
  """
  _validate.check_transformation("base", base)
  _validate.check_non_negative("s_decay", s_decay)
  _validate.check_in_range("eps", eps, 0.0, float("inf"), low_inclusive=False)
  _validate.check_in_range("s_init", s_init, 0.0, float("inf"), low_inclusive=False)
  num_betas = _validate.check_integer("num_betas", num_betas)
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    _validate.check_real_leaves(params, "mechanize")
    dtype = _tree.scalar_dtype(params)
    zeros = jnp.zeros([num_betas], dtype)
    delta = jax.tree.map(lambda p: jnp.zeros_like(p, _tree.compute_dtype(p)), params)
    return MechanicState(
        count=jnp.zeros([], jnp.int32), s=zeros, v=zeros, r=zeros,
        m=jnp.full([num_betas], _INITIAL_MAX, dtype),
        x_ref=_tree.copy_in_compute_dtype(params), delta=delta,
        inner_state=base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("mechanize needs the parameters: call update(updates, state, params)")
    _validate.check_matching_shapes(updates, params, "mechanize")
    grads = updates
    updates, inner_state = base.update(grads, state.inner_state, params, **extra_args)
    real = state.s.dtype
    # The reference is the parameters of the first update, as in the official
    # code and optax (a loop may load pre-trained weights after init).
    x_ref = jax.lax.cond(state.count == 0, lambda: _tree.copy_in_compute_dtype(params),
                         lambda: state.x_ref)
    s_sum = jnp.sum(state.s)
    shrink = s_sum / (s_sum + eps)  # (x − x_ref)/(S + ε) with x − x_ref = S·Δ

    def statistics(g, u, x, x0, delta):
      work = x0.dtype
      x_ = x.astype(work)
      if work == jnp.float64:  # as the official code: recovered, (x − x_ref)/(S + ε)
        delta_t = (x_ - x0) / (s_sum + eps).astype(work)
      else:  # kept: float32's rounding of x would lose it
        delta_t = delta * shrink.astype(work)
      y = x_ + u.astype(work)
      g_ = g.astype(work)
      sums = [_tree.inner(delta_t, g_), _tree.inner(delta_t, y), _tree.sum_squares(y),
              _tree.sum_squares(g_)]
      return (delta_t + u.astype(work), *[v.astype(real) for v in sums])

    delta, along_g, along_y, y_sq, g_sq = _tree.map_leaves(
        statistics, 5, grads, updates, params, x_ref, state.delta, once_per_shape=True)
    total = lambda tree: sum(jax.tree.leaves(tree), jnp.zeros([], real))
    decay = s_decay * s_sum * jnp.sqrt(total(g_sq)) / (jnp.sqrt(total(y_sq)) + eps)
    h = total(along_g) + decay * total(along_y)

    betas = jnp.asarray([1 - 10.0 ** -i for i in range(1, num_betas + 1)], real)
    m = jnp.maximum(betas * state.m, jnp.abs(h))
    v = betas**2 * state.v + h**2
    r = jnp.maximum(betas * state.r - state.s * h, 0)
    s = (m * s_init / num_betas + r) / (jnp.sqrt(v) + eps)
    scale = jnp.maximum(jnp.sum(s), 0)

    def step(u, x, x0, d):
      return (x0 + scale.astype(x0.dtype) * d - x.astype(x0.dtype)).astype(u.dtype)

    (new_updates,) = _tree.map_leaves(lambda *a: (step(*a),), 1, updates, params, x_ref, delta,
                                      once_per_shape=True)
    return new_updates, MechanicState(
        count=optax.safe_increment(state.count), s=s, v=v, r=r, m=m, x_ref=x_ref,
        delta=delta, inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
