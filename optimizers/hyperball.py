"""Hyperball optimizers: AdamH and MuonH, matrices held at their initial norm."""

from typing import Any, Optional

import jax
import optax

from gradtx import transforms as gt
from gradtx._internal import routing as _routing
from gradtx._internal import validate as _validate


@gt.AdamWSide.document
@_validate.checks_arguments
def adamh(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    matrix_view: Optional[gt.MatrixViewRule] = None,
    is_hyperball_param: Optional[gt.PathLeafRule] = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.95,
    adam_eps: float = 1e-8,
    adam_weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""AdamH: Adam's direction, a step of fixed angle, matrices kept at their norm.

  For each matrix W of a leaf picked by ``is_hyperball_param``:

  .. math::
    u_t = \frac{\hat m_t}{\sqrt{\hat v_t} + ε},\quad
    W \leftarrow R\,\operatorname{N}\!\left(W - η_t R\,\operatorname{N}(u_t)\right),
    \quad R = \lVert W\rVert_F,\ \operatorname{N}(x) = x/\lVert x\rVert_F

  (``gt.scale_by_adam`` then ``gt.hyperball_step``): no weight decay, the
  norm of W stays its initial one. Marin's default learning rate for AdamH
  is :math:`\sqrt{η λ}` of a tuned AdamW (η its rate, λ its decay). Every
  other leaf (biases, norm scales, embeddings) gets AdamW at
  ``adam_learning_rate`` (``None``: ``learning_rate``; set an AdamW-sized
  one), without decay by default, as Marin's plain Adam group. Marin's
  configuration also clips the gradient's global norm at 1: chain
  ``optax.clip_by_global_norm(1.0)`` in front for that.

  Args:
    learning_rate: η, the step relative to each matrix's norm, a
      non-negative number or a schedule.
    b1: decay of AdamH's first moment, in [0, 1).
    b2: decay of AdamH's second moment, in [0, 1).
    eps: added to AdamH's denominator, >= 0.
    matrix_view: the matrix-view rule; ``None``: ``gt.fused_qkv_matrix_view()``.
    is_hyperball_param: the routing rule, a function of ``(path, leaf)``;
      ``None``: every leaf with a matrix view that is no embedding, output
      heads included, as Marin routes every ``Linear`` (``gt.matrix_roles``'
      ``"hidden"`` and ``"output_head"``: axis names, path names, shape).
    adam_*: the AdamW side (``gt.AdamWSide``).
    mask: which AdamW leaves get the decay (``optax.masked`` semantics).
    mu_dtype: storage of the first moments.
    nu_dtype: storage of the second moments (``jnp.float32`` for float16
      parameters: a float16 v underflows, README, Dtypes, and the hyperball
      normalisation spreads one overflowed step to the whole leaf).

  Returns:
    An ``optax.GradientTransformation`` (an ``optax.multi_transform``).

  Reference: Wen, Dang, Lyu, Ma & Liang, "Fantastic Pretraining Optimizers
  and Where to Find Them II: Hyperball Optimization", arXiv 2606.16899, 2026;
  marin-community/marin ``levanter/optim/adamh.py``.
  """
  matrix_view = gt.fused_qkv_matrix_view() if matrix_view is None else matrix_view
  hidden = optax.chain(
      gt.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.hyperball_step(learning_rate, matrix_view=matrix_view),
  )
  side = gt.AdamWSide(adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay,
                      mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  # Marin routes every matrix but the embeddings, output heads included.
  return side.around(
      "adamh", hidden, is_hyperball_param,
      learning_rate=learning_rate, weight_decay=0.0, mask=mask, matrix_view=matrix_view,
      heads=None if is_hyperball_param else hidden)


@gt.AdamWSide.document
@_validate.checks_arguments
def muonh(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    eps: float = 1e-8,
    compute_dtype: Optional[Any] = None,
    method: str = "standard",
    matrix_view: Optional[gt.MatrixViewRule] = None,
    is_muon_param: Optional[gt.PathLeafRule] = None,
    is_hyperball_param: Optional[gt.PathLeafRule] = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.95,
    adam_eps: float = 1e-8,
    adam_weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""MuonH: Muon's orthogonalized momentum as a step of fixed angle on each matrix's sphere.

  For a hidden matrix W (``is_muon_param``):

  .. math::
    m_t = μ m_{t-1} + g_t,\quad
    O_t = \operatorname{NS}(g_t + μ m_t),\quad
    W \leftarrow R\,\operatorname{N}\!\left(W - η_t R\,\operatorname{N}(O_t)\right)

  (``gt.momentum``, ``gt.orthogonalize_newton_schulz``,
  ``gt.hyperball_step``; ``nesterov=False`` orthogonalizes :math:`m_t`),
  R = ‖W‖_F held at its initial value, no weight decay and no shape scale
  (the normalization N removes any scale). As in Marin's ``muonh.py``, the
  other matrices that ``is_hyperball_param`` picks (by default the output
  heads: matrices named as heads, not embeddings) take AdamH's step
  (``go.adamh``'s rule, with ``adam_b1``, ``adam_b2``, ``adam_eps``) and the
  remaining leaves AdamW at ``adam_learning_rate`` (``None``:
  ``learning_rate``), without decay by default. Marin also clips the
  gradient's global norm at 1: chain ``optax.clip_by_global_norm(1.0)`` in
  front for that.

  Args:
    learning_rate: η, the step relative to each matrix's norm, a
      non-negative number or a schedule.
    momentum: μ, the heavy-ball momentum, in [0, 1).
    nesterov: orthogonalize the look-ahead :math:`g_t + μ m_t`.
    ns_steps: Newton–Schulz iterations, >= 1.
    coefficients: ``"jordan"``, ``"polar_express"``, ``"cubic"`` or (a, b, c)
      triples (``gt.orthogonalize_newton_schulz``).
    eps: added to the Frobenius norm before the iterations, >= 0 (Marin's
      ``muon_epsilon``).
    compute_dtype: dtype of the iterations (e.g. ``jnp.bfloat16``).
    method: ``"standard"`` or ``"gram"`` Newton–Schulz.
    matrix_view: the matrix-view rule; ``None``: ``gt.fused_qkv_matrix_view()``.
    is_muon_param: the rule of the MuonH leaves, a function of
      ``(path, leaf)``; ``None``: ``go.is_hidden_matrix``.
    is_hyperball_param: the rule of the AdamH leaves among the others;
      ``None``: the output heads with a matrix view (``gt.matrix_roles``:
      by axis names, path names, or shape).
    adam_b1: b1 of the AdamH and AdamW leaves, in [0, 1).
    adam_b2: b2 of the AdamH and AdamW leaves, in [0, 1).
    adam_eps: eps of the AdamH and AdamW leaves, >= 0.
    adam_*: the AdamW side (``gt.AdamWSide``).
    mask: which AdamW leaves get the decay (``optax.masked`` semantics).
    mu_dtype: storage of the momentum and the first moments.
    nu_dtype: storage of the second moments (``jnp.float32`` for float16
      parameters: a float16 v underflows, README, Dtypes, and the hyperball
      normalisation spreads one overflowed step to the whole leaf).

  Returns:
    An ``optax.GradientTransformation`` (nested ``optax.multi_transform``).

  Reference: Wen, Dang, Lyu, Ma & Liang, "Fantastic Pretraining Optimizers
  and Where to Find Them II: Hyperball Optimization", arXiv 2606.16899, 2026;
  marin-community/marin ``levanter/optim/muonh.py``.
  """
  _validate.check_decay("momentum", momentum)
  # Checked before the AdamH chain, which would name them b1, b2 and eps.
  side = gt.AdamWSide(adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay,
                      mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  matrix_view = gt.fused_qkv_matrix_view() if matrix_view is None else matrix_view
  muonh_chain = optax.chain(
      gt.momentum(momentum, nesterov=nesterov, mu_dtype=mu_dtype),
      gt.orthogonalize_newton_schulz(
          ns_steps, coefficients, eps=eps, compute_dtype=compute_dtype,
          method=method, matrix_view=matrix_view),
      gt.hyperball_step(learning_rate, matrix_view=matrix_view))
  adamh_chain = optax.chain(
      gt.scale_by_adam(adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
      gt.hyperball_step(learning_rate, matrix_view=matrix_view))
  if is_hyperball_param is None:
    # The output heads gt.matrix_roles finds (axis names, path names, shape).
    return side.around(
        "muonh", muonh_chain, is_muon_param, heads=adamh_chain,
        learning_rate=learning_rate, weight_decay=0.0, mask=mask, matrix_view=matrix_view)
  if is_muon_param is None:
    def is_muon_param(path, leaf):
      return gt.is_hidden_matrix(path, leaf, matrix_view=matrix_view)
  sphere = optax.multi_transform(
      {"muonh": muonh_chain, "adamh": adamh_chain},
      lambda params: jax.tree_util.tree_map_with_path(
          lambda path, leaf: "muonh" if is_muon_param(_routing.plain_path(path), leaf)
          else "adamh", params))
  return side.around(
      "hyperball", sphere,
      lambda path, leaf: is_muon_param(path, leaf) or is_hyperball_param(path, leaf),
      learning_rate=learning_rate, weight_decay=0.0, mask=mask, matrix_view=matrix_view)
