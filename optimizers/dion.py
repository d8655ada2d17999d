"""Dion: Muon with a rank-k orthogonalized update from a carried power iteration."""

from typing import Any, Optional, Union

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


@gt.AdamWSide.document
@_validate.checks_arguments
def dion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: Union[int, float] = 0.25,
    momentum: float = 0.95,
    power_iters: int = 1,
    orthonormalize: str = "qr",
    scale: Optional[str] = "jordan",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    eps: float = 1e-8,
    seed: int = 0,
    batch_same_shape: bool = False,
    matrix_view: Optional[gt.MatrixViewRule] = None,
    is_muon_param: Optional[gt.PathLeafRule] = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: Optional[optax.ScalarOrSchedule] = None,
    embedding_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Dion for hidden matrices (Muon with a low-rank msign), AdamW for every other leaf.

  For a hidden weight matrix W:

  .. math::
    B_t = M_{t-1} + g_t,\quad
    P, R = \text{power iteration}(B_t; Q_{t-1}),\quad
    Q_t = R/\|R\|_{col},\quad M_t = B_t - (1-μ) P R^T,\\
    W \leftarrow W - η_t (s\, P Q_t^T + λ W)

  (``gt.orthogonalize_low_rank(rank, momentum=μ)``), s the Muon shape scale
  ``scale`` (``gt.scale_by_matrix_shape``; see ``go.muon``). At full rank
  and one power iteration per step this is Muon-like with an error-feedback
  momentum, not Muon itself: one iteration from the previous basis does not
  orthogonalize exactly (from a random basis a step's singular values are
  spread, e.g. 0.6-1.35; on a fixed B the basis converges over steps, to
  ‖PQᵀ − msign(B)‖ ~1e-3 after 30); at rank k the step costs O(mnk) instead of
  Newton–Schulz's O(mn·min(m, n)) per iteration. Which leaves are hidden
  matrices, and the AdamW for the rest, are as in ``go.muon``.

  Args:
    learning_rate: η, a float or a schedule, >= 0.
    rank: k, an int >= 1 or a fraction in (0, 1] of min(m, n). The default
      0.25 is gradtx's (the paper's low-rank regime); the reference
      ``Dion`` takes a rank fraction that defaults to full rank, and
      ``dion_simple.py``'s example a rank of 768.
    momentum: μ in [0, 1) (Dion's μ, 0.95 in the paper).
    power_iters: power iterations per step, >= 1.
    orthonormalize: ``"qr"`` or ``"cholesky_qr"``.
    scale: ``"jordan"``, ``"moonlight"`` or ``None``. Dion's code scales by
      sqrt(fan_out/fan_in) without Muon's max(1, ·).
    weight_decay: λ >= 0, decoupled, or a schedule.
    mask: which leaves get the decay, on both the Dion and the AdamW side
      (``optax.masked`` semantics); ``None``: every leaf.
    cautious_weight_decay: on the Dion leaves, decay only where the update
      has the sign of the weight (``gt.decoupled_weight_decay``; Chen et al.
      2025); the AdamW side keeps plain decay.
    eps: ε of the column normalisation, >= 0.
    seed: seed of the initial bases, >= 0.
    batch_same_shape: step same-shape matrices as one stack (faster compile,
      slower step and more step memory; ``gt.orthogonalize_low_rank``).
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).
    is_muon_param: the routing rule, a function of ``(path, leaf)``;
      ``None``: ``go.is_hidden_matrix`` with ``matrix_view``.
    adam_*, embedding_learning_rate: the AdamW side (``gt.AdamWSide``).
    mu_dtype: storage of the buffer M (a float dtype or ``None``,
      ``gt.orthogonalize_low_rank``) and of AdamW's first moment.
    nu_dtype: storage of AdamW's second moment (``jnp.float32`` for float16
      parameters, whose second moment underflows: README, Dtypes).

  Returns:
    An ``optax.GradientTransformation`` (an ``optax.multi_transform``'s
    update; ``init`` refuses complex parameters).

  Reference: Ahn et al., "Dion: Distributed Orthonormalized Updates",
  arXiv 2504.05295; github.com/microsoft/dion.
  """
  hidden = optax.chain(
      gt.orthogonalize_low_rank(
          rank, momentum=momentum, power_iters=power_iters,
          orthonormalize=orthonormalize, eps=eps, seed=seed,
          batch_same_shape=batch_same_shape, matrix_view=matrix_view, mu_dtype=mu_dtype),
      gt.scale_by_matrix_shape(scale, matrix_view=matrix_view),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
  side = gt.AdamWSide(
      adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay,
      embedding_learning_rate, mu_dtype, nu_dtype)
  tx = side.around("dion", hidden, is_muon_param, learning_rate=learning_rate,
                   weight_decay=weight_decay, mask=mask, matrix_view=matrix_view)

  def init_fn(params):
    # Real parameters only, on either side (QR and power iterations are real).
    _validate.check_real_leaves(params, "dion")
    return tx.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)
