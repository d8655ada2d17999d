"""SM3: memory-efficient AdaGrad with per-axis accumulators, and momentum."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate
from gradtx.transforms.sm3 import scale_by_sm3


@_validate.checks_arguments
def sm3(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    eps_root: float = 1e-30,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""SM3-II with momentum, the official code's optimizer.

  .. math::
    ν_t(i) = \min_k μ^{(k)}_{t-1}(i_k) + g_t(i)^2,\quad
    m_t = β_1 m_{t-1} + (1-β_1)\, g_t/\sqrt{ν_t},\quad
    p \leftarrow p - η_t m_t

  with one accumulator :math:`μ^{(k)}` per index of each axis k of a tensor,
  :math:`μ^{(k)}_t(j) = \max_{i_k = j} ν_t(i)` (``gt.scale_by_sm3``; vectors
  keep AdaGrad's full sum). The official TensorFlow ``SM3Optimizer``'s step
  (its momentum is this EMA; the paper's experiments use 0.9), and
  pytorch_optimizer's ``SM3(momentum=β₁, beta=0)``. ``optax.sm3`` has the
  same rule with ε = 1e-8 inside the root (``eps_root=1e-8`` here) and no
  scalar leaves. There is no weight decay (none of the references has one).

  Args:
    learning_rate: η, a non-negative number or a schedule (SM3's scale is
      AdaGrad's: its steps shrink like :math:`1/\sqrt{t}` by themselves).
    b1: decay of the momentum, in [0, 1); 0 gives plain SM3-II.
    eps_root: added inside the square root, >= 0 (the official 1e-30).
    mu_dtype: storage of the momentum (``gt.scale_by_adam``'s ``mu_dtype``).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import optimizers as go
    >>> tx = go.sm3(0.1, b1=0.0)
    >>> params = jnp.zeros((2, 2))
    >>> u, _ = tx.update(jnp.array([[3.0, 0.0], [0.0, -4.0]]), tx.init(params), params)
    >>> u  # the first step is -η sign(g), as AdaGrad's
    Array([[-0.1, -0. ],
           [-0. ,  0.1]], dtype=float32)

  Reference: Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive
  Optimization", NeurIPS 2019; github.com/google-research/google-research
  (``sm3/sm3.py``).
  """
  return optax.chain(
      scale_by_sm3(b1=b1, eps_root=eps_root, mu_dtype=mu_dtype),
      gt.scale_by_learning_rate(learning_rate),
  )
