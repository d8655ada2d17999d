"""SOAP: Adam in the slowly refreshed eigenbasis of Shampoo's preconditioner."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def soap(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    precondition_b2: Optional[float] = None,
    precondition_every: int = 10,
    max_precondition_dim: int = 10000,
    weight_decay: optax.ScalarOrSchedule = 0.01,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    refresh: str = "qr",
    matrix_view: Optional[gt.MatrixViewRule] = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner, with AdamW decay.

  .. math::
    p \leftarrow p - η_t\left(\frac{\sqrt{1-β_2^k}}{1-β_1^k}\,
    Q_L \frac{m_t}{\sqrt{v_t} + ε} Q_R^T + λ p\right)

  with the moments of the rotated gradient :math:`Q_L^T G Q_R` and the basis
  refreshed every ``precondition_every`` steps (``gt.scale_by_soap``). The
  defaults are the reference code's. ``optax.inject_hyperparams`` needs
  ``max_precondition_dim`` in ``static_args`` always (inject passes the
  default too, as an array).

  Departures from the reference (both O(ηλ)): decay is applied to the
  parameters from before the step, as ``torch.optim.AdamW`` does (the reference
  decays the already-updated parameters), and also on the first step, whose
  update is otherwise zero (the reference skips that step entirely).

  Args:
    learning_rate: η, a number or a schedule.
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: added to √v, >= 0.
    precondition_b2: decay of L and R, in [0, 1); ``None``: ``b2`` (the
      reference's ``shampoo_beta``).
    precondition_every: basis refresh period, >= 1.
    max_precondition_dim: sides longer than this keep the identity basis.
    weight_decay: λ, decoupled, a number or a schedule.
    mask: which leaves get weight decay.
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    refresh: ``"qr"`` (one power iteration + QR, the paper's) or ``"eigh"``.
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).
    mu_dtype: storage of Adam's first moment.
    nu_dtype: storage of Adam's second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using
  Adam", ICLR 2025 (arXiv 2409.11321); github.com/nikhilvyas/SOAP.
  """
  return optax.chain(
      gt.scale_by_soap(
          b1=b1, b2=b2, eps=eps, precondition_b2=precondition_b2,
          precondition_every=precondition_every,
          max_precondition_dim=max_precondition_dim, refresh=refresh,
          mu_dtype=mu_dtype, nu_dtype=nu_dtype, matrix_view=matrix_view,
      ),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
