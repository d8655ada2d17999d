"""Experimental recipes tuned on one character-level language model."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.optimizers.fourth_quadrant import adamuon

# AdaMuon's learning rate 1.2e-2, the AdamW side 1.8e-2, the embeddings 1.8e-1
# (benchmarks/RESULTS.md, "Fourth quadrant").
ADAM_RATIO = 1.5
EMBEDDING_RATIO = 15.0


@_validate.checks_arguments
def adamuon_lm(
    learning_rate: optax.ScalarOrSchedule,
    *,
    method: str = "gram",
    weight_decay: optax.ScalarOrSchedule = 0.01,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    matrix_view: Optional[gt.MatrixViewRule] = None,
    is_muon_param: Optional[gt.PathLeafRule] = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    adam_b2: float = 0.99,
    adam_weight_decay: Optional[optax.ScalarOrSchedule] = 0.0,
    embedding_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdaMuon with the learning-rate ratios tuned on one character-level LM.

  Experimental, not a default: every setting below was chosen on one
  workload, the character-level transformer of ``examples/char_lm.py``
  (warm-up-cosine schedule, two model sizes, three seeds). On the eight
  workloads of ``benchmarks/suite`` (three seeds, warm-up-cosine and
  constant schedules, 3-point lr grids; benchmarks/RESULTS.md, "Workload
  suite") it leads every transformer LM (0.41-0.54x tuned AdamW's steps)
  and beats its parent ``go.adamuon`` there; it loses to ``go.soap`` on the
  image classifiers under both schedules and on the tabular MLP under a
  constant one, and with a held peak it needs 0.125x its rate on the ViT.
  Against AdamW tuned in its weight decay and b2 as well as its learning rate
  (``benchmarks/suite/results/tuned_baseline``) it still leads the LMs
  (0.44-0.55x its steps, 0.51-0.63x its wall-clock measured side by side)
  but never reaches that AdamW's final loss on the CNN, where
  ``go.adamuon`` does (1.01x) and ``go.soap`` leads (0.69x), so it loses to
  its parent on the suite aggregate there (profile score by steps 0.87
  against 0.92; 0.98 against 0.92 with AdamW tuned in its learning rate
  only). Where the model is not a transformer, prefer ``go.soap`` (steps)
  or ``go.adamuon`` / ``go.muon`` (time) and tune their learning rates.

  ``go.adamuon`` on the hidden matrices (its update rule and defaults, Gram
  Newton–Schulz), and AdamW (b₂ = 0.99, no decay) on the other leaves at
  fixed multiples of η, the embeddings apart:

  .. math::
    η_{\text{adam}} = 1.5\,η,\qquad η_{\text{embedding}} = 15\,η

  (``ADAM_RATIO``, ``EMBEDDING_RATIO``). On that workload (η = 1.2e-2 peak;
  the AdamW side best of 0.5–6× AdamW's rate, the embeddings best of 3–100×)
  it reached AdamW's final loss in about half the steps; measured: see
  benchmarks/RESULTS.md, "Fourth quadrant". The same optimizer is
  ``go.adamuon(η, method="gram", adam_learning_rate=1.5η, adam_b2=0.99,
  adam_weight_decay=0.0, embedding_learning_rate=15η)``; for its other
  arguments (β, b₂, ns_steps, ...) call ``go.adamuon`` so.

  Args:
    learning_rate: η of the hidden matrices (AdamW-sized: the update's RMS is
      0.2), a number or a schedule; the other rates follow it.
    method: ``"gram"`` (the default here) or ``"standard"`` Newton–Schulz.
    weight_decay: λ of the hidden matrices, decoupled.
    mask: which leaves get weight decay.
    cautious_weight_decay: on the hidden matrices, decay only where the update
      has the sign of the weight (``gt.decoupled_weight_decay``).
    matrix_view: the matrix-view rule; ``None``: ``gt.fused_qkv_matrix_view()``.
    is_muon_param: the routing rule (``gt.is_hidden_matrix`` by default).
    adam_learning_rate: η of the AdamW leaves; ``None``: 1.5·``learning_rate``.
    adam_b2: AdamW's b2, in [0, 1).
    adam_weight_decay: AdamW's λ; ``None``: ``weight_decay``.
    embedding_learning_rate: η of the embeddings' AdamW; ``None``:
      15·``learning_rate``.
    mu_dtype: storage of the momentum and AdamW's first moment.
    nu_dtype: storage of both second moments.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Si et al., "AdaMuon: Adaptive Muon Optimizer", arXiv 2507.11005
  (the matrix rule); the ratios: benchmarks/RESULTS.md, "Fourth quadrant".
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  if adam_learning_rate is None:
    adam_learning_rate = _tree.scale_schedule(learning_rate, ADAM_RATIO)
  if embedding_learning_rate is None:
    embedding_learning_rate = _tree.scale_schedule(learning_rate, EMBEDDING_RATIO)
  return adamuon(
      learning_rate, method=method, weight_decay=weight_decay, mask=mask,
      cautious_weight_decay=cautious_weight_decay,
      matrix_view=matrix_view, is_muon_param=is_muon_param,
      adam_learning_rate=adam_learning_rate, adam_b2=adam_b2,
      adam_weight_decay=adam_weight_decay,
      embedding_learning_rate=embedding_learning_rate, mu_dtype=mu_dtype,
      nu_dtype=nu_dtype)
