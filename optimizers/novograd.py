"""NovoGrad: momentum on layer-normalized gradients, with the weight decay inside."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def novograd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""NovoGrad: SGD momentum on gradients normalized layer by layer.

  .. math::
    v^l_t = β_2 v^l_{t-1} + (1-β_2)\lVert g^l_t\rVert^2\ (v^l_1 = \lVert g^l_1\rVert^2),
    \quad m^l_t = β_1 m^l_{t-1} + \left(\frac{g^l_t}{\sqrt{v^l_t} + ε} + λ w^l_t\right),
    \quad w^l \leftarrow w^l - η_t m^l_t

  Algorithm 1 of the paper, with a leaf for a layer :math:`l` and
  :math:`m_0 = 0`. The same rule and defaults as ``optax.novograd`` (which
  has no ``mask``); :math:`v` is one float32 scalar per leaf
  (``gt.scale_by_novograd``), the momentum is ``gt.momentum``'s buffer. The
  decay λw enters the momentum (the paper's "decoupled" decay: added after
  the normalization, not to g), so a zero gradient does not leave only
  −ηλw after the first step. Other implementations differ:

  * ``pytorch_optimizer.NovoGrad`` (defaults β = (0.95, 0.98), ε = 1e-8) is
    this rule at the default ``grad_averaging=False``; its
    ``grad_averaging=True`` multiplies the bracket by 1 − β₁ from the second
    step on (``gt.momentum``'s ``dampening=b1``), and ``weight_decouple=True``
    moves the decay out of the momentum (AdamW's place);
  * OpenSeq2Seq's NovoGrad (β = (0.95, 0.98)) puts ε inside the root,
    :math:`g/\sqrt{v + ε}` (``eps=0, eps_root=ε``);
  * apex's ``FusedNovoGrad`` (β = (0.9, 0.999)) by default averages
    (1 − β₁)g, divides :math:`m` and :math:`\sqrt v` by Adam's bias
    corrections (:math:`\sqrt{1-β_2^t}` even at t = 1, where :math:`v_1` needs
    none) and applies the decay outside the momentum: another optimizer.

  Args:
    learning_rate: η_t, a non-negative number or a schedule.
    b1: β₁, the momentum's decay, in [0, 1).
    b2: β₂, the decay of the squared-norm average, in [0, 1).
    eps: ε, added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: λ, >= 0, or a schedule; added to the normalized gradient
      inside the momentum.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the normalized gradient has the
      sign of the weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    mu_dtype: storage of the momentum (``gt.momentum``).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.novograd(0.1)
    >>> params = {"w": jnp.array([1.0, 1.0])}
    >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    >>> u["w"].round(4)  # −η g/(‖g‖ + ε) on the first step
    Array([-0.06, -0.08], dtype=float32)

  Reference: Ginsburg et al., "Stochastic Gradient Methods with Layer-wise
  Adaptive Moments for Training of Deep Networks", 2019 (arXiv:1905.11286).
  """
  _validate.check_decay("b1", b1)
  return optax.chain(
      gt.scale_by_novograd(b2=b2, eps=eps, eps_root=eps_root),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.momentum(b1, mu_dtype=mu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )
