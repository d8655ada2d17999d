"""Memory-lean optimizers: Adafactor, Adam-mini and 8-bit AdamW.

Optimizer-state bytes relative to float32 AdamW (8 bytes per parameter) on
a GPT-like tree (``benchmarks/memory.py``): ``adamw_8bit`` about 0.25x,
``adam_mini`` about 0.5x, ``adafactor`` (no momentum) under 0.01x.
"""

from typing import Any, Optional

import jax.numpy as jnp
import numpy as np
import optax

from gradtx import transforms as gt
from gradtx.optimizers.adaptive import adamw
from gradtx.transforms import _validate
from gradtx.transforms.weight_decay import MaskOrFn


def relative_step_size(warmup_init: bool = False) -> optax.Schedule:
  r"""Adafactor's relative step size :math:`ρ_t = \min(10^{-2}, 1/\sqrt t)`.

  With ``warmup_init`` it is :math:`\min(10^{-6} t, 1/\sqrt t)`, the paper's
  warm-up variant. ``t`` is the 1-based step: the schedule is called with
  the number of steps taken before.
  """

  def schedule(count):
    t = jnp.asarray(count, jnp.float32) + 1
    start = 1e-6 * t if warmup_init else 1e-2
    return jnp.minimum(start, 1 / jnp.sqrt(t))

  return schedule


def adafactor(
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
    momentum: Optional[float] = None,
    mu_dtype: Optional[Any] = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    eps: float = 1e-30,
    factored: bool = True,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Adafactor: factored second moments, update clipping, relative steps.

  .. math::
    \hat u_t = \frac{u_t}{\max(1, \operatorname{RMS}(u_t)/d)},\quad
    p \leftarrow p - \left(α_t\, \hat u_t + λ_t p\right),\quad
    α_t = η_t \max(10^{-3}, \operatorname{RMS}(p))

  with :math:`u_t` from ``gt.scale_by_factored_rms`` (rows × columns
  statistics for matrices), d = ``clipping_threshold`` and RMS taken per
  leaf. The parameter-scale factor is dropped when
  ``multiply_by_parameter_scale=False``; with ``momentum`` an EMA of
  :math:`α_t \hat u_t` (which ``mu_dtype="int8"`` stores in 8 bits) replaces
  it. The weight decay λ is not multiplied by the learning rate.

  The arguments are optax.adafactor's, in its order, with gradtx names
  (``mu_dtype`` for ``dtype_momentum``, ``weight_decay`` for
  ``weight_decay_rate``, ``mask`` for ``weight_decay_mask``), and for a
  given ``learning_rate`` the update is optax's. Unlike optax,
  ``learning_rate=None`` means the paper's relative step size
  :math:`η_t = \min(10^{-2}, 1/\sqrt t)` (``relative_step_size()``), not
  :math:`η_t = 1`.

  Args:
    learning_rate: η, a number, a schedule or ``None`` (relative steps).
    min_dim_size_to_factor: factor a leaf only when its two largest axes both
      have at least this many elements.
    decay_rate: c in the second-moment decay :math:`1 - t^{-c}`, in [0, 1].
    decay_offset: step at which that schedule restarts (fine-tuning).
    multiply_by_parameter_scale: scale steps by max(1e-3, RMS(p)).
    clipping_threshold: d, > 0, or ``None`` for no update clipping.
    momentum: decay of an EMA of the steps, in [0, 1), or ``None`` (none).
    mu_dtype: storage of the momentum, as in ``gt.scale_by_adam``.
    weight_decay: λ, a number or a schedule, >= 0.
    eps: added to g² in the second moments, >= 0.
    factored: factor the second moments of matrices at all.
    mask: which leaves get weight decay, as in ``gt.decoupled_weight_decay``.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
  Sublinear Memory Cost", ICML 2018.
  """
  if clipping_threshold is not None:
    _validate.check_in_range(
        "clipping_threshold", clipping_threshold, 0.0, np.inf,
        low_inclusive=False,
    )
  if momentum is not None:
    _validate.check_decay("momentum", momentum)
  steps = [
      gt.scale_by_factored_rms(
          decay_rate, factored=factored, eps=eps, decay_offset=decay_offset,
          min_dim_size_to_factor=min_dim_size_to_factor,
      )
  ]
  if clipping_threshold is not None:
    steps.append(optax.clip_by_block_rms(clipping_threshold))
  if learning_rate is None:
    learning_rate = relative_step_size()
  steps.append(gt.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    steps.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    steps.append(gt.ema(momentum, mu_dtype=mu_dtype))
  steps.append(gt.decoupled_weight_decay(weight_decay, mask))
  steps.append(optax.scale(-1.0))
  return optax.chain(*steps)


def adam_mini(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    num_heads: Optional[int] = None,
    blocks: Optional[gt.PartitionRule] = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Adam-mini: AdamW with one second moment per block of parameters.

  .. math::
    p \leftarrow p - η_t \left(\frac{\hat m_t}{\sqrt{\hat v_{t,b}} + ε}
    + λ_t p\right)

  where :math:`\hat v_{t,b}` is shared by the block b of each coordinate
  (``gt.scale_by_adam_mini``): by default one per output neuron of a dense
  kernel, per head of query/key projections when ``num_heads`` is given, per
  token of an embedding, per norm scale, per bias element (the rule is
  ``gt.adam_mini_blocks``; pass ``blocks`` to override it). Use AdamW's
  hyper-parameters. The official code exempts norms and biases from weight
  decay: ``mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)`` does so.

  Reference: Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain
  More", ICLR 2025.
  """
  return optax.chain(
      gt.scale_by_adam_mini(
          b1, b2, eps, num_heads=num_heads, blocks=blocks, mu_dtype=mu_dtype
      ),
      gt.decoupled_weight_decay(weight_decay, mask),
      gt.scale_by_learning_rate(learning_rate),
  )


def adamw_8bit(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    amsgrad: bool = False,
    mask: MaskOrFn = None,
    *,
    block_size: int = 256,
) -> optax.GradientTransformation:
  r"""8-bit AdamW: ``adamw`` with both moments in block-wise 8-bit codes.

  Each moment costs one int8 code per parameter plus one float32 scale per
  ``block_size`` parameters (about 2.03 bytes per parameter for both, against
  8); leaves under 4096 elements stay float32 (``gt.Int8Blocks``). A
  coordinate with a non-finite gradient gets a zero step and fresh moments.

  Reference: Dettmers et al., "8-bit Optimizers via Block-wise
  Quantization", ICLR 2022.
  """
  return adamw(
      learning_rate, b1, b2, eps, weight_decay, amsgrad, mask,
      mu_dtype=gt.Int8Blocks(block_size), nu_dtype=gt.Int8Blocks(block_size),
  )
