"""Flax NNX: one forward/backward pass that also records what the model saw.

``value_grad_and_records(loss_fn)(model, *args)`` is ``nnx.value_and_grad``
plus a ``gradtx.transforms.Records`` of the pass:

* every ``nnx.Linear`` called in it: its input x and δ = ∂L/∂y, the gradient
  at its output. δ is read as the gradient of a zero "tap" added to the
  output, y + 0, which changes nothing in the forward pass and whose
  gradient is exactly the output's;
* every ``nnx.MultiHeadAttention`` (and any module that calls
  ``observe_attention`` itself, as a hand-written attention does): each
  head's largest pre-softmax logit.

The taps' shapes come from a first, abstract pass (``jax.eval_shape``), so
``loss_fn`` is traced twice (nothing runs twice). Interception works by
object identity on the copy of the model the pass runs on: ``nnx.Linear``'s
``__call__`` is wrapped for the duration of the pass (a no-op for any other
model), and each attention module's ``attention_fn`` is wrapped on the
copy. An attention module called more than once in the pass (a shared
block) records each head's largest logit over all its calls, the S_max of
Kimi K2's QK-clip (``nnx.MultiHeadAttention``, whose projections are not
``nnx.Linear``; a block whose fused qkv is an ``nnx.Linear`` cannot be
called twice, below). Not recorded:

* silently, layers inside ``nnx.scan``, ``nnx.vmap``, ``nnx.remat``,
  ``nnx.jit`` or ``nnx.cond`` (they run on copies of their own; an attention
  subclass that overrides ``__call__`` must not be used there) and
  ``nnx.Linear`` subclasses that override ``__call__``: K-FAC and QK-clip
  then refuse the missing record;
* with a warning naming it, a layer called inside a JAX transformation
  within the pass (``jax.checkpoint``, ``lax.scan``, ``lax.cond``,
  ``jax.vmap``: its values cannot leave it);
* a second call of the same ``nnx.Linear`` in one pass is an error.

flax is imported inside the functions: ``import gradtx.optimizers`` works
without it.
"""

import contextlib
import contextvars
import functools
import math
import threading
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from gradtx._internal import validate as _validate
from gradtx.flax_integration.model_records import DenseRecord, Records, module_key

_SESSION = contextvars.ContextVar("gradtx_nnx_records", default=None)
# The attention module whose __call__ is running: its attention_fn is a
# static attribute that copies of the module (inside nnx.scan, nnx.remat,
# nnx.vmap) share, so the observation asks who called, as nnx.Linear's
# record does.
_ATTENTION_CALLER = contextvars.ContextVar("gradtx_nnx_attention_caller", default=None)
_PATCH_LOCK = threading.Lock()
_PATCH_USERS = [0]


def _trace_state() -> Any:
  return jax.extend.core.get_opaque_trace_state(convention="nnx")


class _Session:
  """The modules of one recorded pass and what they recorded."""

  def __init__(self, keys: dict, taps: Optional[dict]):
    self.keys = keys  # id(module) -> record key
    self.taps = taps  # None during the abstract (shape) pass
    self.inputs, self.outputs, self.max_logits = {}, {}, {}
    self.trace = _trace_state()  # the pass's own trace

  def key_of(self, module: Any) -> Optional[str]:
    """``module``'s record key, or None: not in the pass, or called inside
    a transformation of its own (whose tracers must not leave it: warned)."""
    name = self.keys.get(id(module))
    if name is not None and _trace_state() != self.trace:
      if self.taps is None:  # warn once, in the abstract pass
        warnings.warn(
            f"nnx_records: {name!r} ran inside a JAX transformation within"
            " the recorded pass (jax.checkpoint, lax.scan, lax.cond, jax.vmap,"
            " ...): not recorded, its values cannot leave that"
            " transformation; call it outside one, or read its records"
            " another way", stacklevel=_validate.user_stacklevel())
      return None
    return name


@_validate.checks_arguments
def max_logits(
    query: jax.Array,
    key: jax.Array,
    *,
    mask: Optional[jax.Array] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
) -> jax.Array:
  r"""Each head's largest logit :math:`\max_{b,i,j} s\, q_{b,i}^h \cdot k_{b,j}^h`.

  ``query`` (..., q_len, heads, depth) and ``key`` (..., kv_len, kv_heads,
  depth), kv_heads dividing heads (grouped-query attention: key head j
  serves query heads j·g … j·g + g − 1), the layout of ``jax.nn.dot_product_attention`` and
  ``nnx.dot_product_attention``; s = 1/√depth unless given. Pairs removed by
  ``mask`` (boolean, broadcastable to (..., heads, q_len, kv_len)) or by
  ``is_causal`` (j > i) are left out. Returns (heads,), float32 or wider,
  outside the gradient.
  """
  q, k = jax.lax.stop_gradient(query), jax.lax.stop_gradient(key)
  heads, kv_heads = q.shape[-2], k.shape[-2]
  if kv_heads not in (1, heads):
    if heads % kv_heads:
      raise ValueError(
          f"max_logits: {heads} query heads cannot share {kv_heads} key heads"
          " (grouped-query attention needs a divisor)")
    k = jnp.repeat(k, heads // kv_heads, axis=-2)  # GQA: each key head serves a group
  dtype = jnp.promote_types(jnp.promote_types(q.dtype, k.dtype), jnp.float32)
  s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  logits = jnp.einsum("...qhd,...khd->...hqk", q.astype(dtype), k.astype(dtype),
                      precision=jax.lax.Precision.HIGHEST) * s
  valid = jnp.ones(logits.shape[-2:], bool)
  if is_causal:
    valid = jnp.tril(valid)
  if mask is not None:
    valid = valid & jnp.asarray(mask).astype(bool)
  logits = jnp.where(valid, logits, -jnp.inf)
  axes = tuple(i for i in range(logits.ndim) if i != logits.ndim - 3)
  return jnp.max(logits, axis=axes)


@_validate.checks_arguments
def observe_attention(
    module: Any,
    query: jax.Array,
    key: jax.Array,
    *,
    mask: Optional[jax.Array] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
) -> None:
  """Records ``max_logits(query, key, ...)`` under ``module``'s path.

  Call it from a hand-written attention, next to the attention itself
  (``nnx.MultiHeadAttention`` is observed automatically). Outside a
  recorded pass it does nothing and costs nothing.
  """
  session = _SESSION.get()
  name = None if session is None else session.key_of(module)
  if name is not None:
    logits = max_logits(query, key, mask=mask, is_causal=is_causal, scale=scale)
    earlier = session.max_logits.get(name)
    session.max_logits[name] = logits if earlier is None else jnp.maximum(earlier, logits)


def _recording_call(original: Callable) -> Callable:
  @functools.wraps(original)
  def call(self, inputs, *args, **kwargs):
    y = original(self, inputs, *args, **kwargs)
    session = _SESSION.get()
    name = None if session is None else session.key_of(self)
    if name is None:
      return y
    if name in session.inputs:
      raise ValueError(
          f"nnx_records: layer {name!r} was called twice in one recorded"
          " pass; records hold one call per layer")
    session.inputs[name] = jax.lax.stop_gradient(inputs)
    if session.taps is None:
      session.outputs[name] = y
      return y
    return y + session.taps[name].astype(y.dtype)

  return call


def _calling_attention(original: Callable) -> Callable:
  @functools.wraps(original)
  def call(self, *args, **kwargs):
    token = _ATTENTION_CALLER.set(self)
    try:
      return original(self, *args, **kwargs)
    finally:
      _ATTENTION_CALLER.reset(token)

  return call


_ORIGINAL_CALLS = {}  # class -> its own __call__, while patched


@contextlib.contextmanager
def _calls_patched():
  """``nnx.Linear.__call__`` records, and ``nnx.MultiHeadAttention.__call__``
  names its caller, while any pass is being traced; the originals are put
  back when the last pass ends."""
  from flax import nnx

  with _PATCH_LOCK:
    if _PATCH_USERS[0] == 0:
      for cls, wrap in ((nnx.Linear, _recording_call),
                        (nnx.MultiHeadAttention, _calling_attention)):
        _ORIGINAL_CALLS[cls] = cls.__call__
        cls.__call__ = wrap(cls.__call__)
    _PATCH_USERS[0] += 1
  try:
    yield
  finally:
    with _PATCH_LOCK:
      _PATCH_USERS[0] -= 1
      if _PATCH_USERS[0] == 0:
        for cls, original in _ORIGINAL_CALLS.items():
          cls.__call__ = original
        _ORIGINAL_CALLS.clear()


def _observed_attention_fn(module: Any, attention_fn: Callable) -> Callable:
  """``attention_fn`` that first observes the logits of the module calling
  it: the one ``MultiHeadAttention.__call__`` names (a copy made by an NNX
  transform is not in the pass: not recorded), else ``module``, whose
  attention function this is (a subclass with its own ``__call__``)."""
  def fn(query, key, value, *args, mask=None, is_causal=False, **kwargs):
    caller = _ATTENTION_CALLER.get()
    observe_attention(module if caller is None else caller, query, key, mask=mask,
                      is_causal=is_causal)
    return attention_fn(query, key, value, *args, mask=mask,
                        is_causal=is_causal, **kwargs)

  return fn


@contextlib.contextmanager
def _recording(model: Any, taps: Optional[dict]):
  """Runs the body as a recorded pass over ``model`` (a private copy)."""
  from flax import nnx

  keys = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module):
      keys[id(node)] = module_key(path)
      if isinstance(node, nnx.MultiHeadAttention):
        node.attention_fn = _observed_attention_fn(node, node.attention_fn)
  session = _Session(keys, taps)
  token = _SESSION.set(session)
  try:
    with _calls_patched():
      yield session
  finally:
    _SESSION.reset(token)


def _zeros_like_abstract(s: jax.ShapeDtypeStruct) -> jax.Array:
  sharding = getattr(s, "sharding", None)
  explicit = isinstance(sharding, jax.NamedSharding) and any(
      t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types)
  return jnp.zeros(s.shape, s.dtype, out_sharding=sharding if explicit else None)


@_validate.checks_arguments
def value_grad_and_records(
    loss_fn: Callable, *, has_aux: bool = False, wrt: Any = None
) -> Callable:
  """``nnx.value_and_grad(loss_fn)`` that also returns the pass's ``Records``.

  ``value_grad_and_records(loss_fn)(model, *args, **kwargs)`` returns
  ``(value, grads, records)``: ``value`` is ``loss_fn(model, ...)`` (a
  ``(loss, aux)`` pair with ``has_aux``), ``grads`` the gradient of the loss
  with respect to the ``wrt`` variables (default ``nnx.Param``) as an
  ``nnx.State``, and ``records`` a ``gradtx.transforms.Records`` with one
  ``DenseRecord(inputs, output_grads)`` per ``nnx.Linear`` called and the
  per-head max logits of every observed attention, keyed by module path
  (``"blocks/0/qkv"``). Other state the pass changes (RNG counters, batch
  statistics) is written back to ``model``, as ``nnx.value_and_grad`` does.
  Traceable: use it inside ``nnx.jit`` or ``jax.jit``; on a mesh the taps
  take the outputs' shardings, so δ is sharded like the activations.

  Example::

    loss, grads, records = value_grad_and_records(loss_fn)(model, x, y)
    optimizer.update(model, grads, records=records)  # K-FAC, QK-clip
  """
  from flax import nnx

  wrt = nnx.Param if wrt is None else wrt

  def value_grads_records(model, *args, **kwargs):
    graphdef, params, rest = nnx.split(model, wrt, ...)

    def run(params, taps, rest):
      # The copy's variables are rebuilt inside this trace (tree.map makes
      # new ones), so the loss may update them (batch statistics, RNGs).
      copy = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
      with _recording(copy, taps) as session:
        out = loss_fn(copy, *args, **kwargs)
      loss, aux = out if has_aux else (out, None)
      changed = nnx.state(copy, nnx.Not(wrt))
      return loss, (aux, session.inputs, session.outputs, session.max_logits,
                    changed)

    shapes = jax.eval_shape(lambda p, r: run(p, None, r)[1][2], params, rest)
    taps = jax.tree.map(_zeros_like_abstract, shapes)
    (loss, (aux, inputs, _, logits, changed)), (grads, deltas) = (
        jax.value_and_grad(run, argnums=(0, 1), has_aux=True)(params, taps, rest))
    nnx.update(model, changed)
    dense = {k: DenseRecord(inputs[k], deltas[k]) for k in inputs}
    value = (loss, aux) if has_aux else loss
    return value, grads, Records(dense, logits)

  return value_grads_records
