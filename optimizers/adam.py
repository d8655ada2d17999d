"""Adam and AdamW: coupled and decoupled weight decay, and 8-bit moments."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def adam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    amsgrad: bool = False,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adam with coupled L2 weight decay ("Adam + L2").

  .. math::
    g'_t = g_t + λ p_t,\quad
    p \leftarrow p - η\, \hat m_t/(\sqrt{\hat v_t} + ε)

  with the moments of :math:`g'` (``gt.scale_by_adam``). ``torch.optim.Adam``'s
  rule, AMSGrad included. With a zero data gradient the decay term passes
  through the normalisation, so every weight moves by about η·sign(w)
  whatever its size; use ``adamw`` for true (multiplicative) weight decay.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    amsgrad: keep the running maximum of the second moment (as torch).
    nesterov: the NAdam first moment (Dozat 2016, as ``optax.nadam``; not
      ``torch.optim.NAdam``, whose ``momentum_decay`` schedules β₁).
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).
    nu_dtype: storage of the second moment.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization",
  ICLR 2015; Reddi et al., ICLR 2018 (AMSGrad); ``torch.optim.Adam``.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.scale_by_adam(
          b1, b2, eps, eps_root, amsgrad=amsgrad, nesterov=nesterov,
          mu_dtype=mu_dtype, nu_dtype=nu_dtype,
      ),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    amsgrad: bool = False,
    nesterov: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdamW: Adam with decoupled weight decay.

  .. math::
    p \leftarrow p - η_t \left(\frac{\hat m_t}{\sqrt{\hat v_t} + ε} + λ_t p\right)

  ``torch.optim.AdamW``'s rule (its default ``weight_decay=1e-2`` too), which
  shrinks weights multiplicatively, :math:`p \leftarrow (1 - ηλ) p`, when the
  data gradient is zero.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (a pytree of booleans or a callable,
      ``optax.masked`` semantics); ``None``: every leaf.
    cautious_weight_decay: decay only the coordinates whose Adam step has
      the sign of the weight (``gt.decoupled_weight_decay``; Chen et al.
      2025).
    amsgrad: keep the running maximum of the second moment (as torch).
    nesterov: the NAdam first moment (Dozat 2016, as ``optax.nadam``; not
      ``torch.optim.NAdam``, whose ``momentum_decay`` schedules β₁).
    mu_dtype: storage of the first moment: ``None`` (the parameter's
      dtype), a dtype (e.g. ``jnp.bfloat16``), ``"int8"`` /
      ``gt.Int8Blocks(...)`` or ``gt.StochasticBfloat16()``.
    nu_dtype: storage of the second moment, likewise.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from gradtx import transforms as gt, optimizers as go
    >>> by_hand = optax.chain(gt.scale_by_adam(), gt.decoupled_weight_decay(0.1),
    ...                       gt.scale_by_learning_rate(1e-3))
    >>> params = {"w": jnp.ones(3)}
    >>> a, _ = by_hand.update(params, by_hand.init(params), params)
    >>> tx = go.adamw(1e-3, weight_decay=0.1)
    >>> b, _ = tx.update(params, tx.init(params), params)
    >>> bool(jnp.allclose(a["w"], b["w"]))
    True

  Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
  ICLR 2019; ``torch.optim.AdamW``.
  """
  return optax.chain(
      gt.scale_by_adam(
          b1, b2, eps, eps_root, amsgrad=amsgrad, nesterov=nesterov,
          mu_dtype=mu_dtype, nu_dtype=nu_dtype,
      ),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )


@_validate.checks_arguments
def adamw_8bit(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    amsgrad: bool = False,
    block_size: int = 256,
) -> optax.GradientTransformation:
  r"""8-bit AdamW: ``adamw`` with both moments in block-wise 8-bit codes.

  .. math::
    p \leftarrow p - η_t \left(\frac{\hat m_t}{\sqrt{\hat v_t} + ε} + λ_t p\right),
    \quad m, v \text{ stored as } \mathrm{code}_i \cdot \mathrm{absmax}_{block}

  The update rule is ``adamw``'s. Each moment costs one int8 code per
  parameter plus one float32 scale per ``block_size`` parameters (about 2.03
  bytes per parameter for both, against 8); leaves under 4096 elements stay
  float32 (``gt.Int8Blocks``). A coordinate with a non-finite gradient gets a
  zero step and fresh moments. The codes are bitsandbytes' (its CUDA kernel's
  nearest codes), except that a positive :math:`v` far below its block's
  maximum keeps the smallest code where bitsandbytes stores 0 (and then steps
  :math:`\hat m/ε`: ``gt.quantize_blockwise``).
  ``adamw(..., mu_dtype=..., nu_dtype=...)`` takes any other combination of
  formats.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    amsgrad: keep the running maximum of the second moment.
    block_size: elements per quantization block (one scale each), >= 1.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Dettmers et al., "8-bit Optimizers via Block-wise
  Quantization", ICLR 2022; bitsandbytes ``AdamW8bit``.
  """
  return adamw(
      learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
      weight_decay=weight_decay, mask=mask, cautious_weight_decay=cautious_weight_decay,
      amsgrad=amsgrad, mu_dtype=gt.Int8Blocks(block_size), nu_dtype=gt.Int8Blocks(block_size),
  )
