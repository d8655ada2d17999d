"""Adam-mini: AdamW with one second moment per block of parameters."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@_validate.checks_arguments
def adam_mini(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    num_heads: Optional[int] = None,
    blocks: Optional[gt.PartitionRule] = None,
    matrix_view: Optional[gt.MatrixViewRule] = None,
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

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the per-block second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay (``optax.masked`` semantics).
    cautious_weight_decay: decay only where the update has the sign of the
      weight (``gt.decoupled_weight_decay``; Chen et al. 2025).
    num_heads: attention heads, for per-head query/key blocks.
    blocks: the partition rule, ``(path, leaf) -> gt.Blocks``.
    matrix_view: the matrix-view rule the default partition reads rows and
      columns from.
    mu_dtype: storage of the first moment (``gt.scale_by_adam``).

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain
  More", ICLR 2025.
  """
  return optax.chain(
      gt.scale_by_adam_mini(
          b1=b1, b2=b2, eps=eps, num_heads=num_heads, blocks=blocks,
          mu_dtype=mu_dtype, matrix_view=matrix_view,
      ),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
