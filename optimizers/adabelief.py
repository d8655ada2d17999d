"""AdaBelief: Adam with the variance of the gradient around its mean."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def adabelief(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdaBelief with decoupled weight decay.

  .. math::
    s_t = β_2 s_{t-1} + (1-β_2)(g_t - m_t)^2 + ε,\quad
    p \leftarrow p - η\left(\frac{\hat m_t}{\sqrt{\hat s_t} + ε} + λ p\right)

  Algorithm 2 of the paper; the weight decay is decoupled as in the official
  implementation's default (``weight_decouple=True``).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the belief variance, in [0, 1).
    eps: the paper's ε (inside :math:`s_t` and in the denominator), >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    nesterov: Dozat's look-ahead first moment (``optax.adabelief``'s ``nesterov``).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the belief variance.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the
  Belief in Observed Gradients", NeurIPS 2020.
  """
  return optax.chain(
      gt.scale_by_belief(b1, b2, eps, nesterov=nesterov, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
