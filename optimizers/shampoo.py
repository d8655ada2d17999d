"""Shampoo: Kronecker-factored preconditioning with grafting and momentum."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate

GRAFTINGS = ("adam", "rmsprop", "sgd", None)


def _grafted(grafting: Optional[str], b2: float, eps: float, nu_dtype: Any):
  if grafting == "adam":
    return gt.scale_by_adam(0.0, b2, eps, nu_dtype=nu_dtype)
  if grafting == "rmsprop":
    return gt.scale_by_rms(b2, eps, nu_dtype=nu_dtype)
  if grafting == "sgd":
    return optax.identity()
  raise ValueError(f"grafting must be one of {GRAFTINGS}, got {grafting!r}")


@_validate.checks_arguments
def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    precondition_b2: float = 0.999,
    damping: float = 1e-6,
    precondition_every: int = 10,
    block_size: Optional[int] = 256,
    grafting: Optional[str] = "adam",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    nesterov: bool = False,
    max_precondition_dim: int = 4096,
    root_method: str = "eigh",
    relative_damping: float = 0.0,
    matrix_view: Optional[gt.MatrixViewRule] = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Shampoo with layer-wise grafting, momentum and decoupled weight decay.

  .. math::
    D_t = L^{-1/4} G_t R^{-1/4}\ \text{(per block)},\quad
    u_t = D_t\, \frac{\|A_t\|_F}{\|D_t\|_F},\quad
    m_t = β_1 m_{t-1} + (1-β_1) u_t,\quad
    p \leftarrow p - η_t\left(\frac{m_t}{1-β_1^t} + λ p\right)

  where D is ``gt.kronecker_precondition`` (statistics decay
  ``precondition_b2``, ridge ``damping``) and A the grafted optimizer's
  update of the same gradient, normed per block: ``"adam"``:
  :math:`g/(\sqrt{\hat v} + ε)` with bias-corrected
  :math:`v = β_2 v + (1-β_2) g^2` (Adam without its first moment, which
  momentum supplies afterwards); ``"rmsprop"``: the same without bias
  correction; ``"sgd"``: g itself; ``None``: no grafting (u = D). With
  grafting, D sets only the direction, so learning rates transfer from the
  grafted optimizer (AdamW's, for ``"adam"``).

  ``shampoo(η, b1=0.0, precondition_b2=1.0, damping=δ, grafting=None,
  precondition_every=1)`` is Algorithm 1 of Gupta et al. for every matrix
  that fits in one block. ``block_size`` and ``max_precondition_dim`` fix
  shapes: ``optax.inject_hyperparams`` needs them in ``static_args`` always
  (inject passes the defaults too, as arrays).

  Args:
    learning_rate: η, a number or a schedule.
    b1: momentum (a debiased EMA) of the grafted update, in [0, 1).
    b2: the grafting's second-moment decay, in [0, 1).
    eps: the grafting's ε, outside the square root, >= 0.
    precondition_b2: decay of the Kronecker statistics, in [0, 1]; 1 sums
      them.
    damping: ridge δ of the statistics (their δI start), >= 0.
    precondition_every: recompute inverse roots every this many steps.
    block_size: largest block side; ``None``: never cut.
    grafting: ``"adam"``, ``"rmsprop"``, ``"sgd"`` or ``None``.
    weight_decay: λ, decoupled (AdamW-style), a number or a schedule.
    mask: which leaves get weight decay (as in ``gt.decoupled_weight_decay``).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    nesterov: step along :math:`β_1 m_t/(1-β_1^t) + (1-β_1) u_t` (the
      look-ahead of ``gt.ema``) instead of :math:`m_t/(1-β_1^t)`.
    max_precondition_dim: sides longer than this are not preconditioned.
    root_method: ``"eigh"`` or ``"newton"`` (see ``gt.inverse_pth_root``).
    relative_damping: ridge relative to each block's largest eigenvalue.
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).
    mu_dtype: storage of the momentum.
    nu_dtype: storage of the grafting's second moment; pass ``jnp.float32``
      for float16 parameters: a float16 v underflows (README, Dtypes), one
      element's step m̂/ε overflows, and the grafting norm spreads it to its
      whole block, whose momentum stays NaN for good.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Gupta, Koren & Singer, ICML 2018; Anil et al., "Scalable Second
  Order Optimization for Deep Learning", 2020; Shi et al., "A Distributed
  Data-Parallel PyTorch Implementation of the Distributed Shampoo Optimizer",
  2023 (Adam grafting, momentum after grafting).
  """
  # Checked here so that errors name shampoo's arguments, not the inner ones.
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)
  direction = gt.kronecker_precondition(
      precondition_b2=precondition_b2, damping=damping,
      precondition_every=precondition_every, block_size=block_size,
      max_precondition_dim=max_precondition_dim, root_method=root_method,
      relative_damping=relative_damping, matrix_view=matrix_view,
  )
  if grafting is not None:
    direction = gt.graft(
        _grafted(grafting, b2, eps, nu_dtype), direction,
        block_size=block_size, max_precondition_dim=max_precondition_dim,
        matrix_view=matrix_view,
    )
  return optax.chain(
      direction,
      gt.ema(b1, nesterov=nesterov, debias=True, mu_dtype=mu_dtype),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
