"""Stochastic gradient descent with heavy-ball or Nesterov momentum."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    dampening: float = 0.0,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""SGD with coupled L2 decay and heavy-ball / Nesterov momentum.

  .. math::
    g'_t = g_t + λ_t p_t,\quad m_1 = g'_1,\; m_t = μ m_{t-1} + (1-d) g'_t,\quad
    p_{t+1} = p_t - η_t \cdot (m_t \;\text{or}\; g'_t + μ m_t)

  ``torch.optim.SGD``'s rule. ``momentum=0`` keeps no state.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    momentum: μ, in [0, 1).
    nesterov: use the Nesterov look-ahead.
    weight_decay: λ, the coupled L2 coefficient, >= 0, or a schedule.
    mask: which leaves get the decay (a pytree of booleans or a callable,
      ``optax.masked`` semantics); ``None``: every leaf.
    dampening: d, in [0, 1); 0 with ``nesterov`` (torch's rule).
    mu_dtype: storage of the momentum buffer (a dtype, ``"int8"``,
      ``gt.StochasticBfloat16()``; see ``gt.scale_by_adam``).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.sgd(0.1, momentum=0.9)
    >>> params = jnp.ones(2)
    >>> updates, _ = tx.update(jnp.ones(2), tx.init(params), params)
    >>> optax.apply_updates(params, updates)
    Array([0.9, 0.9], dtype=float32)

  Reference: Robbins & Monro 1951; Polyak 1964 (heavy ball); Sutskever et
  al., ICML 2013 (Nesterov form); ``torch.optim.SGD``.
  """
  return optax.chain(
      gt.coupled_weight_decay(weight_decay, mask),
      gt.momentum(momentum, nesterov=nesterov, dampening=dampening,
                  mu_dtype=mu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )
