"""Tree and dtype helpers shared by the transforms (on top of ``optax.tree``).

The dtype policy of every gradtx transform:

* arithmetic runs in ``compute_dtype(x)``: float32 for low-precision floats
  (bf16, f16), the leaf's own dtype otherwise (float32, float64);
* state leaves are stored in the requested ``*_dtype`` or, by default, in the
  dtype of the parameter they shadow;
* the outgoing update has the dtype of the incoming update, so bf16 parameters
  stay bf16 after ``optax.apply_updates``.
"""

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax


def compute_dtype(x: Any) -> jnp.dtype:
  """The dtype arithmetic on ``x`` runs in: at least float32."""
  return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def zeros_like_tree(params: Any, dtype: Optional[Any] = None) -> Any:
  """Zeros shaped like each leaf of ``params``, in ``dtype`` or the leaf's own.

  Built with ``jax.tree.map`` over the parameters so that
  ``optax.tree_map_params`` recognises the result as a copy of the parameter
  tree (this is what lets state shardings be derived from parameter ones).
  """
  return jax.tree.map(
      lambda p: jnp.zeros(jnp.shape(p), dtype or jnp.asarray(p).dtype), params
  )


def full_like_tree(params: Any, value: float, dtype: Optional[Any] = None) -> Any:
  """Like ``zeros_like_tree`` with a constant fill value."""
  return jax.tree.map(
      lambda p: jnp.full(jnp.shape(p), value, dtype or jnp.asarray(p).dtype),
      params,
  )


def cast_like(tree: Any, reference: Any) -> Any:
  """Casts every leaf of ``tree`` to the dtype of the matching reference leaf."""
  return jax.tree.map(lambda x, r: x.astype(jnp.asarray(r).dtype), tree, reference)


def resolve_schedule(value: Any, count: jax.Array) -> Any:
  """Evaluates a schedule at ``count``; returns constants unchanged."""
  return value(count) if callable(value) else value


def bias_correction(decay: Any, count: jax.Array, dtype: Any) -> jax.Array:
  """1 − decayᶜᵒᵘⁿᵗ: the total weight of an EMA started at zero.

  Computed as −expm1(count·log decay), with the logarithm of a Python number
  taken in double precision: in float32, 1 − 0.999ᵗ formed from
  float32(0.999) is off by 1e-5 relative at t = 1.
  """
  if isinstance(decay, (int, float)):
    log_decay = math.log(decay) if decay > 0 else -math.inf
  else:
    log_decay = jnp.log(jnp.asarray(decay, dtype))
  return -jnp.expm1(count.astype(dtype) * jnp.asarray(log_decay, dtype))


def increment(count: jax.Array) -> jax.Array:
  """The step counter after one more step, saturating instead of wrapping."""
  return optax.safe_int32_increment(count)


def map_leaves(
    fn: Callable[..., tuple], num_outputs: int, *trees: Any
) -> tuple:
  """Maps a function returning a tuple over trees; returns a tuple of trees.

  ``fn`` is called leaf-wise with the matching leaves of ``trees`` (the
  structure of the first tree decides, so ``None`` and ``optax.MaskedNode``
  leaves of the updates are skipped) and must return ``num_outputs`` values.
  A tree given as ``None`` (an optional state field that is switched off)
  contributes ``None`` to every call.
  """
  leaves, treedef = jax.tree.flatten(trees[0])
  rest = [
      [None] * len(leaves) if t is None else treedef.flatten_up_to(t)
      for t in trees[1:]
  ]
  outputs = [fn(*args) for args in zip(leaves, *rest)]
  return tuple(
      treedef.unflatten([out[i] for out in outputs]) for i in range(num_outputs)
  )


def path_names(path: tuple) -> list[str]:
  """The lower-cased names along a pytree key path (keys, attributes, indices).

  For the path of ``params["block0"]["qkv"]["kernel"]`` this is
  ``["block0", "qkv", "kernel"]``; flax NNX states add a final ``"value"``.
  """
  names = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        names.append(str(getattr(key, attribute)).lower())
        break
    else:
      names.append(str(key).lower())
  return names
