"""PSGD Kron: Kronecker-factored whitening preconditioner, decoupled decay."""

from typing import Any, Callable, Optional, Union

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def psgd_kron(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    precond_update_probability: Union[None, float, Callable] = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: Optional[str] = None,
    momentum_into_precond_update: bool = True,
    precond_lr: float = 0.1,
    precond_init_scale: float = 1.0,
    mu_dtype: Optional[Any] = None,
    precond_dtype: Optional[Any] = None,
    seed: int = 0,
    matrix_view: Optional[gt.MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""PSGD Kron with decoupled weight decay (psgd-jax's ``kron``).

  .. math::
    u_t = \mathrm{clip}_{1.1}\!\left(Q^T Q\, \hat m_t\right),\quad
    p \leftarrow p - η_t (u_t + λ p)

  where :math:`\hat m_t` is the debiased momentum of the gradient and Q the
  Kronecker-factored whitening preconditioner of ``gt.scale_by_psgd_kron``
  (fitted on ⌈1/p⌉-th steps, p = ``precond_update_probability``); the
  update's RMS is capped at 1.1, so learning rates are AdamW-like (psgd-jax's
  README: Adam-like settings, perhaps half the learning rate; kron_torch's:
  about 3× smaller, with 3–10× the weight decay). With ``precond_init_scale``
  1 (psgd-jax's default) Q starts at the identity, so the first updates are
  about the gradient's size, far below Adam's (134× on a 64-wide MLP whose
  gradient RMS is 7e-3), and grow as Q is fitted (each fit moves a factor by
  up to ``precond_lr``): Adam's scale after some 40–50 steps there, as in
  psgd-jax (equal to 1e-15 in float64). Xi-Lin Li's psgd_torch sets the scale
  from the first gradient, (mean|g|⁴)^(-1/8); passing such a number as
  ``precond_init_scale`` starts at unit-sized updates. With
  ``precond_dtype=jnp.bfloat16`` a fit step preconditions with the float32
  factors it just fitted (psgd-jax with the stored, rounded ones: ~1% apart),
  and with ``mu_dtype=jnp.bfloat16`` the step uses the stored, rounded
  momentum (as torch does; psgd-jax the float32 one: 0.3–0.8% apart).

  Args:
    learning_rate: η, a number or a schedule.
    b1: the momentum's decay, in [0, 1).
    weight_decay: λ, decoupled, a number or a schedule.
    mask: which leaves get weight decay (as in ``gt.decoupled_weight_decay``).
    cautious_weight_decay: decay only where the update has the weight's sign.
    precond_update_probability: p, in (0, 1], or a schedule; ``None``:
      ``gt.precond_update_prob_schedule()`` (see ``gt.scale_by_psgd_kron``:
      under ``optax.inject_hyperparams`` a schedule you pass goes in
      ``static_args``).
    max_size_triangular: axes longer than this get diagonal factors.
    min_ndim_triangular: leaves with fewer axes get diagonal factors.
    memory_save_mode: ``None``, ``"one_diag"`` or ``"all_diag"``.
    momentum_into_precond_update: fit Q on the momentum rather than g.
    precond_lr: the factors' step size, >= 0.
    precond_init_scale: Q starts at this times the identity, > 0.
    mu_dtype: storage of the momentum.
    precond_dtype: storage of the factors (``jnp.bfloat16`` halves them).
    seed: seed of the random probes, >= 0.
    matrix_view: which axes index separate leaves (scanned layers, experts),
      as in ``gt.scale_by_psgd_kron``; default: the Flax axis names.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Li, "Preconditioned Stochastic Gradient Descent", 2018; psgd-jax
  (evanatyourservice/psgd_jax, ``kron``), whose defaults these are.
  """
  return optax.chain(
      gt.scale_by_psgd_kron(
          b1=b1, precond_update_probability=precond_update_probability,
          max_size_triangular=max_size_triangular, min_ndim_triangular=min_ndim_triangular,
          memory_save_mode=memory_save_mode,
          momentum_into_precond_update=momentum_into_precond_update,
          precond_lr=precond_lr, precond_init_scale=precond_init_scale,
          mu_dtype=mu_dtype, precond_dtype=precond_dtype, seed=seed,
          matrix_view=matrix_view),
      gt.decoupled_weight_decay(weight_decay, mask,
                                cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
