"""Sign-based optimizers: signSGD / Signum, Lion and Tiger."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx.transforms import _validate
from gradtx.transforms.weight_decay import MaskOrFn


def signsgd(
    learning_rate: optax.ScalarOrSchedule, momentum: float = 0.0
) -> optax.GradientTransformation:
  r"""signSGD, or Signum with momentum.

  .. math::
    m_t = β m_{t-1} + (1-β) g_t,\quad p \leftarrow p - η\,\operatorname{sign}(m_t)

  ``momentum=0`` is signSGD (:math:`m_t = g_t`, no state).

  Reference: Bernstein et al., "signSGD: Compressed Optimisation for
  Non-Convex Problems", ICML 2018 (Algorithms 1 and 3).
  """
  _validate.check_decay("momentum", momentum)
  return optax.chain(
      gt.ema(momentum),
      gt.scale_by_sign(),
      gt.scale_by_learning_rate(learning_rate),
  )


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Lion.

  .. math::
    p \leftarrow p - η\left(\operatorname{sign}(β_1 m + (1-β_1) g) + λ p\right),
    \quad m \leftarrow β_2 m + (1-β_2) g

  Use a learning rate 3–10x smaller and a weight decay 3–10x larger than
  AdamW's (the paper's advice).

  Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms",
  NeurIPS 2023.
  """
  return optax.chain(
      gt.scale_by_lion(b1, b2, mu_dtype=mu_dtype),
      gt.decoupled_weight_decay(weight_decay, mask),
      gt.scale_by_learning_rate(learning_rate),
  )


def tiger(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.965,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
    *,
    param_rms_scaling: bool = False,
) -> optax.GradientTransformation:
  r"""Tiger: Lion with a single decay β.

  .. math::
    m \leftarrow β m + (1-β) g,\quad
    p \leftarrow p - η\, s(p) \left(\operatorname{sign}(m) + λ p\right)

  with :math:`s(p) = 1`, or :math:`s(p) = \operatorname{RMS}(p)` for matrix
  leaves when ``param_rms_scaling`` is set (the reference code's per-tensor
  adaptive learning rate; see ``gt.scale_by_param_rms``).

  Reference: Su Jianlin, "Tiger: A Tight-fisted Optimizer", 2023
  (github.com/bojone/tiger).
  """
  return optax.chain(
      gt.scale_by_tiger(beta, mu_dtype=mu_dtype),
      gt.decoupled_weight_decay(weight_decay, mask),
      gt.scale_by_param_rms() if param_rms_scaling else optax.identity(),
      gt.scale_by_learning_rate(learning_rate),
  )
