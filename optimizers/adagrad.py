"""AdaGrad: per-coordinate steps from the summed squared gradients."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    *,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdaGrad: :math:`p \leftarrow p - η\, g'/(\sqrt{\sum g'^2} + ε)`, g' = g + λp.

  ``torch.optim.Adagrad``'s rule (``lr_decay=0``); ``weight_decay`` is its
  coupled L2 term. Its defaults are torch's too, not ``optax.adagrad``'s
  (initial accumulator 0.1, ε 1e-7): from a zero sum the first step is η·sign(g)
  whatever the gradient's size (316x optax's at g = 1e-3).
  ``initial_accumulator_value=0.1, eps=1e-7`` comes near optax's (which adds
  ε inside the root: 20 steps at g ~ 1e-3 agree to 7e-10).

  Args:
    learning_rate: η, a non-negative number or a schedule.
    initial_accumulator_value: starting value of the sum, >= 0.
    eps: added to the denominator, >= 0.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    nu_dtype: storage of the sum of squares (``gt.scale_by_adagrad``).

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
  Learning and Stochastic Optimization", JMLR 2011; ``torch.optim.Adagrad``.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.scale_by_adagrad(initial_accumulator_value, eps, nu_dtype=nu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )
