"""Layer-wise trust-ratio optimizers for large batches: LARS and LAMB."""

from typing import Any, Optional

import jax
import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


def _and_not(mask: gt.MaskOrFn, excluded: gt.MaskOrFn):
  """The leaves of ``mask`` outside ``excluded`` (both optax-style masks)."""

  def combined(params):
    a, b = gt.weight_decay_mask(mask, params), gt.weight_decay_mask(excluded, params)
    return jax.tree.map(lambda x, y: x and not y, a, b)

  return combined


@_validate.checks_arguments
def lars(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: gt.MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""LARS: momentum SGD with a layer-wise local learning rate.

  .. math::
    λ^l_t = η \frac{\lVert w^l_t\rVert}
      {\lVert ∇L(w^l_t)\rVert + β\lVert w^l_t\rVert + ε},\quad
    v^l_{t+1} = m\, v^l_t + γ_t λ^l_t \left(∇L(w^l_t) + β w^l_t\right),\quad
    w^l_{t+1} = w^l_t - v^l_{t+1}

  (You et al. 2017, Algorithm 1; λ = 1 for a layer with ‖w‖ = 0; a layer
  with zero gradient and β > 0 gets λβw = ηw, the formula's value, where
  TF's MLPerf LARS and apex's LARC take λ = 1 there). The learning rate γ_t
  sits inside the momentum, as in the paper and ``optax.lars``. The
  denominator is the paper's ‖∇L‖ + β‖w‖; ``optax.lars`` uses ‖∇L + βw‖,
  which agrees only when β = 0. A leaf in ``mask`` but outside
  ``trust_ratio_mask`` gets :math:`∇L + βw` with λ = 1; LARS as usually run
  exempts biases and norm scales from both (pass the same mask twice).

  Args:
    learning_rate: γ_t, a non-negative number or a schedule.
    momentum: m, the heavy-ball momentum, in [0, 1).
    nesterov: use the Nesterov look-ahead of the velocity.
    weight_decay: β, >= 0, or a schedule.
    mask: which leaves get the weight decay (a pytree of booleans or a
      callable, ``optax.masked`` semantics); ``None``: every leaf.
    trust_coefficient: η, > 0 (the paper's 0.001).
    eps: added to the trust ratio's denominator, >= 0.
    trust_ratio_mask: which leaves get the trust ratio (the others plain
      momentum SGD); ``None``: every leaf.
    mu_dtype: storage of the velocity (``gt.scale_by_adam``).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> tx = go.lars(1.0, momentum=0.0, trust_coefficient=0.1)
    >>> params = jnp.array([3.0, 4.0])  # ‖w‖ = 5; ‖g‖ = 2: λ = 0.1·5/2
    >>> updates, _ = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
    >>> optax.apply_updates(params, updates)
    Array([3. , 3.5], dtype=float32)

  Reference: You, Gitman, Ginsburg, "Large Batch Training of Convolutional
  Networks", 2017.
  """
  steps = [gt.scale_by_trust_ratio(
      trust_coefficient=trust_coefficient, eps=eps, weight_decay=weight_decay,
      mask=mask)]
  _validate.check_mask("trust_ratio_mask", trust_ratio_mask)
  if trust_ratio_mask is not None:
    steps = [
        optax.masked(steps[0], trust_ratio_mask),
        gt.coupled_weight_decay(weight_decay, _and_not(mask, trust_ratio_mask)),
    ]
  return optax.chain(
      *steps,
      gt.scale_by_learning_rate(learning_rate),
      gt.momentum(momentum, nesterov=nesterov, mu_dtype=mu_dtype),
  )


@_validate.checks_arguments
def lamb(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    trust_ratio_mask: gt.MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""LAMB: Adam's direction with decoupled decay, rescaled layer by layer.

  .. math::
    r_t = \frac{\hat m_t}{\sqrt{\hat v_t} + ε},\quad
    w^l_{t+1} = w^l_t - η_t \frac{\lVert w^l_t\rVert}
      {\lVert r^l_t + λ w^l_t\rVert} \left(r^l_t + λ w^l_t\right)

  (You et al. 2020, Algorithm 2, with φ the identity; the ratio is 1 for a
  layer with ‖w‖ = 0). The same chain as ``optax.lamb``.

  Args:
    learning_rate: η_t, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    trust_ratio_mask: which leaves get the trust ratio; ``None``: every
      leaf, as in ``optax.lamb`` (BERT's LAMB exempts biases and norms).
    mu_dtype: storage of the first moment (``"int8"``, ...; see
      ``gt.scale_by_adam``).
    nu_dtype: storage of the second moment, likewise.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: You et al., "Large Batch Optimization for Deep Learning:
  Training BERT in 76 minutes", ICLR 2020.
  """
  trust_ratio = gt.scale_by_trust_ratio()
  _validate.check_mask("trust_ratio_mask", trust_ratio_mask)
  if trust_ratio_mask is not None:
    trust_ratio = optax.masked(trust_ratio, trust_ratio_mask)
  return optax.chain(
      gt.scale_by_adam(
          b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      trust_ratio,
      gt.scale_by_learning_rate(learning_rate),
  )
