"""Sign descent: signSGD / Signum, Lion and Tiger."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def signsgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""signSGD, or Signum with momentum.

  .. math::
    m_t = μ m_{t-1} + (1-μ) g_t,\quad
    p \leftarrow p - η\left(\operatorname{sign}(m_t) + λ p\right)

  ``momentum=0`` is signSGD (:math:`m_t = g_t`, no state). The sign does not
  see the scale of m, so this EMA and the heavy-ball buffer
  :math:`μ m + g` give the same steps: μ is ``momentum`` in either reading.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    momentum: μ, in [0, 1).
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of the momentum (``gt.scale_by_adam``).

  Returns:
    An ``optax.GradientTransformation``; complex parameters are refused.

  Reference: Bernstein et al., "signSGD: Compressed Optimisation for
  Non-Convex Problems", ICML 2018 (Algorithms 1 and 3).
  """
  _validate.check_decay("momentum", momentum)
  return optax.chain(
      gt.ema(momentum, mu_dtype=mu_dtype),
      gt.scale_by_sign(),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def lion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    mode: str = "hard",
    smooth_beta: float = 1.0,
) -> optax.GradientTransformation:
  r"""Lion.

  .. math::
    p \leftarrow p - η\left(\operatorname{sign}(β_1 m + (1-β_1) g) + λ p\right),
    \quad m \leftarrow β_2 m + (1-β_2) g

  Use a learning rate 3–10x smaller and a weight decay 3–10x larger than
  AdamW's (the paper's advice). The default ``weight_decay`` is 0, the
  paper's and torch ports', where ``optax.lion``'s is 1e-3. ``b1`` and ``b2``
  keep the paper's meaning:
  the interpolation weight of the direction and the decay of the stored
  momentum.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: interpolation weight of the momentum in the direction, in [0, 1).
    b2: decay of the stored momentum, in [0, 1).
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of the momentum (``gt.scale_by_adam``).
    mode: the sign's variant (``gt.scale_by_lion``): ``"hard"`` (Lion's
      sign), ``"smooth"`` (tanh(β_s x)) or ``"refined"`` (x for |x| < 1).
    smooth_beta: β_s of the smooth mode, > 0.

  Returns:
    An ``optax.GradientTransformation``; complex parameters are refused.

  Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms",
  NeurIPS 2023, Program 1.
  """
  return optax.chain(
      gt.scale_by_lion(b1, b2, mu_dtype=mu_dtype, mode=mode, smooth_beta=smooth_beta),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def tiger(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.965,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    param_rms_scaling: bool = False,
) -> optax.GradientTransformation:
  r"""Tiger: Lion with a single decay β.

  .. math::
    m \leftarrow β m + (1-β) g,\quad
    p \leftarrow p - η\, s(p) \left(\operatorname{sign}(m) + λ p\right)

  with :math:`s(p) = 1`, or :math:`s(p) = \operatorname{RMS}(p)` for matrix
  leaves when ``param_rms_scaling`` is set (the reference code's per-tensor
  adaptive learning rate; see ``gt.scale_by_param_rms``).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    beta: β, the decay of the momentum, in [0, 1) (the API's name for it).
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of the momentum (``gt.scale_by_adam``).
    param_rms_scaling: scale each matrix leaf's step by RMS(p).

  Returns:
    An ``optax.GradientTransformation``; complex parameters are refused.

  Reference: Su Jianlin, "Tiger: A Tight-fisted Optimizer", 2023
  (github.com/bojone/tiger).
  """
  return optax.chain(
      gt.scale_by_tiger(beta, mu_dtype=mu_dtype),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_param_rms() if param_rms_scaling else optax.identity(),
      gt.scale_by_learning_rate(learning_rate),
  )
