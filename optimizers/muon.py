"""Muon: momentum orthogonalized by Newton–Schulz for hidden matrices, AdamW elsewhere."""

from typing import Any, Optional

import optax

from gradtx import transforms as gt
from gradtx._internal import validate as _validate

# The routing rule is the transforms' (gt.is_hidden_matrix); go names it too.
is_hidden_matrix = gt.is_hidden_matrix


@gt.AdamWSide.document
@_validate.checks_arguments
def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    scale: Optional[str] = "jordan",
    compute_dtype: Optional[Any] = None,
    eps: float = 1e-7,
    method: str = "standard",
    preconditioning: str = "frobenius",
    adaptive: bool = False,
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
  r"""Muon for hidden matrices, AdamW for every other leaf.

  For a hidden weight matrix W (flax layout, fan_in × fan_out):

  .. math::
    m_t = β m_{t-1} + (1-β) g_t,\quad
    O_t = \operatorname{NS}(β m_t + (1-β) g_t),\quad
    W \leftarrow W - η_t (s\, O_t + λ W)

  where NS is ``gt.orthogonalize_newton_schulz`` (≈ msign = UVᵀ) of each
  matrix of the leaf's matrix view and s is ``scale``: ``"jordan"``
  sqrt(max(1, fan_out/fan_in)) (the reference's sqrt(max(1, rows/cols)) in
  PyTorch's (out, in) layout), ``"moonlight"`` 0.2·sqrt(max(fan_in, fan_out))
  (matches AdamW's update RMS, so AdamW's learning rate and weight decay
  transfer), or ``None``. ``nesterov=False`` orthogonalizes :math:`m_t`
  itself. This is KellerJordan/Muon's rule; ``optax.contrib.muon``
  bias-corrects both Nesterov terms and makes its Adam side NAdam (README,
  below the optimizer table, lists the differences). Convolution kernels are
  orthogonalized as (kh·kw·fan_in, fan_out) matrices, attention
  query/key/value kernels (in, heads, head_dim) as (in, heads·head_dim);
  declare scanned layer stacks with
  ``matrix_view=gt.stacked_matrix_view()``.

  The other leaves get AdamW (``gt.AdamWSide``: ``adam_b1``, ``adam_b2``,
  ``adam_eps``, ``adam_weight_decay`` at ``adam_learning_rate``), which
  default to ``learning_rate`` and ``weight_decay`` (right for
  ``scale="moonlight"``; with ``scale="jordan"`` set an AdamW-sized
  ``adam_learning_rate``); with ``embedding_learning_rate`` the embeddings
  among them get the same AdamW at that rate.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    beta: β, the momentum's EMA decay, in [0, 1) (the API's name for it).
    nesterov: orthogonalize the look-ahead :math:`β m_t + (1-β) g_t`.
    ns_steps: Newton–Schulz iterations, >= 1 (may be traced).
    coefficients: ``"jordan"``, ``"polar_express"``, ``"cubic"`` or (a, b, c)
      triples (``gt.orthogonalize_newton_schulz``).
    weight_decay: λ, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay, on both the Muon and the AdamW side
      (``optax.masked`` semantics); ``None``: every leaf.
    cautious_weight_decay: on the Muon leaves, decay only where the
      orthogonalized step has the sign of the weight (the modded-nanogpt
      record's cautious weight decay, ``gt.decoupled_weight_decay``); the
      AdamW leaves keep plain decay.
    scale: ``"jordan"``, ``"moonlight"`` or ``None``.
    compute_dtype: dtype of the iterations (e.g. ``jnp.bfloat16``).
    eps: added to the Frobenius norm before the iterations, >= 0.
    method: ``"standard"`` or ``"gram"`` Newton–Schulz.
    preconditioning: how the matrix is scaled before the iterations:
      ``"frobenius"`` (the reference's), ``"spectral"``, ``"schatten"``, ``"aol"``
      (``gt.orthogonalize_newton_schulz``; ``optax.contrib.muon``'s options).
    adaptive: scale each orthogonalized matrix by :math:`\langle M, O_t\rangle`
      (M the matrix orthogonalized), ≈ its nuclear norm
      (``gt.orthogonalize_newton_schulz``; ``optax.contrib.muon``'s
      ``adaptive``, Bernstein & Newhouse 2024): steps shrink as the momentum
      does; η then scales a step of size ≈ ‖M‖_*, so it needs retuning.
      M is the reference's momentum, not bias-corrected, so with
      ``nesterov=False`` the steps are :math:`1-β^t` times
      ``optax.contrib.muon(adaptive=True, nesterov=False)``'s (which debiases
      it; its Nesterov form differs further, as without ``adaptive``), and a
      stacked leaf gets one factor per matrix (optax: one per leaf).
    matrix_view: the matrix-view rule; ``None``: ``gt.fused_qkv_matrix_view()``
      (``gt.flax_matrix_view`` with fused qkv kernels split).
    is_muon_param: the routing rule, a function of ``(path, leaf)``;
      ``None``: ``is_hidden_matrix`` with ``matrix_view``.
    adam_*, embedding_learning_rate: the AdamW side (``gt.AdamWSide``).
    mu_dtype: storage of the momentum (and AdamW's first moment).
    nu_dtype: storage of AdamW's second moment.

  Returns:
    An ``optax.GradientTransformation`` (an ``optax.multi_transform``).

  Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural
  networks", 2024; Liu et al., "Muon is Scalable for LLM Training",
  arXiv 2502.16982 (the "moonlight" scale).
  """
  _validate.check_decay("beta", beta)
  matrix_view = gt.fused_qkv_matrix_view() if matrix_view is None else matrix_view
  hidden = optax.chain(
      gt.ema(beta, nesterov=nesterov, mu_dtype=mu_dtype),
      gt.orthogonalize_newton_schulz(
          ns_steps, coefficients, eps=eps, compute_dtype=compute_dtype,
          method=method, preconditioning=preconditioning, adaptive=adaptive,
          matrix_view=matrix_view,
      ),
      gt.scale_by_matrix_shape(scale, matrix_view=matrix_view),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
  side = gt.AdamWSide(
      adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay,
      embedding_learning_rate, mu_dtype, nu_dtype)
  return side.around("muon", hidden, is_muon_param, learning_rate=learning_rate,
                     weight_decay=weight_decay, mask=mask, matrix_view=matrix_view)
