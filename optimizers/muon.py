"""Muon: momentum orthogonalized by Newton–Schulz for hidden matrices, AdamW elsewhere."""

from typing import Any, Callable, Optional

import jax
import optax

from gradtx import transforms as gt
from gradtx._internal import names as _names
from gradtx._internal import validate as _validate
from gradtx.optimizers.adam import adamw
from gradtx.transforms import matrix_view as _matrix_view
from gradtx.transforms.weight_decay import MaskOrFn

PathLeafRule = Callable[[tuple, jax.Array], bool]


def is_hidden_matrix(
    path: tuple, leaf: jax.Array, *,
    matrix_view: Optional[gt.MatrixViewRule] = None,
) -> bool:
  """gradtx's default Muon routing rule.

  A leaf goes to Muon when it has a matrix view (``gt.flax_matrix_view``, or
  ``matrix_view``: dense and convolution kernels, attention projections;
  not biases, norm scales, 1-D or empty leaves) and no key on its path names
  an embedding or an output head: a name containing ``"embed"``
  (``embedding``, ``tok_embed``), ``"position"`` (learned positions),
  ``"wte"``, ``"wpe"``, ``"unembed"``, ``"logits"`` or ``"readout"``, or
  ending in ``"head"`` (``lm_head``, ``head``), or named ``"pos"``.
  Everything else goes to AdamW. The optimizers' default routing adds one
  rule of the whole tree: a (d, vocab) kernel is an output head when the
  tree holds a token embedding of shape (vocab, d), vocab != d, whatever the
  kernel is called (Linen's ``Dense_2``); gt.describe shows where each leaf
  goes. Misrouting an embedding or head to Muon raises no error, only
  trains worse (Jordan 2024; optax's default labels every 2-D leaf as Muon).
  """
  if _matrix_view.view_of(path, leaf, matrix_view) is None:
    return False
  names = _names.path_names(path)
  return not (_names.is_embedding(names) or _names.is_output_head(names))


def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    cautious_weight_decay: bool = False,
    scale: Optional[str] = "jordan",
    compute_dtype: Optional[Any] = None,
    eps: float = 1e-7,
    method: str = "standard",
    matrix_view: Optional[gt.MatrixViewRule] = None,
    is_muon_param: Optional[PathLeafRule] = None,
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
  itself. Convolution kernels are orthogonalized as (kh·kw·fan_in, fan_out)
  matrices, attention query/key/value kernels (in, heads, head_dim) as
  (in, heads·head_dim); declare scanned layer stacks with
  ``matrix_view=gt.stacked_matrix_view()``.

  The other leaves get ``adamw(adam_learning_rate, b1=adam_b1, b2=adam_b2,
  eps=adam_eps, weight_decay=adam_weight_decay)``; ``adam_learning_rate``
  and ``adam_weight_decay`` default to ``learning_rate`` and ``weight_decay``
  (right for ``scale="moonlight"``; with ``scale="jordan"`` set an
  AdamW-sized ``adam_learning_rate``). With ``embedding_learning_rate`` the
  embeddings among them (token tables, learned positions: the names
  ``is_hidden_matrix`` keeps off Muon, not output heads) get the same AdamW
  at that learning rate instead: on the main job's race the embeddings
  learnt best at 10× the AdamW side's rate (benchmarks/RESULTS.md, "Fourth
  quadrant"; modded-nanogpt also gives its embedding a far larger rate than
  its head).

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
    matrix_view: the matrix-view rule; ``None``: ``gt.fused_qkv_matrix_view()``
      (``gt.flax_matrix_view`` with fused qkv kernels split).
    is_muon_param: the routing rule, a function of ``(path, leaf)``;
      ``None``: ``is_hidden_matrix`` with ``matrix_view``.
    adam_learning_rate: η of the AdamW leaves; ``None``: ``learning_rate``.
    adam_b1: AdamW's b1, in [0, 1).
    adam_b2: AdamW's b2, in [0, 1).
    adam_eps: AdamW's eps, >= 0.
    adam_weight_decay: AdamW's λ; ``None``: ``weight_decay``.
    embedding_learning_rate: η of the embeddings' AdamW, a non-negative
      number or a schedule; ``None``: they are AdamW leaves like the others.
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
          method=method, matrix_view=matrix_view,
      ),
      gt.scale_by_matrix_shape(scale, matrix_view=matrix_view),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
  return matrices_and_adamw_elsewhere(
      "muon", hidden, is_muon_param, matrix_view=matrix_view, learning_rate=learning_rate,
      adam_learning_rate=adam_learning_rate, adam_b1=adam_b1, adam_b2=adam_b2,
      adam_eps=adam_eps, weight_decay=weight_decay, adam_weight_decay=adam_weight_decay,
      embedding_learning_rate=embedding_learning_rate, mask=mask, mu_dtype=mu_dtype,
      nu_dtype=nu_dtype)


def matrices_and_adamw_elsewhere(
    label: str, hidden: optax.GradientTransformation, is_muon_param, *, matrix_view,
    learning_rate, adam_learning_rate, adam_b1, adam_b2, adam_eps, weight_decay,
    adam_weight_decay, mask, embedding_learning_rate=None, mu_dtype=None, nu_dtype=None,
) -> optax.GradientTransformation:
  """``hidden`` on the leaves ``is_muon_param`` picks (``None``: the hidden
  matrices of ``matrix_view``), AdamW on the others, as one
  ``optax.multi_transform`` labelled ``label`` / ``"adam"`` (and
  ``"embedding"``: the embeddings' AdamW at ``embedding_learning_rate``,
  when it is given). AdamW's arguments default to the matrix side's
  (``adam_learning_rate=None``: ``learning_rate``; ``adam_weight_decay=None``:
  ``weight_decay``). Shared by Muon, Dion and the fourth quadrant."""
  _validate.check_decay("adam_b1", adam_b1)
  _validate.check_decay("adam_b2", adam_b2)
  _validate.check_non_negative("adam_eps", adam_eps)
  for name, value in (("adam_learning_rate", adam_learning_rate),
                      ("adam_weight_decay", adam_weight_decay),
                      ("embedding_learning_rate", embedding_learning_rate)):
    if value is not None:
      _validate.check_scalar_or_schedule(name, value)

  def adamw_at(rate):
    return adamw(
        rate, b1=adam_b1, b2=adam_b2, eps=adam_eps,
        weight_decay=weight_decay if adam_weight_decay is None else adam_weight_decay,
        mask=mask, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
    )

  transforms = {label: hidden, "adam": adamw_at(
      learning_rate if adam_learning_rate is None else adam_learning_rate)}
  if embedding_learning_rate is not None:
    transforms["embedding"] = adamw_at(embedding_learning_rate)
  by_shape = is_muon_param is None
  if is_muon_param is None:
    def is_muon_param(path, leaf):
      return is_hidden_matrix(path, leaf, matrix_view=matrix_view)

  def label_of(path, leaf, head):
    if not head and is_muon_param(path, leaf):
      return label
    if "embedding" in transforms and _names.is_embedding(_names.path_names(path)):
      return "embedding"
    return "adam"

  def labels(params):
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    heads = (_names.heads_by_shape([(_names.path_names(p), jax.numpy.shape(x)) for p, x in flat])
             if by_shape else [False] * len(flat))
    return treedef.unflatten([label_of(p, x, h) for (p, x), h in zip(flat, heads)])

  return optax.multi_transform(transforms, labels)
