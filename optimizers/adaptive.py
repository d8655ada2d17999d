"""Per-coordinate adaptive optimizers: AdaGrad, RMSProp, Adam, AdamW, AdaBelief."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx.transforms.weight_decay import MaskOrFn


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  r"""AdaGrad: :math:`p \leftarrow p - η\, g/(\sqrt{\sum g^2} + ε)`.

  ``torch.optim.Adagrad``'s rule (``lr_decay=0``); ``weight_decay`` is its
  coupled L2 term.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay),
      gt.scale_by_adagrad(initial_accumulator_value, eps),
      gt.scale_by_learning_rate(learning_rate),
  )


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.0,
    centered: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  r"""RMSProp, optionally centered and with momentum on the scaled step.

  .. math::
    v_t = ρ v_{t-1} + (1-ρ) g_t^2,\quad
    b_t = μ b_{t-1} + g_t/(\sqrt{v_t - \bar g_t^2} + ε),\quad
    p \leftarrow p - η b_t

  ``torch.optim.RMSprop``'s rule (``decay`` is torch's ``alpha``; ``centered``
  subtracts the squared mean gradient :math:`\bar g_t^2`).
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay),
      gt.scale_by_rms(decay, eps, centered=centered),
      gt.momentum(momentum),
      gt.scale_by_learning_rate(learning_rate),
  )


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    eps_root: float = 0.0,
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

  Reference: Kingma & Ba 2015; Reddi et al. 2018 (AMSGrad).
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay),
      gt.scale_by_adam(
          b1, b2, eps, eps_root, amsgrad=amsgrad, nesterov=nesterov,
          mu_dtype=mu_dtype, nu_dtype=nu_dtype,
      ),
      gt.scale_by_learning_rate(learning_rate),
  )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    amsgrad: bool = False,
    mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
    *,
    eps_root: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  r"""AdamW: Adam with decoupled weight decay.

  .. math::
    p \leftarrow p - η_t \left(\frac{\hat m_t}{\sqrt{\hat v_t} + ε} + λ_t p\right)

  ``torch.optim.AdamW``'s rule (its default ``weight_decay=1e-2`` too), which
  shrinks weights multiplicatively, :math:`p \leftarrow (1 - ηλ) p`, when the
  data gradient is zero. ``mask`` selects the decayed leaves; ``mu_dtype`` /
  ``nu_dtype`` set the moments' storage dtype (e.g. ``jnp.bfloat16``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from gradtx import transforms as gt, optimizers as go
    >>> by_hand = optax.chain(gt.scale_by_adam(), gt.decoupled_weight_decay(0.1),
    ...                       gt.scale_by_learning_rate(1e-3))
    >>> params = {"w": jnp.ones(3)}
    >>> a, _ = by_hand.update(params, by_hand.init(params), params)
    >>> b, _ = go.adamw(1e-3, weight_decay=0.1).update(
    ...     params, go.adamw(1e-3, weight_decay=0.1).init(params), params)
    >>> bool(jnp.allclose(a["w"], b["w"]))
    True

  Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
  ICLR 2019.
  """
  return optax.chain(
      gt.scale_by_adam(
          b1, b2, eps, eps_root, amsgrad=amsgrad, nesterov=nesterov,
          mu_dtype=mu_dtype, nu_dtype=nu_dtype,
      ),
      gt.decoupled_weight_decay(weight_decay, mask),
      gt.scale_by_learning_rate(learning_rate),
  )


def adabelief(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""AdaBelief with decoupled weight decay.

  .. math::
    s_t = β_2 s_{t-1} + (1-β_2)(g_t - m_t)^2 + ε,\quad
    p \leftarrow p - η\left(\frac{\hat m_t}{\sqrt{\hat s_t} + ε} + λ p\right)

  Algorithm 2 of the paper; the weight decay is decoupled as in the official
  implementation's default (``weight_decouple=True``).

  Reference: Zhuang et al., NeurIPS 2020.
  """
  return optax.chain(
      gt.scale_by_belief(b1, b2, eps),
      gt.decoupled_weight_decay(weight_decay, mask),
      gt.scale_by_learning_rate(learning_rate),
  )
