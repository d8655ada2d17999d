"""Kronecker-factored optimizers: Shampoo (with grafting) and SOAP."""

from typing import Optional

import optax

from gradtx import transforms as gt
from gradtx.transforms import _validate
from gradtx.transforms.weight_decay import MaskOrFn

GRAFTINGS = ("adam", "rmsprop", "sgd", None)


def _grafted(grafting: Optional[str], b2: float, eps: float):
  if grafting == "adam":
    return gt.scale_by_adam(0.0, b2, eps)
  if grafting == "rmsprop":
    return gt.scale_by_rms(b2, eps)
  if grafting == "sgd":
    return optax.identity()
  raise ValueError(f"grafting must be one of {GRAFTINGS}, got {grafting!r}")


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    precondition_every: int = 10,
    block_size: Optional[int] = 256,
    grafting: Optional[str] = "adam",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    nesterov: bool = False,
    max_precondition_dim: int = 4096,
    root_method: str = "eigh",
    relative_eps: float = 0.0,
    graft_b2: float = 0.999,
    graft_eps: float = 1e-8,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Shampoo with layer-wise grafting, momentum and decoupled weight decay.

  .. math::
    D_t = L^{-1/4} G_t R^{-1/4}\ \text{(per block)},\quad
    u_t = D_t\, \frac{\|A_t\|_F}{\|D_t\|_F},\quad
    m_t = β_1 m_{t-1} + (1-β_1) u_t,\quad
    p \leftarrow p - η_t\left(\frac{m_t}{1-β_1^t} + λ p\right)

  where D is ``gt.kronecker_precondition(b2, eps, precondition_every, ...)``
  and A the grafted optimizer's update of the same gradient, normed per block:
  ``"adam"``: :math:`g/(\sqrt{\hat v} + ε_g)` with bias-corrected
  :math:`v = β_{g} v + (1-β_g) g^2` (Adam without its first moment, which
  momentum supplies afterwards); ``"rmsprop"``: the same without bias
  correction; ``"sgd"``: g itself; ``None``: no grafting (u = D). With
  grafting, D sets only the direction, so learning rates transfer from the
  grafted optimizer (AdamW's, for ``"adam"``).

  ``shampoo(η, b1=0.0, b2=1.0, eps=ε, grafting=None, precondition_every=1)`` is
  Algorithm 1 of Gupta et al. for every matrix that fits in one block.
  ``precondition_every``, ``block_size`` and ``max_precondition_dim`` fix
  shapes and the step structure: ``optax.inject_hyperparams`` needs them in
  ``static_args``.

  Args:
    learning_rate: η, a number or a schedule.
    b1: momentum (a debiased EMA) of the grafted update, in [0, 1).
    b2: decay of the Kronecker statistics, in [0, 1]; 1 sums them.
    eps: ridge ε of the statistics (their εI start), >= 0.
    precondition_every: recompute inverse roots every this many steps.
    block_size: largest block side; ``None``: never cut.
    grafting: ``"adam"``, ``"rmsprop"``, ``"sgd"`` or ``None``.
    weight_decay: λ, decoupled (AdamW-style), a number or a schedule.
    nesterov: step along :math:`β_1 m_t/(1-β_1^t) + (1-β_1) u_t` (the
      look-ahead of ``gt.ema``) instead of :math:`m_t/(1-β_1^t)`.
    max_precondition_dim: sides longer than this are not preconditioned.
    root_method: ``"eigh"`` or ``"newton"`` (see ``gt.inverse_pth_root``).
    relative_eps: ridge relative to each block's largest eigenvalue.
    graft_b2: β_g of the ``"adam"``/``"rmsprop"`` grafting, in [0, 1).
    graft_eps: ε_g of the grafting, >= 0.
    mask: which leaves get weight decay (as in ``gt.decoupled_weight_decay``).

  Reference: Gupta, Koren & Singer, ICML 2018; Anil et al., "Scalable Second
  Order Optimization for Deep Learning", 2020; Shi et al., "A Distributed
  Data-Parallel PyTorch Implementation of the Distributed Shampoo Optimizer",
  2023 (Adam grafting, momentum after grafting).
  """
  # Checked here so that errors name shampoo's arguments, not the inner ones.
  _validate.check_decay("b1", b1)
  _validate.check_decay("graft_b2", graft_b2)
  _validate.check_non_negative("graft_eps", graft_eps)
  direction = gt.kronecker_precondition(
      b2, eps, precondition_every, block_size=block_size,
      max_precondition_dim=max_precondition_dim, root_method=root_method,
      relative_eps=relative_eps,
  )
  if grafting is not None:
    direction = gt.graft(
        _grafted(grafting, graft_b2, graft_eps), direction,
        block_size=block_size, max_precondition_dim=max_precondition_dim,
    )
  return optax.chain(
      direction,
      gt.ema(b1, nesterov=nesterov, debias=True),
      gt.decoupled_weight_decay(weight_decay, mask),
      gt.scale_by_learning_rate(learning_rate),
  )


def soap(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_b2: Optional[float] = None,
    eps: float = 1e-8,
    precondition_every: int = 10,
    max_precondition_dim: int = 10000,
    weight_decay: optax.ScalarOrSchedule = 0.01,
    *,
    refresh: str = "qr",
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner, with AdamW decay.

  .. math::
    p \leftarrow p - η_t\left(\frac{\sqrt{1-β_2^k}}{1-β_1^k}\,
    Q_L \frac{m_t}{\sqrt{v_t} + ε} Q_R^T + λ p\right)

  with the moments of the rotated gradient :math:`Q_L^T G Q_R` and the basis
  refreshed every ``precondition_every`` steps (``gt.scale_by_soap``). The
  defaults are the reference code's. ``optax.inject_hyperparams`` needs
  ``static_args=("precondition_every", "max_precondition_dim")``.

  Departures from the reference (both O(ηλ)): decay is applied to the
  parameters from before the step, as ``torch.optim.AdamW`` does (the reference
  decays the already-updated parameters), and also on the first step, whose
  update is otherwise zero (the reference skips that step entirely).

  Args:
    learning_rate: η, a number or a schedule.
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    shampoo_b2: decay of L and R, in [0, 1); ``None``: ``b2``.
    eps: added to √v, >= 0.
    precondition_every: basis refresh period, >= 1.
    max_precondition_dim: sides longer than this keep the identity basis.
    weight_decay: λ, decoupled, a number or a schedule.
    refresh: ``"qr"`` (one power iteration + QR, the paper's) or ``"eigh"``.
    mask: which leaves get weight decay.

  Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using
  Adam", ICLR 2025 (arXiv 2409.11321).
  """
  return optax.chain(
      gt.scale_by_soap(
          b1, b2, shampoo_b2, eps, precondition_every,
          max_precondition_dim=max_precondition_dim, refresh=refresh,
      ),
      gt.decoupled_weight_decay(weight_decay, mask),
      gt.scale_by_learning_rate(learning_rate),
  )
