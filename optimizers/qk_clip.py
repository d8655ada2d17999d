"""QK-clip (Kimi K2's MuonClip): cap attention logits by rescaling W_q and W_k per head."""

import functools
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import routing as _routing
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.flax_integration import model_records


class HeadScaling(NamedTuple):
  """How one parameter leaf is rescaled per attention head.

  Attributes:
    attention: key of the attention module in ``records.max_logits``.
    factor: ``factor(gamma) -> multiplier``, from the (heads,) vector
      γ = min(1, τ/S_max) to an array broadcastable to the leaf (1 where the
      leaf is not scaled). Query and key parts get √γ, so q·k scales by γ.
    heads: the number of query heads the leaf holds, if known: a record of
      another length is refused (it broadcast silently, or failed deep).
  """

  attention: str
  factor: Callable[[jax.Array], jax.Array]
  heads: Optional[int] = None


QKRule = Callable[[tuple, jax.Array], Optional[HeadScaling]]


def _per_head(gamma: jax.Array) -> jax.Array:
  return jnp.sqrt(gamma)[:, None]


def _fused_qkv(gamma: jax.Array, features: int) -> jax.Array:
  heads = gamma.shape[0]
  if features % (3 * heads):
    raise ValueError(
        f"qk_clip: a fused qkv leaf with {features} output features cannot be"
        f" split into (3, {heads} heads, head_dim)")
  scale = jnp.repeat(jnp.sqrt(gamma), features // (3 * heads))
  return jnp.concatenate([scale, scale, jnp.ones_like(scale)])


def default_qk_rule(path: tuple, leaf: jax.Array) -> Optional[HeadScaling]:
  """gradtx's rule for finding query and key weights and their head axis.

  * ``nnx.MultiHeadAttention``: leaves ``<attn>/query/{kernel,bias}`` and
    ``<attn>/key/{kernel,bias}``, kernels (in, heads, head_dim) and biases
    (heads, head_dim): each head's slice is scaled by √γ_h; the record is
    ``<attn>``'s.
  * a fused projection named ``qkv`` (``<block>/qkv/{kernel,bias}``, an
    ``nnx.Linear`` from d to 3·d features laid out (3, heads, head_dim), q
    then k then v, as in nanoGPT and examples/char_lm.py): the q and k
    features of head h get √γ_h, v none; the record is ``<block>``'s (the
    module that calls ``observe_attention``). The number of heads is the
    record's length, which nothing in the kernel can check: a record of
    another model (2 heads for a 4-head kernel) splits the features wrong,
    silently. A fused kernel whose output is
    not three times its input warns at ``init``: the rule assumes q, k and v
    of one width (3, heads, head_dim), which a grouped-query layout
    ((H + 2·H_kv)·head_dim) is not; pass ``rule=`` for one.

  Everything else returns ``None`` (left as the base's update). Write your
  own rule for other layouts, e.g. MLA's decoupled rotary parts (K2 scales
  the per-head rotary query by γ and leaves the shared rotary key alone).
  """
  names = model_records.leaf_names(path)
  if len(names) < 2 or names[-1] not in ("kernel", "bias"):
    return None
  owner, part = model_records.module_key(names[:-2]), names[-2]
  if part in ("query", "key") and leaf.ndim >= 2:
    return HeadScaling(owner, _per_head, heads=leaf.shape[-2])
  if part == "qkv":
    return HeadScaling(owner, functools.partial(_fused_qkv, features=leaf.shape[-1]))
  return None


def _check_default_layouts(flat: list) -> None:
  """``default_qk_rule``'s checks at ``init``: a fused ``qkv`` kernel not
  (d, 3·d) warns (a grouped-query layout's heads would be split wrong,
  silently; a q of another width than d, Gemma's, is split right), and
  attention that normalises q and k is refused (``normalize_qk``: the logits
  do not depend on W_q's and W_k's scale, so clipping them only shrinks the
  weights, every step)."""
  modules = {model_records.module_key(model_records.leaf_names(path)[:-1]) for path, _ in flat}
  for path, leaf in flat:
    names = model_records.leaf_names(path)
    scaling = default_qk_rule(path, leaf)
    if scaling is None:
      continue
    if names[-2] == "qkv" and names[-1] == "kernel" and (
        jnp.ndim(leaf) != 2 or leaf.shape[-1] != 3 * leaf.shape[0]):
      warnings.warn(
          f"qk_clip: the fused qkv kernel {jax.tree_util.keystr(path)} {jnp.shape(leaf)} does"
          " not map d features to 3·d: default_qk_rule splits it as (3, heads, head_dim), q,"
          " k and v of one width, which is right for a q wider or narrower than d but wrong"
          " for grouped-query attention (k and v narrower than q): pass rule= for that",
          stacklevel=_validate.user_stacklevel())
    prefix = f"{scaling.attention}/" if scaling.attention else ""
    normalized = [f"{prefix}{ln}" for ln in ("query_ln", "key_ln")
                  if f"{prefix}{ln}" in modules]
    if normalized:
      raise ValueError(
          f"qk_clip: {scaling.attention!r} normalises its queries and keys ({normalized[0]}):"
          " its logits do not depend on the scale of W_q and W_k, so clipping them would only"
          " shrink the weights every step. Leave it out with rule=, or bound the logits"
          " another way (QK-norm already does)")


class QkClipState(NamedTuple):
  """State of ``qk_clip``: the base optimizer's state (QK-clip keeps none)."""

  inner_state: optax.OptState


@_validate.checks_arguments
def qk_clip(
    base: optax.GradientTransformation,
    *,
    threshold: float = 100.0,
    rule: Optional[QKRule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""After the base step, heads whose max logit exceeded τ get W_q, W_k scaled by √(τ/S_max).

  With u the base's update and S_h the largest pre-softmax logit of head h
  in the recorded forward pass (``records.max_logits``, at the current
  parameters):

  .. math::
    γ_h = \min(1, τ / S_h),\qquad
    W'_{q,h} = \sqrt{γ_h}\,(W_{q,h} + u_{q,h}),\quad
    W'_{k,h} = \sqrt{γ_h}\,(W_{k,h} + u_{k,h})

  so that head's logits q·k are scaled by γ_h (biases of q and k are scaled
  with their kernels, which keeps that exact). The update returned is
  W' − W on those slices and u, bit for bit, everywhere else (unclipped
  heads, values, every other leaf). Which leaves are queries and keys, and
  their head axis, is ``rule(path, leaf)`` (``default_qk_rule``: flax
  ``nnx.MultiHeadAttention`` and a fused ``qkv`` projection). Since it
  rewrites the final update, ``qk_clip`` is the outermost transform.

  This is Algorithm 1 of the Kimi K2 report (MuonClip, there around Muon):
  S_max comes from the step's own forward pass, so after the step the
  logits on that batch are γ_h times those of the base's new weights,
  ≈ τ when the step is small against the weights. Heads are clipped one
  by one ("per-head"), only those above τ. A non-finite record (a diverged
  forward pass) is taken as it comes: S = NaN clips nothing (NaN > τ is
  false), S = +inf gives γ = 0 and zeroes that head's W_q and W_k.

  ``update(updates, state, params, *, records, **extra)`` needs params and
  the ``Records`` of the pass (``gradtx.optimizers.nnx_records``); the
  records and the other keyword arguments are passed on to ``base``. A
  matched leaf whose attention has no record raises a ``ValueError``. Under
  ``optax.MultiSteps`` the update runs on the last micro-step with that
  call's records only: pass the element-wise maximum of every micro-batch's
  max logits, or heads that only the earlier micro-batches pushed above τ
  are left unclipped.

  Args:
    base: the optimizer whose update is clipped (``go.muon`` in K2).
    threshold: τ > 0 (K2: 100).
    rule: ``rule(path, leaf) -> HeadScaling | None``; ``None``: ``default_qk_rule``.

  Returns:
    A ``GradientTransformationExtraArgs`` with state ``QkClipState``.

  Reference: Kimi Team, "Kimi K2: Open Agentic Intelligence", arXiv
  2507.20534, §2.1 and Algorithm 1; Su, "QK-Clip" (kexue.fm 11126, 2025).
  """
  _validate.check_transformation("base", base)
  _validate.check_in_range("threshold", threshold, 0.0, float("inf"),
                           low_inclusive=False)
  base = optax.with_extra_args_support(base)
  rule = default_qk_rule if rule is None else rule

  def init_fn(params):
    flat = [(_routing.plain_path(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    if rule is default_qk_rule and not _tree.is_params_placeholder(params):
      _check_default_layouts(flat)
    if not _tree.is_params_placeholder(params) and not any(
        rule(path, leaf) is not None for path, leaf in flat):
      warnings.warn(
          "qk_clip: no leaf of the parameters matches its rule, so nothing will be clipped"
          " (default_qk_rule finds nnx.MultiHeadAttention's query and key and a fused 'qkv'"
          " kernel); pass rule= for another layout (q_proj/k_proj, Linen's auto-named"
          " Dense_0)", stacklevel=_validate.user_stacklevel())
    return QkClipState(base.init(params))

  def clip(records, path, u, p):
    scaling = rule(_routing.plain_path(path), u)
    if scaling is None:
      return u
    logits = None if records is None else records.max_logits.get(scaling.attention)
    if logits is None:
      raise model_records.missing_record_error(
          "max-logit", None if records is None else scaling.attention,
          jax.tree_util.keystr(path), "qk_clip")
    if jnp.ndim(logits) != 1 or (scaling.heads is not None
                                  and jnp.shape(logits)[0] != scaling.heads):
      raise ValueError(
          f"qk_clip: the max-logit record {scaling.attention!r} has shape"
          f" {jnp.shape(logits)}, but {jax.tree_util.keystr(path)} {jnp.shape(u)} needs one"
          f" logit per query head{'' if scaling.heads is None else f' ({scaling.heads},)'}"
          " (a grouped-query key, whose heads each serve several query heads, needs its"
          " own rule=)")
    dtype = _tree.compute_dtype(u)
    logits = logits.astype(dtype)
    gamma = jnp.where(logits > threshold, threshold / logits, 1.0)
    factor = jnp.broadcast_to(scaling.factor(gamma).astype(dtype), u.shape)
    new = p.astype(dtype) + u.astype(dtype)
    clipped = (factor * new - p.astype(dtype)).astype(u.dtype)
    return jnp.where(factor == 1, u, clipped)

  def update_fn(updates, state, params=None, *, records=None, **extra_args):
    if params is None:
      raise ValueError("qk_clip's update needs params, as in"
                       " tx.update(grads, state, params, records=records)")
    u, inner_state = base.update(
        updates, state.inner_state, params, records=records, **extra_args)
    u = jax.tree_util.tree_map_with_path(
        functools.partial(clip, records), u, params)
    return u, QkClipState(inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
