"""Muon: momentum orthogonalized by Newton–Schulz for hidden matrices, AdamW elsewhere."""

from typing import Any, Callable, Optional

import jax
import optax

from gradtx import transforms as gt
from gradtx.optimizers.adaptive import adamw
from gradtx.transforms import _tree
from gradtx.transforms import _validate

PathLeafRule = Callable[[tuple, jax.Array], bool]
_NON_HIDDEN_NAMES = ("embed", "position", "wte", "wpe", "logits", "readout")


def is_hidden_matrix(path: tuple, leaf: jax.Array) -> bool:
  """gradtx's default Muon routing rule.

  A leaf goes to Muon when it has 2 to 4 dimensions (a dense kernel, a stack
  of them, or a convolution kernel) and no key on its path names an
  embedding or an output head: a name containing ``"embed"`` (``embedding``,
  ``tok_embed``, ``unembed``), ``"position"`` (learned positions), ``"wte"``,
  ``"wpe"``, ``"logits"`` or ``"readout"``, or ending in ``"head"``
  (``lm_head``, ``head``). Everything
  else (biases, norm scales, embeddings, heads) goes to AdamW. Misrouting an
  embedding or head to Muon raises no error, only trains worse (Jordan 2024;
  optax's default labels every 2-D leaf as Muon).
  """
  if not 2 <= leaf.ndim <= 4:
    return False
  names = _tree.path_names(path)
  return not any(
      any(n in name for n in _NON_HIDDEN_NAMES) or name.endswith("head")
      for name in names
  )


def muon(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    coefficients: gt.Coefficients = "jordan",
    weight_decay: optax.ScalarOrSchedule = 0.0,
    scale: Optional[str] = "jordan",
    compute_dtype: Optional[Any] = None,
    *,
    eps: float = 1e-7,
    method: str = "standard",
    batch_same_shape: bool = False,
    is_muon_param: PathLeafRule = is_hidden_matrix,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: Optional[optax.ScalarOrSchedule] = None,
) -> optax.GradientTransformation:
  r"""Muon for hidden matrices, AdamW for every other leaf.

  For a hidden weight matrix W (flax layout, fan_in × fan_out):

  .. math::
    m_t = β m_{t-1} + (1-β) g_t,\quad
    O_t = \operatorname{NS}(β m_t + (1-β) g_t),\quad
    W \leftarrow W - η_t (s\, O_t + λ W)

  where NS is ``gt.orthogonalize_newton_schulz`` (≈ msign = UVᵀ) and s is
  ``scale``: ``"jordan"`` sqrt(max(1, fan_out/fan_in)) (the reference's
  sqrt(max(1, rows/cols)) in PyTorch's (out, in) layout), ``"moonlight"``
  0.2·sqrt(max(fan_in, fan_out)) (matches AdamW's update RMS, so AdamW's
  learning rate and weight decay transfer), or ``None``. ``nesterov=False``
  orthogonalizes :math:`m_t` itself. Convolution kernels are orthogonalized
  as (kh·kw·fan_in, fan_out) matrices; 3-D leaves as stacks of matrices.
  ``ns_steps``, ``coefficients``, ``eps``, ``compute_dtype``, ``method`` and
  ``batch_same_shape`` are passed to ``gt.orthogonalize_newton_schulz``.

  Which leaves are "hidden matrices" is decided by ``is_muon_param(path,
  leaf)``, by default ``is_hidden_matrix``: 2–4-D leaves whose path names no
  embedding or output head. The rest get ``adamw(adam_learning_rate, adam_b1,
  adam_b2, adam_eps, adam_weight_decay)``; ``adam_learning_rate`` and
  ``adam_weight_decay`` default to ``learning_rate`` and ``weight_decay``
  (right for ``scale="moonlight"``; with ``scale="jordan"`` set an AdamW-sized
  ``adam_learning_rate``).

  Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural
  networks", 2024; Liu et al., "Muon is Scalable for LLM Training",
  arXiv 2502.16982 (the "moonlight" scale).
  """
  _validate.check_decay("beta", beta)
  _validate.check_decay("adam_b1", adam_b1)
  _validate.check_decay("adam_b2", adam_b2)
  _validate.check_non_negative("adam_eps", adam_eps)
  for name, value in (("adam_learning_rate", adam_learning_rate),
                      ("adam_weight_decay", adam_weight_decay)):
    if value is not None:
      _validate.check_scalar_or_schedule(name, value)
  hidden = optax.chain(
      gt.ema(beta, nesterov=nesterov),
      gt.on_matrix_views(
          optax.chain(
              gt.orthogonalize_newton_schulz(
                  ns_steps, coefficients, eps=eps, compute_dtype=compute_dtype,
                  method=method, batch_same_shape=batch_same_shape,
              ),
              gt.scale_by_matrix_shape(scale),
          )
      ),
      gt.decoupled_weight_decay(weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
  other = adamw(
      learning_rate if adam_learning_rate is None else adam_learning_rate,
      adam_b1, adam_b2, adam_eps,
      weight_decay if adam_weight_decay is None else adam_weight_decay,
  )

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: "muon" if is_muon_param(path, leaf) else "adam",
        params,
    )

  return optax.multi_transform({"muon": hidden, "adam": other}, labels)
