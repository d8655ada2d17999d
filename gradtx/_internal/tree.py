"""Tree and dtype helpers shared by gradtx (on top of ``optax.tree``).

The dtype policy of every gradtx transform:

* arithmetic runs in ``compute_dtype(x)``: float32 for low-precision floats
  (bf16, f16), the leaf's own dtype otherwise (float32, float64);
* state leaves are stored in the requested ``*_dtype`` or, by default, in the
  dtype of the parameter they shadow;
* the outgoing update has the dtype of the incoming update, so bf16 parameters
  stay bf16 after ``optax.apply_updates``.
"""

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import sharding as _sharding


def dtype_of(x: Any) -> jnp.dtype:
  """The dtype of an array, a ``jax.ShapeDtypeStruct`` or a Python number."""
  dtype = getattr(x, "dtype", None)
  return jnp.dtype(dtype) if dtype is not None else jnp.result_type(x)


def compute_dtype(x: Any) -> jnp.dtype:
  """The dtype arithmetic on ``x`` runs in: at least float32 (complex stays complex)."""
  return jnp.promote_types(dtype_of(x), jnp.float32)


def real_dtype(dtype: Any) -> jnp.dtype:
  """The real counterpart of a dtype (float32 for complex64)."""
  dtype = jnp.dtype(dtype)
  return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def abs_sq(x: jax.Array) -> jax.Array:
  """|x|², real: x·x, or x·conj(x) for complex x (a second moment's input)."""
  if jnp.iscomplexobj(x):
    return jnp.real(x) ** 2 + jnp.imag(x) ** 2
  return x * x


def sum_squares(x: jax.Array) -> jax.Array:
  """Σ|x|² over all of ``x``'s elements, in ``x``'s real dtype.

  A contraction of every axis (``dot_general(conj(x), x)``), not
  ``sum(x * x)``: XLA:CPU runs a dot as a library call, where it compiles a
  reduction as kernels of its own (a vector's sum is split into a windowed
  and a final reduction), so a per-leaf norm costs one instruction instead
  of three fusions. A contraction keeps a sharded leaf sharded (partial
  sums and one all-reduce, as ``sum`` does; the sum is replicated on an
  Explicit mesh). At ``HIGHEST`` precision, so that a backend's reduced
  default matmul precision (TPU's bfloat16 passes) does not reach the norm.
  """
  x = jnp.asarray(x)
  return jnp.real(inner(jnp.conj(x), x))


def inner(a: jax.Array, b: jax.Array) -> jax.Array:
  """Σ aᵢbᵢ over every element of two same-shape arrays: one contraction, at
  ``HIGHEST`` precision, replicated on an Explicit mesh (``sum_squares``'
  reasons)."""
  axes = tuple(range(jnp.ndim(a)))
  sharding = _sharding.explicit_sharding(a)  # Explicit types ask where the sum lives
  out = None if sharding is None else jax.NamedSharding(sharding.mesh, jax.P())
  return jax.lax.dot_general(a, b, ((axes, axes), ((), ())),
                             precision=jax.lax.Precision.HIGHEST, out_sharding=out)


@jax.custom_jvp
def root(x: jax.Array) -> jax.Array:
  """``jnp.sqrt(x)`` (the same forward program), with a derivative of 0 at
  x = 0 instead of √'s 0·∞ = NaN: a norm's at a zero leaf (a zero-initialised
  bias, a layer without gradient), √v̂ at a zero second moment. Differentiating
  through a step (meta-learning) then gets the limit the finite difference
  sees, -lr/ε for Adam at g = 0, where optax's gives NaN."""
  return jnp.sqrt(x)


@root.defjvp
def _root_jvp(primals: tuple, tangents: tuple) -> tuple:
  (x,), (t,) = primals, tangents
  r = root(x)
  nonzero = x != 0  # NaN too: a NaN stays NaN
  return r, jnp.where(nonzero, t / (2 * jnp.where(nonzero, r, 1)), 0 * t)  # a NaN t stays NaN


@jax.custom_jvp
def max_abs(x: jax.Array) -> jax.Array:
  """max |x| over all elements (``jnp.max(jnp.abs(x))``: the same forward
  program), whose derivative follows the element ``argmax`` picks. jnp.max's
  own derivative finds its maxima by an exact == against the maximum, which
  no element meets where XLA recomputes x in two kernels that round apart:
  under jit PSGD Kron's meta-gradient was NaN or ±inf for 1 gradient in 5."""
  return jnp.max(jnp.abs(x))


@max_abs.defjvp
def _max_abs_jvp(primals: tuple, tangents: tuple) -> tuple:
  (x,), (t,) = primals, tangents
  i = jnp.argmax(jnp.abs(x).ravel())
  _, dt = jax.jvp(jnp.abs, (x.ravel()[i],), (t.ravel()[i],))
  return max_abs(x), dt


def norm(x: jax.Array) -> jax.Array:
  """The Frobenius norm of all of ``x``'s elements, sqrt(Σ|x|²) (``sum_squares``; ``root``)."""
  return root(sum_squares(x))


def norms(x: jax.Array, axes: Sequence[int]) -> jax.Array:
  """The Frobenius norm over ``axes`` of each slice of ``x`` (one per index of
  the other axes), sqrt(Σ|x|²), with ``axes`` kept as size 1: the norm of
  each matrix of a stack (``axes=(-2, -1)``) or of a scanned layer."""
  return root(jnp.sum(abs_sq(x), axis=tuple(axes), keepdims=True))


def rms(x: jax.Array) -> jax.Array:
  """The root mean square of all of ``x``'s elements, sqrt(mean |x|²); 0 for no elements."""
  return root(sum_squares(x) / max(jnp.size(x), 1))


def clipped_to_rms(x: jax.Array, limit: Any) -> jax.Array:
  """``x / max(1, rms(x) / limit)``: ``x`` scaled down to an RMS of at most ``limit``."""
  return x / jnp.maximum(1.0, rms(x) / limit)


def is_complex(x: Any) -> bool:
  return jnp.issubdtype(dtype_of(x), jnp.complexfloating)


def traced_hyperparameters(**values: Any) -> dict:
  """Those of ``values`` that are arrays (``optax.inject_hyperparams`` traces
  them): a mesh's per-device program (``shard_map``, ``auto_axes``) takes
  them as arguments, as it refuses Explicit-typed values closed over; Python
  numbers stay constants of the program."""
  return {k: v for k, v in values.items() if isinstance(v, jax.Array)}


def scalar_dtype(tree: Any) -> jnp.dtype:
  """The dtype of an optimizer's global scalars (a learned step size, sums
  over the tree): float32, or the widest real compute dtype of ``tree``'s
  leaves (float64 in float64 runs)."""
  return jnp.result_type(jnp.float32, *[
      real_dtype(compute_dtype(p)) for p in jax.tree.leaves(tree)])


def hyperparameter(value: Any, dtype: Any) -> Any:
  """A static Python number as it is, anything else (a traced value, an
  array) as an array of ``dtype``.

  A Python β keeps 1 − β and √β in double until they meet an array, as
  the reference codes compute them: β = 0.999 rounded to float32 first
  makes 1 − √β 3.5e-5 (relative) too large, and D-Adaptation's D 3e-5 off
  after 300 steps (float32 runs).
  """
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return value
  return jnp.asarray(value, dtype)


def hyperparameter_sqrt(value: Any) -> Any:
  """√ of a ``hyperparameter``: in double for a Python number."""
  return math.sqrt(value) if isinstance(value, (int, float)) else jnp.sqrt(value)


def resolve_schedule(value: Any, count: jax.Array) -> Any:
  """Evaluates a schedule at ``count``; returns constants unchanged.

  The count is read at JAX's default integer width: int64 under
  ``jax_enable_x64``, where optax's schedules then give float64 values (at
  the stored int32 count they give float32 ones, 1e-8 off torch's in float64
  runs), int32 otherwise (the same program)."""
  if not callable(value):
    return value
  return value(jnp.asarray(count).astype(jax.dtypes.canonicalize_dtype(int)))


def counted(state: Any) -> Any:
  """``state`` one step on: its ``count`` incremented (a schedule's step
  count), or as it is if it keeps none (``optax.EmptyState``)."""
  if "count" not in getattr(state, "_fields", ()):  # (a tuple's .count is a method)
    return state
  return state._replace(count=optax.safe_increment(state.count))


def scale_schedule(value: Any, factor: float) -> Any:
  """``factor`` times a constant, or the schedule ``count -> factor·value(count)``."""
  if callable(value):
    return lambda count: factor * value(count)
  return factor * value


def bias_correction(decay: Any, count: jax.Array, dtype: Any) -> jax.Array:
  """1 − decayᶜᵒᵘⁿᵗ: the total weight of an EMA started at zero.

  Computed as −expm1(count·log decay), with the logarithm of a Python number
  taken in double precision: in float32, 1 − 0.999ᵗ formed from
  float32(0.999) is off by 1e-5 relative at t = 1.
  """
  dtype = real_dtype(dtype)
  if isinstance(decay, (int, float)):
    log_decay = math.log(decay) if decay > 0 else -math.inf
  else:
    log_decay = jnp.log(jnp.asarray(decay, dtype))
  return -jnp.expm1(count.astype(dtype) * jnp.asarray(log_decay, dtype))


def nesterov_debiased(b1: Any, m: jax.Array, g: jax.Array, count: jax.Array,
                      dtype: Any) -> jax.Array:
  """Dozat's debiased look-ahead β₁ m_t/(1−β₁ᵗ⁺¹) + (1−β₁) g_t/(1−β₁ᵗ): NAdam's
  first moment (``optax.nadam``'s), for the Adam family's ``nesterov``."""
  real = real_dtype(dtype)
  b1_, c1 = jnp.asarray(b1, real), jnp.asarray(1 - b1, real)
  # The next count saturates as optax's does (count + 1 wraps at 2³¹ − 1).
  return (b1_ * m / bias_correction(b1, optax.safe_increment(count), dtype)
          + c1 * g / bias_correction(b1, count, dtype))


def copy_in_compute_dtype(params: Any) -> Any:
  """A copy of ``params`` in ``compute_dtype`` (a wrapper's copy of the weights).

  A copy, not an alias: donating the params must not free the state. Of
  abstract params (``jax.ShapeDtypeStruct``) only the shape and dtype exist,
  so they give zeros.
  """
  def copy(p):
    if isinstance(p, jax.ShapeDtypeStruct):
      return jnp.zeros_like(p, compute_dtype(p))
    return jnp.array(p, compute_dtype(p), copy=True)

  return jax.tree.map(copy, params)


def map_leaves(
    fn: Callable[..., tuple], num_outputs: int, *trees: Any,
    once_per_shape: bool = False,
) -> tuple:
  """Maps a function returning a tuple over trees; returns a tuple of trees.

  ``fn`` is called leaf-wise with the matching leaves of ``trees`` (the
  structure of the first tree decides, so ``None`` and ``optax.MaskedNode``
  leaves of the updates are skipped) and must return ``num_outputs`` values.
  A tree given as ``None`` (an optional state field that is switched off)
  contributes ``None`` to every call. Output ``i`` corresponds to input tree
  ``i`` (the updates, then the state fields): flax NNX variables and Linen
  boxes are seen through, and each output has its input's wrapping, so a
  plain statistic stays plain when the updates arrive as ``nnx.State`` of
  ``nnx.Param`` or boxed.

  Inside a trace, with ``once_per_shape``, ``fn`` is traced once per
  distinct signature of its arguments (``traced_once_per_shape``): only for
  an ``fn`` that is a function of its arguments and of values shared by
  every leaf (not one that takes the next item of an iterator per call).
  """
  plain = [None if t is None else unwrap_metadata(t) for t in trees]
  leaves, treedef = jax.tree.flatten(plain[0])
  if once_per_shape:
    fn = traced_once_per_shape(fn, leaves)
  rest = [
      [None] * len(leaves) if t is None else treedef.flatten_up_to(t)
      for t in plain[1:]
  ]
  outputs = _unzip([fn(*args) for args in zip(leaves, *rest)], treedef, num_outputs)
  return tuple(
      wrapped_like(out, trees[i] if i < len(trees) and trees[i] is not None else trees[0])
      for i, out in enumerate(outputs))


def traced_once_per_shape(fn: Callable, inputs: Any) -> Callable:
  """``fn`` (a per-leaf function) traced once per distinct argument shape.

  Inside a trace (``inputs`` hold tracers) it is ``jax.jit(fn)``: same-shape
  leaves reuse one trace and one lowered function, which XLA inlines, so a
  per-leaf program is traced and lowered once per shape instead of once per
  leaf (192 same-shape leaves of AdamW: 0.8 s of tracing down to 0.3 s); the
  numbers are the same. Called eagerly it is ``fn`` (a fresh jit would
  compile per call).
  """
  if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(inputs)):
    return fn
  is_array = lambda x: isinstance(x, (jax.Array, np.ndarray))

  @functools.partial(jax.jit, static_argnums=0)
  def traced(structure, arrays):
    treedef, statics = structure
    return fn(*treedef.unflatten([a if s is None else s for a, s in zip(arrays, statics)]))

  def call(*args):
    # Arguments that are not arrays (a leaf's block partition) are static.
    leaves, treedef = jax.tree.flatten(args)
    statics = tuple(None if is_array(x) else x for x in leaves)
    return traced((treedef, statics), [x if is_array(x) else None for x in leaves])

  return call


def unwrap_metadata(tree: Any) -> Any:
  """``tree`` with every flax NNX variable and Linen box replaced by its value."""
  if not has_metadata(tree):
    return tree
  return jax.tree.map(value_of, tree, is_leaf=is_wrapped)


def has_metadata(tree: Any) -> bool:
  return any(is_wrapped(x) for x in jax.tree.leaves(tree, is_leaf=is_wrapped))


def value_of(x: Any) -> Any:
  """The value an NNX variable or a Linen box wraps; ``x`` itself otherwise."""
  if is_variable(x):
    return x.get_value()
  return x.value if is_box(x) else x


def statistics_structure(updates: Any) -> Any:
  """The treedef of per-leaf statistics of ``updates`` (``map_statistics``
  builds them plain): ``updates``' own, with NNX variables and Linen boxes
  seen through."""
  return jax.tree.structure(unwrap_metadata(updates))


def wrapped_like(plain: Any, like: Any) -> Any:
  """``plain`` (wrapper-free) with ``like``'s NNX variables or Linen boxes, if any."""
  if not has_metadata(like):
    return plain
  values = jax.tree.structure(unwrap_metadata(like)).flatten_up_to(plain)
  return jax.tree.unflatten(jax.tree.structure(like), values)


def _unzip(outputs: list, treedef: Any, num_outputs: int) -> tuple:
  """Per-leaf tuples of outputs → a tuple of ``num_outputs`` trees."""
  return tuple(
      treedef.unflatten([out[i] for out in outputs]) for i in range(num_outputs)
  )


class _NotParams:
  """Marks, in ``init(placeholder)``, a state field that is not the params."""

  def __repr__(self):
    return "NOT_PARAMS"


NOT_PARAMS = _NotParams()


def is_params_placeholder(params: Any) -> bool:
  # optax.tree_map_params calls init on this empty pytree and treats every
  # state field that comes back as the placeholder as a copy of the params.
  return type(params).__name__ == "_ParamsPlaceholder"


def is_masked_node(x: Any) -> bool:
  """A leaf ``optax.masked`` or a ``multi_transform`` branch left out."""
  return isinstance(x, optax.MaskedNode)


def is_variable(x: Any) -> bool:
  # flax.nnx.Variable and alike: a pytree node carrying metadata (sharding).
  return hasattr(x, "get_value") and hasattr(x, "get_metadata")


def is_box(x: Any) -> bool:
  # Linen's nn.Partitioned and nn.LogicallyPartitioned: a pytree node boxing
  # its value with axis names.
  return hasattr(x, "unbox") and hasattr(x, "names") and hasattr(x, "value")


def is_wrapped(x: Any) -> bool:
  """An NNX variable or a Linen box: a value wrapped with its metadata."""
  return is_variable(x) or is_box(x)


def map_statistics(
    fn: Callable[..., tuple], num_outputs: int, params: Any, *,
    with_path: bool = False,
) -> tuple:
  """Per-leaf state *not* shaped like its parameter, as ``num_outputs`` trees.

  Kronecker factors, factored or per-block second moments: ``fn(leaf)`` (or
  ``fn(path, leaf)`` with ``with_path``) returns ``num_outputs`` arrays of
  any shapes, collected into trees structured like ``params``. Two things
  differ from a plain ``jax.tree.map``, so that sharding recipes do not hand
  a parameter's sharding to an array of another shape:

  * under ``optax.tree_map_params`` each field is a ``NOT_PARAMS`` leaf, so
    the whole field goes to ``transform_non_params`` (e.g. replicated) in
    one call, and the result is a prefix of the state tree (``jax.jit``'s
    ``out_shardings`` takes it as it is; ``jax.tree.broadcast(result,
    state)`` expands it leaf by leaf);
  * flax NNX variables and Linen boxes are unwrapped, so the statistics do
    not inherit the parameter's sharding metadata (``nnx.Optimizer``, a
    ``TrainState`` of boxed parameters and ``nn.get_sharding``).
  """
  if is_params_placeholder(params):
    return (NOT_PARAMS,) * num_outputs
  plain = unwrap_metadata(params)
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(plain)
  outputs = [fn(*pl) if with_path else fn(pl[1]) for pl in with_paths]
  return _unzip(outputs, treedef, num_outputs)


def zeros_where(
    params: Any,
    keep: Callable[[tuple, Any], bool],
    dtype_of: Callable[[Any], Any] = dtype_of,
) -> Any:
  """Zeros in ``dtype_of(leaf)`` where ``keep(path, leaf)``, ``MaskedNode`` elsewhere.

  For a state field that is parameter-shaped on some leaves only (the
  diagonal fallback of a matrix method): it stays a copy of the parameter
  tree for ``optax.tree_map_params`` (masked like ``optax.masked`` states).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, p: (jnp.zeros_like(p, dtype_of(p)) if keep(path, p)
                       else optax.MaskedNode()),
      params,
  )
