"""ACProp: AdaBelief's centered second moment, applied one step late."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def acprop(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    amsgrad: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""ACProp with decoupled weight decay.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
    s_t = β_2 s_{t-1} + (1-β_2)(g_t - m_t)^2 + ε,\\
    p \leftarrow p - η\left(\frac{g_t}{\sqrt{s_{t-1}/(1-β_2^{t-1})} + ε}
      + λ p\right)

  with the first step :math:`p \leftarrow p - η(g_1 + λp)`
  (``gt.scale_by_acprop``): the gradient is divided by the centered second
  moment of the earlier steps only. The official ``ACProp`` class's step
  (github.com/juntang-zhuang/ACProp-Optimizer) at the settings of its
  experiments, without rectification; the weight decay is decoupled, its
  class's default ``weight_decouple=True`` (and optax's). Its experiments'
  coupled L2 decay (``weight_decouple=False``) is
  ``optax.chain(gt.coupled_weight_decay(λ), gt.scale_by_acprop(),
  gt.scale_by_learning_rate(η))``. ``optax.contrib.acprop`` centers by
  :math:`m_{t-1}` instead of :math:`m_t`, which makes its steps about
  :math:`β_1` times these (see ``gt.scale_by_acprop``).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, which centers :math:`s`, in [0, 1).
    b2: decay of the centered second moment, in [0, 1).
    eps: the official code's ε (inside :math:`s_t` and in the denominator),
      >= 0; 1e-8 as in its experiments (its class and optax: 1e-16, see
      ``gt.scale_by_acprop``).
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    amsgrad: divide by the running maximum of :math:`s` (the official
      ``amsgrad`` option).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the centered second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import optimizers as go
    >>> tx = go.acprop(0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> u, _ = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
    >>> u  # the first step is -η g
    Array([-0.05, -0.05], dtype=float32)

  Reference: Zhuang et al., "Momentum Centering and Asynchronous Update for
  Adaptive Gradient Methods", NeurIPS 2021.
  """
  return optax.chain(
      gt.scale_by_acprop(b1, b2, eps, amsgrad=amsgrad, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
