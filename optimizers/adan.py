"""Adan: adaptive Nesterov momentum with proximal weight decay."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate
from gradtx.transforms.adan import proximal_weight_decay, scale_by_adan


@_validate.checks_arguments
def adan(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adan with its proximal weight decay (the official code's defaults).

  .. math::
    p \leftarrow \frac{p - η\,\bigl(\hat m_t + β_2 \hat v_t\bigr)
      / \bigl(\sqrt{\hat n_t} + ε\bigr)}{1 + ηλ}

  with the bias-corrected EMAs of the gradients :math:`\hat m`, of their
  differences :math:`\hat v` and of the squared Nesterov gradient
  :math:`g_t + β_2 (g_t - g_{t-1})`, :math:`\hat n` (``gt.scale_by_adan``),
  then the proximal decay (``gt.proximal_weight_decay``): the step of
  sail-sg/Adan's ``Adan`` (``no_prox=False``) and of pytorch_optimizer's
  ``Adan`` (``weight_decouple=False``), without their ``max_grad_norm``
  (chain ``optax.clip_by_global_norm`` before it; theirs divides by
  norm + ε). The official ``no_prox=True`` form, :math:`p \leftarrow (1 -
  ηλ)p - η u`, is ``optax.chain(gt.scale_by_adan(...),
  gt.decoupled_weight_decay(λ), gt.scale_by_learning_rate(η))``, which is
  also ``optax.adan``'s decay; ``optax.adan`` further weighs the gradient
  difference by :math:`1-β_2` instead of :math:`β_2` (see
  ``gt.scale_by_adan``) and defaults to ``eps_root=1e-8``.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the gradient EMA, in [0, 1) (the paper's :math:`1-β_1`).
    b2: decay of the gradient-difference EMA, in [0, 1) (the paper's
      :math:`1-β_2`).
    b3: decay of the squared Nesterov-gradient EMA, in [0, 1) (the paper's
      :math:`1-β_3`).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: λ of the proximal decay, >= 0, or a schedule (the paper's
      experiments use 0.02; the official default is 0).
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.proximal_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of the two first moments (``gt.scale_by_adan``).
    nu_dtype: storage of the second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import optimizers as go
    >>> tx = go.adan(1e-2, weight_decay=0.02)
    >>> params = jnp.array([1.0, -2.0])
    >>> u, _ = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
    >>> (params + u).round(4)  # (p - 0.01 sign(g)) / (1 + 0.01 * 0.02)
    Array([ 0.9898, -2.0096], dtype=float32)

  Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for
  Faster Optimizing Deep Models", TPAMI 2024; github.com/sail-sg/Adan.
  """
  return optax.chain(
      scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root,
                    mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      proximal_weight_decay(learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
                            cautious_weight_decay=cautious_weight_decay),
  )
