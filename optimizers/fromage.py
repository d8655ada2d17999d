"""Fromage: steps sized to each layer's weights, with the weights' growth undone."""

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


def _of_rate(learning_rate, fn):
  """``fn`` of a constant rate, or the schedule ``count -> fn(rate(count))``."""
  if callable(learning_rate):
    return lambda count: fn(learning_rate(count))
  return fn(learning_rate)


def fromage(
    learning_rate: optax.ScalarOrSchedule, *, min_norm: float = 0.0,
) -> optax.GradientTransformation:
  r"""Fromage: Frobenius-matched gradient descent.

  .. math::
    w^l \leftarrow \frac{1}{\sqrt{1 + η^2}}
      \left(w^l - η\, \frac{\lVert w^l\rVert}{\lVert g^l\rVert}\, g^l\right)

  per leaf (a leaf is a layer; Frobenius norms), with the ratio 1 where
  :math:`\lVert w^l\rVert = 0` or :math:`\lVert g^l\rVert = 0`, as in the
  official code, so a zero-initialised layer still moves by :math:`η g`. Each
  step changes a layer by a fraction η of its norm; the division by
  :math:`\sqrt{1+η^2}` cancels the growth of the norm a step orthogonal to
  the weights would cause. A zero gradient therefore shrinks every weight by
  that factor. The chain is ``gt.scale_by_trust_ratio(min_norm)`` (the ratio,
  c = 1) and the division written as a decoupled weight decay:
  :math:`w - η' (r g + λ w)` with :math:`η' = η/\sqrt{1+η^2}` and
  :math:`λ = η/(1 + \sqrt{1+η^2})`, so that :math:`1 - η'λ = 1/\sqrt{1+η^2}`.

  The official code's ``p_bound`` (a cap on each layer's norm relative to its
  initial norm) is not implemented. ``optax.fromage`` clips both norms at
  ``min_norm = 1e-6`` instead of the ratio-1 rule: the same steps wherever
  both norms exceed 1e-6, but a zero-initialised layer moves by
  :math:`10^{-6} η\, g/\lVert g\rVert`, six orders of magnitude less
  (``min_norm=1e-6`` here is optax's rule).

  Args:
    learning_rate: η, a non-negative number or a schedule (the paper's 0.01
      is a good first value).
    min_norm: both norms taken as at least this, >= 0 (``optax.fromage``'s;
      0, the official rule, keeps the ratio 1 for a zero norm).

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.fromage(0.75)
    >>> params = jnp.array([3.0, 4.0])  # ‖w‖ = 5: the step is 0.75·5 along −g
    >>> u, _ = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
    >>> new = optax.apply_updates(params, u)  # (w − (0, 3.75))/1.25
    >>> bool(jnp.allclose(new, jnp.array([2.4, 0.2])))
    True

  Reference: Bernstein, Vahdat, Yue & Liu, "On the distance between two
  neural networks and the stability of learning", NeurIPS 2020; the official
  code, github.com/jxbz/fromage (``fromage.py``).
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  return optax.chain(
      gt.scale_by_trust_ratio(min_norm),
      gt.decoupled_weight_decay(_of_rate(learning_rate, lambda x: x / (1 + (1 + x * x) ** 0.5))),
      gt.scale_by_learning_rate(_of_rate(learning_rate, lambda x: x / (1 + x * x) ** 0.5)),
  )
