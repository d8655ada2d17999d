"""AdaMax, RAdam, Yogi and ADOPT, each with coupled (L2) or decoupled weight decay.

As ``adam`` / ``adamw``: the plain name adds torch's coupled L2 gradient
before the preconditioner, the ``w`` name decays the weights after it.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def adamax(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdaMax (Adam in the infinity norm) with coupled L2 weight decay.

  .. math::
    g'_t = g_t + λ p_t,\quad u_t^{∞} = \max(β_2 u_{t-1}^{∞}, |g'_t| + ε),\quad
    p \leftarrow p - \frac{η}{1-β_1^t} \frac{m_t}{u_t^{∞}}

  with :math:`m_t` the EMA of :math:`g'` (``gt.scale_by_adamax``):
  ``torch.optim.Adamax``'s rule, and ``optax.adamax``'s when λ = 0.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the infinity norm, in [0, 1).
    eps: added to |g| inside the maximum, >= 0.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the infinity norm.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization",
  ICLR 2015, Section 7.1; ``torch.optim.Adamax``.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.scale_by_adamax(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def adamaxw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdaMaxW: AdaMax with decoupled weight decay.

  .. math::
    p \leftarrow p - η_t \left(\frac{m_t}{(1-β_1^t)\, u_t^{∞}} + λ_t p\right)

  ``optax.adamaxw``'s rule, with ``adamw``'s default λ = 1e-2 (optax's is
  1e-4).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the infinity norm, in [0, 1).
    eps: added to |g| inside the maximum, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the infinity norm.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Kingma & Ba, ICLR 2015, Section 7.1; Loshchilov & Hutter,
  "Decoupled Weight Decay Regularization", ICLR 2019.
  """
  return optax.chain(
      gt.scale_by_adamax(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def radam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    threshold: float = 5.0,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""RAdam (rectified Adam) with coupled L2 weight decay.

  .. math::
    g'_t = g_t + λ p_t,\quad
    p \leftarrow p - η\, \hat m_t \cdot
    \begin{cases} r_t \sqrt{1-β_2^t}/(\sqrt{v_t} + ε) & ρ_t > 5 \\
    1 & \text{otherwise} \end{cases}

  with the moments of :math:`g'` (``gt.scale_by_radam``, where ρ_t and r_t
  are defined): ``torch.optim.RAdam``'s rule (its default
  ``decoupled_weight_decay=False``; ``radamw`` is the other).
  ``optax.radam`` adds ε to :math:`\sqrt{\hat v_t}` instead.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{v_t}`, >= 0.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    threshold: rectify where :math:`ρ_t` exceeds it, >= 4 (``gt.scale_by_radam``).
    nesterov: Dozat's look-ahead first moment (``optax.radam``'s ``nesterov``).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and
  Beyond", ICLR 2020; ``torch.optim.RAdam``.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.scale_by_radam(b1=b1, b2=b2, eps=eps, threshold=threshold, nesterov=nesterov,
                        mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def radamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    threshold: float = 5.0,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""RAdamW: RAdam with decoupled weight decay.

  .. math::
    p \leftarrow p - η_t \left(u_t + λ_t p\right)

  with :math:`u_t` the rectified step of ``gt.scale_by_radam``:
  ``torch.optim.RAdam(..., decoupled_weight_decay=True)``, with ``adamw``'s
  default λ = 1e-2 (torch's is 0).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{v_t}`, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    threshold: rectify where :math:`ρ_t` exceeds it, >= 4 (``gt.scale_by_radam``).
    nesterov: Dozat's look-ahead first moment (``optax.radam``'s ``nesterov``).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Liu et al., ICLR 2020; ``torch.optim.RAdam``.
  """
  return optax.chain(
      gt.scale_by_radam(b1=b1, b2=b2, eps=eps, threshold=threshold, nesterov=nesterov,
                        mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def yogi(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Yogi with decoupled weight decay.

  .. math::
    v_t = v_{t-1} - (1-β_2)\,\mathrm{sign}(v_{t-1} - g_t^2)\,g_t^2,\quad
    p \leftarrow p - η\left(\frac{\hat m_t}{\sqrt{\hat v_t} + ε} + λ p\right)

  (``gt.scale_by_yogi``, from :math:`m_0 = 0`, :math:`v_0` =
  ``initial_accumulator_value``). The decay is decoupled as
  pytorch-optimizer's ``Yogi`` default; ``optax.yogi`` has none (and starts
  :math:`m_0` at ``initial_accumulator_value``, see ``gt.scale_by_yogi``).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: Yogi's β₂, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    initial_accumulator_value: :math:`v_0`, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Zaheer et al., "Adaptive Methods for Nonconvex Optimization",
  NeurIPS 2018.
  """
  return optax.chain(
      gt.scale_by_yogi(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                       initial_accumulator_value=initial_accumulator_value,
                       mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def adopt(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""ADOPT with coupled L2 weight decay.

  .. math::
    g'_t = g_t + λ p_t,\quad
    m_t = β_1 m_{t-1} + (1-β_1)\,\mathrm{clip}\!\left(
      \frac{g'_t}{\max(\sqrt{v_{t-1}}, ε)}, (t-1)^{1/4}\right),\quad
    p \leftarrow p - η\, m_t

  (``gt.scale_by_adopt``; the first step only sets :math:`v_1 = g_1'^2`).
  The official ``ADOPT``'s default (``decouple=False``); ``adoptw`` is its
  ``decouple=True``. ``optax.contrib.adopt`` is the λ = 0 rule.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the momentum, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: floor of :math:`\sqrt{v_{t-1}}`, >= 0.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    nesterov: step the look-ahead of the momentum (``gt.scale_by_adopt``).
    use_clipping: clip the normalized gradient (the official default).
    clip_value_fn: the clipping bound as a function of the number of steps
      before this one; ``None`` is :math:`(t-1)^{1/4}`.
    mu_dtype: storage of the momentum (``gt.scale_by_adam``).
    nu_dtype: storage of the second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any
  β₂ with the Optimal Rate", NeurIPS 2024; github.com/iShohei220/adopt.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.scale_by_adopt(b1=b1, b2=b2, eps=eps, nesterov=nesterov, use_clipping=use_clipping,
                        clip_value_fn=clip_value_fn, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )


def _from_second_step(weight_decay):
  """λ as a schedule that is 0 at the first step (ADOPT's step 1 moves nothing)."""
  if _validate.is_static_zero(weight_decay):
    return weight_decay
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  return lambda count: jnp.where(count > 0, _tree.resolve_schedule(weight_decay, count), 0)


@_validate.checks_arguments
def adoptw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""ADOPT with decoupled weight decay.

  .. math::
    p \leftarrow p - η_t\,(m_t + λ_t p)\quad (t \ge 2)

  with :math:`m_t` of ``gt.scale_by_adopt``: the official
  ``ADOPT(..., decouple=True)``, which its authors advise in place of AdamW,
  with ``adamw``'s default λ = 1e-2. As there, the first step moves nothing,
  the decay included (pytorch-optimizer's ``ADOPT`` decays at it).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the momentum, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: floor of :math:`\sqrt{v_{t-1}}`, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    nesterov: step the look-ahead of the momentum (``gt.scale_by_adopt``).
    use_clipping: clip the normalized gradient (the official default).
    clip_value_fn: the clipping bound as a function of the number of steps
      before this one; ``None`` is :math:`(t-1)^{1/4}`.
    mu_dtype: storage of the momentum (``gt.scale_by_adam``).
    nu_dtype: storage of the second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Taniguchi et al., NeurIPS 2024; github.com/iShohei220/adopt.
  """
  return optax.chain(
      gt.scale_by_adopt(b1=b1, b2=b2, eps=eps, nesterov=nesterov, use_clipping=use_clipping,
                        clip_value_fn=clip_value_fn, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(_from_second_step(weight_decay), mask,
                                cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
