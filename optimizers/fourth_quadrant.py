"""The fourth quadrant: matrix-wise updates in an adaptive geometry.

Optimizers can be sorted by two questions: is the update element-wise or
matrix-wise, and is its geometry fixed or adapted to the gradients' second
moments? SGD is element-wise and fixed, AdamW element-wise and adaptive,
Muon matrix-wise and fixed. Each optimizer here fills the fourth cell,
matrix-wise and adaptive, with a short chain of gradtx transforms on the
hidden matrices (AdamW on the other leaves, ``gt.AdamWSide``, as in
``go.muon``):

==============  ===============================================================
``soap_muon``    SOAP's Adam-in-the-eigenbasis direction, then orthogonalized
``normuon``      Muon, then a per-neuron second-moment normalization (NorMuon)
``adamuon``      Muon, then an element-wise second-moment normalization (AdaMuon)
``vmuon``        Muon's msign in the diagonal metric learnt from factored g²
==============  ===============================================================

Measured: see benchmarks/RESULTS.md, "Fourth quadrant", and
notebooks/03_fourth_quadrant.ipynb. ``adamuon`` and ``go.muon`` see a fused
(d, 3d) qkv kernel as three matrices by default; ``normuon``, ``soap_muon``
and ``vmuon`` keep ``gt.flax_matrix_view`` (one matrix): pass
``matrix_view=gt.fused_qkv_matrix_view()`` to split it.
"""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate


def _orthogonalize(ns_steps, coefficients, method, matrix_view):
  return gt.orthogonalize_newton_schulz(
      ns_steps, coefficients, method=method, matrix_view=matrix_view)


def _hidden_then_adamw(label, direction, *, scale, matrix_view, weight_decay, mask,
                       learning_rate, is_muon_param, side, cautious_weight_decay=False):
  """``direction``, the shape scale, decoupled (or cautious) decay and η on
  the hidden matrices; ``side`` (a ``gt.AdamWSide``) elsewhere."""
  hidden = optax.chain(
      direction,
      gt.scale_by_matrix_shape(scale, matrix_view=matrix_view),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
  return side.around(label, hidden, is_muon_param, learning_rate=learning_rate,
                     weight_decay=weight_decay, mask=mask, matrix_view=matrix_view)


@gt.AdamWSide.document
@_validate.checks_arguments
def normuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-10,
    nesterov: bool = True,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    method: str = "standard",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    scale: Optional[str] = "jordan",
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
  r"""NorMuon: Muon with a per-neuron second-moment normalization.

  For a hidden matrix (flax layout, fan_in × fan_out):

  .. math::
    O_t = \operatorname{NS}(β m_t + (1-β) g_t),\quad
    v_t = b_2 v_{t-1} + (1-b_2)\operatorname{mean}_{\text{fan-in}} O_t^2,\quad
    \hat O = \frac{O_t}{\sqrt{v_t}+ε}\cdot\frac{\|O_t\|_F}{\|O_t/(\sqrt{v_t}+ε)\|_F},\quad
    W \leftarrow W - η(s\,\hat O + λW)

  one v per output neuron (a row of PyTorch's (out, in) weight), the norm of
  the orthogonalized update kept, s Muon's ``scale``. A chain of
  ``gt.ema``, ``gt.orthogonalize_newton_schulz`` and
  ``gt.normalize_by_second_moment(granularity="fan_out",
  renormalize="input", debias=False)``. Defaults are the reference code's
  (``SingleDeviceNorMuon``: lr 0.02, β = b₂ = 0.95, ε = 1e-10, no decay).

  Args:
    learning_rate: η of the hidden matrices, a number or a schedule.
    beta: β, the momentum's EMA decay, in [0, 1).
    b2: decay of the per-neuron second moment, in [0, 1).
    eps: added to √v, >= 0.
    nesterov: orthogonalize the look-ahead (as ``go.muon``).
    ns_steps: Newton–Schulz iterations, >= 1.
    coefficients: Newton–Schulz coefficients (``gt.orthogonalize_newton_schulz``).
    method: ``"standard"`` or ``"gram"`` Newton–Schulz (the same msign up to
      round-off; Gram is cheaper on wide matrices).
    weight_decay: λ, decoupled, a number or a schedule.
    mask: which leaves get weight decay.
    cautious_weight_decay: decay the hidden matrices only where their step
      has the sign of the weight (``gt.decoupled_weight_decay``).
    scale: Muon's shape scale (``"jordan"``, ``"moonlight"`` or ``None``).
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).
    is_muon_param: the routing rule (``go.is_hidden_matrix`` by default).
    adam_*, embedding_learning_rate: the AdamW side (``gt.AdamWSide``).
    mu_dtype: storage of the momentum and AdamW's first moment.
    nu_dtype: storage of AdamW's second moment (the per-neuron v is float32).

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Li et al., "NorMuon: Making Muon more efficient and scalable",
  arXiv 2510.05491; github.com/zichongli5/NorMuon (``normuon_update``).
  """
  _validate.check_decay("beta", beta)
  direction = optax.chain(
      gt.ema(beta, nesterov=nesterov, mu_dtype=mu_dtype),
      _orthogonalize(ns_steps, coefficients, method, matrix_view),
      gt.normalize_by_second_moment(
          b2=b2, eps=eps, granularity="fan_out", debias=False, renormalize="input",
          matrix_view=matrix_view),
  )
  return _hidden_then_adamw(
      "normuon", direction, scale=scale, matrix_view=matrix_view,
      weight_decay=weight_decay, mask=mask, learning_rate=learning_rate,
      cautious_weight_decay=cautious_weight_decay,
      is_muon_param=is_muon_param,
      side=gt.AdamWSide(adam_learning_rate, adam_b1, adam_b2, adam_eps,
                        adam_weight_decay, embedding_learning_rate, mu_dtype, nu_dtype))


@gt.AdamWSide.document
@_validate.checks_arguments
def adamuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.95,
    b2: float = 0.999,
    eps: float = 1e-8,
    nesterov: bool = True,
    sign_momentum: bool = False,
    debias: bool = True,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    method: str = "standard",
    weight_decay: optax.ScalarOrSchedule = 0.01,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    scale: Optional[str] = "moonlight",
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
  r"""AdaMuon: Muon with an element-wise second-moment normalization.

  .. math::
    O_t = \operatorname{NS}(β m_t + (1-β) g_t),\quad
    v_t = b_2 v_{t-1} + (1-b_2) O_t^2,\quad
    \hat O = \frac{O_t}{\sqrt{v_t/(1-b_2^t)}+ε},\quad
    W \leftarrow W - η\Big(s\,\frac{\sqrt{\min(m,n)}}{\|\hat O\|_F+ε}\hat O + λW\Big)

  with s = 0.2·sqrt(max(m, n)) (``scale="moonlight"``): the update's RMS is
  0.2, AdamW's, so AdamW's learning rate transfers. A chain of ``gt.ema``,
  ``gt.orthogonalize_newton_schulz`` and
  ``gt.normalize_by_second_moment(renormalize="orthogonal")``. Defaults are
  the reference code's (β = 0.95, b₂ = 0.999, ε = 1e-8, λ = 0.01), but for
  the matrix view: a fused (d, 3d) qkv kernel is three matrices
  (``gt.fused_qkv_matrix_view``, as ``go.muon``), which trained faster than
  one (d, 3d) matrix; measured: see benchmarks/RESULTS.md, "Fourth
  quadrant". ``gradtx.contrib.adamuon_lm`` is this optimizer with Gram
  Newton–Schulz and learning-rate ratios tuned on one language model.

  The versions differ. The defaults are the first released code's
  (``adamuon.py`` of github.com/Chongjie-Si/AdaMuon at 3b84e03, as the paper's
  first version): O_t = NS(m̃_t), v with its own b₂ = 0.999, bias-corrected;
  the project's measurements were made with them. From its second version
  (Algorithm 1) the paper orthogonalizes the momentum's sign, O_t =
  NS(sign(m̃_t)) ("sign-stabilized"), and decays v with β, and the
  repository's later code (``gpt2/models/optimizers/adamuon.py``, which
  replaced ``adamuon.py``) does both without a bias correction:
  ``sign_momentum=True, b2=0.95, debias=False`` is that rule (its GPT-2
  AdamW side also takes ``adam_b2=0.95`` and no decay on 1-D leaves: pass
  ``adam_b2`` and ``mask``).

  Args:
    learning_rate: η of the hidden matrices, a number or a schedule.
    beta: β, the momentum's EMA decay, in [0, 1).
    b2: decay of the element-wise second moment, in [0, 1).
    eps: added to √v̂ and to the norm, >= 0.
    nesterov: orthogonalize the look-ahead (as ``go.muon``).
    sign_momentum: orthogonalize sign(m̃) (the paper from its v2, the later
      code) instead of m̃ (the first code). On the workload suite's five LMs
      the sign alone costs 0.76-0.95x AdamW's steps against 0.53-0.75x
      (benchmarks/suite/results/adamuon_later_code/); the later code's b2 and
      debias alone cost nothing there.
    debias: divide v by 1 − b₂ᵗ (the first code; the later code does not).
    ns_steps: Newton–Schulz iterations, >= 1.
    coefficients: Newton–Schulz coefficients (``gt.orthogonalize_newton_schulz``).
    method: ``"standard"`` or ``"gram"`` Newton–Schulz (the same msign up to
      round-off; Gram is cheaper on wide matrices).
    weight_decay: λ, decoupled, a number or a schedule.
    mask: which leaves get weight decay.
    cautious_weight_decay: decay the hidden matrices only where their step
      has the sign of the weight (``gt.decoupled_weight_decay``).
    scale: Muon's shape scale (``"moonlight"``, ``"jordan"`` or ``None``).
    matrix_view: the matrix-view rule; ``None``: ``gt.fused_qkv_matrix_view()``.
    is_muon_param: the routing rule (``go.is_hidden_matrix`` by default).
    adam_*, embedding_learning_rate: the AdamW side (``gt.AdamWSide``).
    mu_dtype: storage of the momentum and AdamW's first moment.
    nu_dtype: storage of both second moments (the matrices' and AdamW's).

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Si et al., "AdaMuon: Adaptive Muon Optimizer", arXiv 2507.11005
  (v1; v2 and v3 for the sign); github.com/Chongjie-Si/AdaMuon (``adamuon.py``).
  """
  _validate.check_decay("beta", beta)
  matrix_view = gt.fused_qkv_matrix_view() if matrix_view is None else matrix_view
  direction = optax.chain(
      gt.ema(beta, nesterov=nesterov, mu_dtype=mu_dtype),
      *([gt.scale_by_sign()] if sign_momentum else []),
      _orthogonalize(ns_steps, coefficients, method, matrix_view),
      gt.normalize_by_second_moment(
          b2=b2, eps=eps, debias=debias, renormalize="orthogonal",
          matrix_view=matrix_view, nu_dtype=nu_dtype),
  )
  return _hidden_then_adamw(
      "adamuon", direction, scale=scale, matrix_view=matrix_view,
      weight_decay=weight_decay, mask=mask, learning_rate=learning_rate,
      cautious_weight_decay=cautious_weight_decay,
      is_muon_param=is_muon_param,
      side=gt.AdamWSide(adam_learning_rate, adam_b1, adam_b2, adam_eps,
                        adam_weight_decay, embedding_learning_rate, mu_dtype, nu_dtype))


@gt.AdamWSide.document
@_validate.checks_arguments
def soap_muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    precondition_b2: Optional[float] = None,
    precondition_every: int = 10,
    max_precondition_dim: int = 10000,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    method: str = "standard",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    scale: Optional[str] = "jordan",
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
  r"""SOAP, then orthogonalize: SOAP's preconditioned direction, made msign.

  .. math::
    D_t = Q_L \frac{\hat m_t}{\sqrt{\hat v_t} + ε} Q_R^T \;(\text{SOAP}),\qquad
    W \leftarrow W - η\big(s\,\operatorname{NS}(D_t) + λW\big)

  SOAP's Adam in the eigenbasis of its Kronecker factors gives the direction,
  Newton–Schulz sets every singular value of it to ≈ 1 (Muon's spectral
  step size), s is Muon's ``scale``: a chain of ``gt.scale_by_soap`` and
  ``gt.orthogonalize_newton_schulz``. Arguments of SOAP and Muon keep those
  factories' defaults. This is gradtx's construction of the "SOAP then
  Muon" idea (a modded-nanogpt stack reported at 2690 steps to 3.28 val
  loss against SOAP's 3125, Muon's 3250 and Adam's 5625); that run's exact
  recipe is not reproduced here.

  Args:
    learning_rate: η of the hidden matrices, a number or a schedule.
    b1: SOAP's first-moment decay, in [0, 1).
    b2: SOAP's second-moment decay, in [0, 1).
    eps: SOAP's eps, >= 0.
    precondition_b2: decay of SOAP's Kronecker factors; ``None``: ``b2``.
    precondition_every: basis refresh period, >= 1.
    max_precondition_dim: sides longer than this keep the identity basis.
    ns_steps: Newton–Schulz iterations, >= 1.
    coefficients: Newton–Schulz coefficients (``gt.orthogonalize_newton_schulz``).
    method: ``"standard"`` or ``"gram"`` Newton–Schulz (the same msign up to
      round-off; Gram is cheaper on wide matrices).
    weight_decay: λ, decoupled, a number or a schedule.
    mask: which leaves get weight decay.
    cautious_weight_decay: decay the hidden matrices only where their step
      has the sign of the weight (``gt.decoupled_weight_decay``).
    scale: Muon's shape scale (``"jordan"``, ``"moonlight"`` or ``None``).
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).
    is_muon_param: the routing rule (``go.is_hidden_matrix`` by default).
    adam_*, embedding_learning_rate: the AdamW side (``gt.AdamWSide``).
    mu_dtype: storage of SOAP's and AdamW's first moments.
    nu_dtype: storage of SOAP's and AdamW's second moments.

  Returns:
    An ``optax.GradientTransformation``.

  Reference: Vyas et al., "SOAP", ICLR 2025 (arXiv 2409.11321); Jordan et
  al. 2024 (Muon).
  """
  direction = optax.chain(
      gt.scale_by_soap(
          b1=b1, b2=b2, eps=eps, precondition_b2=precondition_b2,
          precondition_every=precondition_every,
          max_precondition_dim=max_precondition_dim, matrix_view=matrix_view,
          mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      _orthogonalize(ns_steps, coefficients, method, matrix_view),
  )
  return _hidden_then_adamw(
      "soap_muon", direction, scale=scale, matrix_view=matrix_view,
      weight_decay=weight_decay, mask=mask, learning_rate=learning_rate,
      cautious_weight_decay=cautious_weight_decay,
      is_muon_param=is_muon_param,
      side=gt.AdamWSide(adam_learning_rate, adam_b1, adam_b2, adam_eps,
                        adam_weight_decay, embedding_learning_rate, mu_dtype, nu_dtype))


@gt.AdamWSide.document
@_validate.checks_arguments
def vmuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-3,
    nesterov: bool = True,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    method: str = "standard",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    scale: Optional[str] = "jordan",
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
  r"""V-Muon: Muon's spectral step in a diagonal geometry learnt from g².

  With M the Nesterov momentum and D_L, D_R the roots of the mean-normalized
  running row and column means of M⊙M (``gt.in_factored_geometry``):

  .. math::
    Φ_t = D_L^{-1/2}\operatorname{msign}\big(D_L^{-1/2} M_t D_R^{-1/2}\big)D_R^{-1/2}
          \;\text{rescaled to}\; \|\operatorname{msign}(\cdot)\|_F,\qquad
    W \leftarrow W - η(s\,Φ_t + λW)

  the steepest-descent direction under ‖Φ‖ = ‖D_L^{1/2}ΦD_R^{1/2}‖_op: the
  adaptive matrix norm ‖Φ‖_V = Tr(ΦᵀVΦ)^{1/2} (the geometry of a
  second-moment metric V, as in Shampoo's and Adam's steepest-descent
  readings), with the trace norm replaced by Muon's spectral norm and V
  diagonal, learnt from second moments (rows + cols numbers per matrix).
  D = I is Muon. A chain of ``gt.ema`` and
  ``gt.in_factored_geometry(gt.orthogonalize_newton_schulz(...))``.

  Args:
    learning_rate: η of the hidden matrices, a number or a schedule.
    beta: β, the momentum's EMA decay, in [0, 1).
    b2: decay of the row and column statistics, in [0, 1).
    eps: added to the mean-normalized metrics, >= 0 (bounds their condition
      number by ≈ 1/ε).
    nesterov: orthogonalize the look-ahead (as ``go.muon``).
    ns_steps: Newton–Schulz iterations, >= 1.
    coefficients: Newton–Schulz coefficients (``gt.orthogonalize_newton_schulz``).
    method: ``"standard"`` or ``"gram"`` Newton–Schulz (the same msign up to
      round-off; Gram is cheaper on wide matrices).
    weight_decay: λ, decoupled, a number or a schedule.
    mask: which leaves get weight decay.
    cautious_weight_decay: decay the hidden matrices only where their step
      has the sign of the weight (``gt.decoupled_weight_decay``).
    scale: Muon's shape scale (``"jordan"``, ``"moonlight"`` or ``None``).
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).
    is_muon_param: the routing rule (``go.is_hidden_matrix`` by default).
    adam_*, embedding_learning_rate: the AdamW side (``gt.AdamWSide``).
    mu_dtype: storage of the momentum and AdamW's first moment.
    nu_dtype: storage of AdamW's second moment (the row and column
      statistics are float32).

  Returns:
    An ``optax.GradientTransformation``.

  Reference: gradtx's construction (``gt.in_factored_geometry``): Muon's
  spectral step in an adaptive matrix norm; Jordan et al. 2024 (Muon);
  Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology",
  arXiv 2409.20325 (optimizers as steepest descent in a norm); Shazeer &
  Stern 2018 (factored statistics). Measured: see benchmarks/RESULTS.md,
  "Fourth quadrant".
  """
  _validate.check_decay("beta", beta)
  direction = optax.chain(
      gt.ema(beta, nesterov=nesterov, mu_dtype=mu_dtype),
      gt.in_factored_geometry(
          _orthogonalize(ns_steps, coefficients, method, matrix_view), b2=b2, eps=eps,
          matrix_view=matrix_view),
  )
  return _hidden_then_adamw(
      "vmuon", direction, scale=scale, matrix_view=matrix_view,
      weight_decay=weight_decay, mask=mask, learning_rate=learning_rate,
      cautious_weight_decay=cautious_weight_decay,
      is_muon_param=is_muon_param,
      side=gt.AdamWSide(adam_learning_rate, adam_b1, adam_b2, adam_eps,
                        adam_weight_decay, embedding_learning_rate, mu_dtype, nu_dtype))
