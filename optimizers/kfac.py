"""K-FAC: Kronecker-factored natural gradient from recorded activations, with momentum."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def kfac(
    learning_rate: optax.ScalarOrSchedule,
    *,
    damping: Any = 1e-3,
    precondition_b2: float = 0.95,
    precondition_every: int = 10,
    norm_constraint: Optional[float] = None,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    is_dense: Optional[gt.PathLeafRule] = None,
    root_method: str = "cholesky",
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""K-FAC preconditioning, then heavy-ball momentum, decoupled decay and the learning rate.

  .. math::
    d_t = \operatorname{KFAC}(g_t),\quad m_t = μ m_{t-1} + d_t,\quad
    p \leftarrow p - η_t (m_t + λ p)

  where KFAC is ``gt.kfac_precondition`` (per dense layer (Â/π + √δ I)⁻¹ g
  (πĜ + √δ I)⁻¹ from the recorded activations and output gradients, the
  diagonal rule g/(v + δ) elsewhere; δ = ``damping``), m the momentum of
  ``gt.momentum`` and λ = ``weight_decay``. The update takes the pass's
  records: ``tx.update(grads, state, params, records=records)`` or
  ``nnx.Optimizer.update(model, grads, records=records)``, records from
  ``gradtx.optimizers.nnx_records.value_grad_and_records``. Under
  ``optax.MultiSteps`` the update runs on the last micro-step with that
  call's records: concatenate every micro-batch's records, or the
  curvature is the last micro-batch's alone.

  kfac-jax's own optimizer adapts the learning rate, momentum and damping
  by a quadratic model of the loss (Martens & Grosse §6–7) and takes a
  second pass for that; this is the simpler recipe of K-FAC used as an
  optax preconditioner (kfac-jax's ``OptaxPreconditioner`` followed by
  SGD with momentum), with ``norm_constraint`` as its step-size guard.

  Args:
    learning_rate: η, a float or a schedule, >= 0.
    damping: δ > 0, the Tikhonov damping of the curvature.
    precondition_b2: decay of the factors, in [0, 1).
    precondition_every: recompute the inverses every this many steps, >= 1.
    norm_constraint: c: scale the preconditioned step u by min(1, √(c/⟨u, g⟩))
      (kfac-jax's rule), which bounds the step's squared norm under the
      approximate Fisher, ⟨u, F̂u⟩ = ⟨u, g⟩, by c; ``None``: no limit.
    momentum: μ in [0, 1).
    nesterov: Nesterov's form of the momentum.
    weight_decay: λ >= 0, decoupled (a float or a schedule).
    mask: where the weight decay applies (optax.masked semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    is_dense: which leaves are dense kernels (``None``: ``gt.is_dense_kernel``).
    root_method: ``"cholesky"`` (an exact solve, as kfac-jax's), ``"eigh"``
      or ``"newton"`` (matmul-only): ``gt.kfac_precondition``'s.
    mu_dtype: storage of the momentum buffer (as in ``gt.momentum``).

  Returns:
    A ``GradientTransformationExtraArgs``.

  Reference: Martens & Grosse, "Optimizing Neural Networks with
  Kronecker-factored Approximate Curvature", ICML 2015; kfac-jax.
  """
  _validate.check_decay("momentum", momentum)
  return optax.chain(
      gt.kfac_precondition(
          damping=damping, precondition_b2=precondition_b2,
          precondition_every=precondition_every,
          norm_constraint=norm_constraint, is_dense=is_dense,
          root_method=root_method),
      gt.momentum(momentum, nesterov=nesterov, mu_dtype=mu_dtype),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
