"""Argument validation shared by every factory in gradtx.

Validation runs once, when a factory is called, and only on plain Python or
NumPy numbers: traced or array values (for example the hyper-parameters that
``optax.inject_hyperparams`` feeds back in at run time) pass through unchecked.
"""

import functools
import inspect
import numbers
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def _is_plain_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) or (
      isinstance(value, np.ndarray) and value.ndim == 0
  )


def _is_bool(value: Any) -> bool:
  """A Python or NumPy boolean, or a 0-d NumPy boolean array: no number."""
  return isinstance(value, (bool, np.bool_)) or (
      isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype == np.bool_)


def is_static_zero(value: Any) -> bool:
  """True for a plain number equal to 0: a switch-off known at build time."""
  return _is_plain_number(value) and float(value) == 0.0


def is_static_nonzero(value: Any) -> bool:
  """True for a plain number other than 0: a switch-on known at build time."""
  return _is_plain_number(value) and float(value) != 0.0


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> None:
  """Raises ``ValueError`` when a plain number lies outside the interval.

  Arrays and tracers (``inject_hyperparams``) pass unchecked; anything else
  that is not a number (a string, a list, a schedule: a callable is refused
  here, where only a number is documented, instead of failing at the first
  update) is refused, as is a boolean.
  """
  if _is_bool(value):
    raise ValueError(f"{name} must be a number, got {value!r}")
  if not _is_plain_number(value):
    if callable(value):
      raise ValueError(
          f"{name} must be a number, got the callable {value!r}: only"
          " learning_rate, weight_decay and the arguments documented as such take"
          " a schedule (with optax.inject_hyperparams, a schedule of any numeric"
          " argument works: it is evaluated before the factory sees it)")
    if not (hasattr(value, "dtype") and hasattr(value, "shape")):
      raise ValueError(
          f"{name} must be a number, got {value!r} of type"
          f" {type(value).__name__}"
      )
    return
  v = float(value)
  above_low = v >= low if low_inclusive else v > low
  below_high = v <= high if high_inclusive else v < high
  if not (above_low and below_high) or np.isnan(v):
    interval = (
        ("[" if low_inclusive else "(")
        + f"{low:g}, {high:g}"
        + ("]" if high_inclusive else ")")
    )
    raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_non_negative(name: str, value: Any, *, infinite: bool = False) -> None:
  """Raises ``ValueError`` when a plain number is negative, NaN or (unless
  ``infinite``: a bound that may be absent) infinite, which would only give
  non-finite or frozen updates (an eps or a damping of inf)."""
  check_in_range(name, value, 0.0, np.inf, high_inclusive=infinite)


def check_floating_dtype(name: str, value: Any) -> None:
  """``None`` or a floating dtype (``jnp.bfloat16``, ``"float32"``); anything
  else (an integer or boolean dtype, which gives zero or NaN iterations, an
  unknown name) raises ``ValueError`` naming the argument."""
  if value is None:
    return
  try:
    floating = jnp.issubdtype(jnp.dtype(value), jnp.floating)
  except TypeError:
    floating = False
  if not floating:
    raise ValueError(f"{name} must be None or a floating dtype, got {value!r}")


# Arguments that take a function, whatever the factory: a value that is not
# one (a string, a bool, a set of names) would fail only when the optimizer
# first calls it, inside init or a jitted update.
RULE_ARGUMENTS = {
    "is_muon_param": "a function (path, leaf) -> bool",
    "is_hyperball_param": "a function (path, leaf) -> bool",
    "is_mars_param": "a function (path, leaf) -> bool",
    "is_dense": "a function (path, leaf) -> bool",
    "where": "a function (path, leaf) -> bool",
    "rule": "a function (path, leaf)",
    "loss_fn": "a function of the model",
    "clip_value_fn": "a function of the step count",
}


def _library_prefixes() -> tuple:
  """The folders of gradtx's packages, of the libraries it runs under (optax,
  jax, flax) and of Python's standard library."""
  packages = ("gradtx", "gradtx.transforms", "gradtx.optimizers", "gradtx.contrib",
              "optax", "jax", "jaxlib", "flax")
  return tuple(os.path.dirname(module.__file__) + os.sep for module in (
      sys.modules.get(name) for name in packages) if getattr(module, "__file__", None))


def user_stacklevel() -> int:
  """The ``stacklevel`` that makes ``warnings.warn``, called by the caller of
  this function, report the first frame outside the libraries
  (``_library_prefixes``; installed packages are not the standard library's):
  the user's line that built or stepped the optimizer, however deep the
  chain, wrapper or trace between them."""
  libraries, standard = _library_prefixes(), os.path.dirname(functools.__file__) + os.sep
  in_a_library = lambda name: name.startswith(libraries) or (
      name.startswith(standard) and "-packages" not in name)
  frame, level = inspect.currentframe().f_back, 1
  while frame.f_back is not None and in_a_library(frame.f_code.co_filename):
    frame, level = frame.f_back, level + 1
  return level


def checks_arguments(factory: Callable) -> Callable:
  """Decorates a factory: its arguments annotated ``bool`` must be ``True`` or
  ``False`` (a string ``"False"`` or a number is read by truthiness: silently
  the other setting, or ``None`` silently off), and those of
  ``RULE_ARGUMENTS`` functions (or ``None``), checked when the factory is
  called rather than at the optimizer's first call of them."""
  signature = inspect.signature(factory)
  flags = [name for name, p in signature.parameters.items() if p.annotation in (bool, "bool")]
  rules = [name for name, p in signature.parameters.items()
           if name in RULE_ARGUMENTS and p.annotation not in (str, "str")]

  @functools.wraps(factory)
  def checked(*args, **kwargs):
    given = signature.bind_partial(*args, **kwargs).arguments
    for name in flags:
      if name in given and not isinstance(given[name], (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {given[name]!r}")
    for name in rules:
      if given.get(name) is not None and not callable(given[name]):
        raise ValueError(f"{name} must be {RULE_ARGUMENTS[name]}, got {given[name]!r}")
    return factory(*args, **kwargs)

  return checked


def check_ordered(low_name: str, low: Any, high_name: str, high: Any) -> None:
  """Raises ``ValueError`` when plain numbers ``low`` > ``high``, naming both."""
  if _is_plain_number(low) and _is_plain_number(high) and float(high) < float(low):
    raise ValueError(
        f"{high_name} must be >= {low_name}, got {high_name}={high!r} < {low_name}={low!r}")


def check_decay(name: str, value: Any, *, schedule: bool = False) -> None:
  """A decay rate of an exponential moving average: in [0, 1); a callable
  too where ``schedule`` (a documented schedule of the step count)."""
  if schedule and callable(value):
    return
  check_in_range(name, value, 0.0, 1.0)


def check_scalar_or_schedule(name: str, value: Any) -> None:
  """A hyper-parameter given as a non-negative number, an array or a schedule.

  Schedules (callables of the step count) are not evaluated here; a plain
  number must be non-negative and finite (an infinite learning rate or decay
  only makes every update non-finite); anything that is neither a number, an array
  nor a callable is refused.
  """
  if callable(value):
    return
  if _is_plain_number(value) and not _is_bool(value):
    check_in_range(name, value, 0.0, np.inf)
    return
  if hasattr(value, "dtype") and hasattr(value, "shape") and value.dtype != np.bool_:
    return
  raise ValueError(
      f"{name} must be a non-negative number or a schedule (a callable of the"
      f" step count), got {value!r} of type {type(value).__name__}"
  )


def check_integer(name: str, value: Any, low: int = 1, *, traced: bool = False) -> Any:
  """Returns ``value`` as an ``int``; ``ValueError`` unless it is one >= low.

  Python and NumPy integers are accepted. Arguments that fix array shapes
  cannot be traced: ``optax.inject_hyperparams`` must list them in
  ``static_args``, which the error says. With ``traced=True`` (arguments
  used only in arithmetic, such as a period) an integer array or tracer is
  returned unchecked.
  """
  if traced and hasattr(value, "dtype") and not isinstance(value, (np.ndarray, np.generic)):
    if not np.issubdtype(np.dtype(value.dtype), np.integer):
      raise ValueError(f"{name} must be an integer, got an array of {value.dtype}")
    return value
  integral = isinstance(value, numbers.Integral) or (
      isinstance(value, np.ndarray) and value.ndim == 0
      and np.issubdtype(value.dtype, np.integer)
  )
  if _is_bool(value) or not integral or value < low:
    hint = (" (it sets shapes: with optax.inject_hyperparams, list it in"
            " static_args)" if hasattr(value, "dtype") and not isinstance(value, np.generic)
            else "")
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}{hint}")
  return int(value)


def check_mask(name: str, value: Any) -> None:
  """A mask: ``None``, a callable of the parameters, a boolean or a pytree of
  booleans (``optax.masked`` semantics); a string or a number, which
  ``optax.masked`` takes for a prefix that selects every leaf, is refused."""
  if isinstance(value, (str, bytes)) or (
      isinstance(value, numbers.Number) and not _is_bool(value)):
    raise ValueError(
        f"{name} must be None, a callable of the parameters or a pytree of booleans"
        f" shaped like them, got {value!r} (which would select every leaf)")


def check_transformation(name: str, value: Any) -> None:
  """An optax transformation: something with ``init`` and ``update``."""
  if not (callable(getattr(value, "init", None))
          and callable(getattr(value, "update", None))):
    raise ValueError(
        f"{name} must be an optax.GradientTransformation (with init and"
        f" update), got {value!r} of type {type(value).__name__}; e.g."
        f" optax.adam(1e-3), not optax.adam")


def check_real_leaves(params: Any, transform: str) -> None:
  """Raises ``ValueError`` naming the first complex leaf of ``params``.

  For transforms whose rule has no complex meaning (sign descent: the sign
  of a complex number is not a descent direction of a real loss).
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.complexfloating):
      raise ValueError(
          f"{transform} does not support complex parameters; the leaf"
          f" {jax.tree_util.keystr(path)} is {np.dtype(dtype)}")


def _is_placeholder(x: Any) -> bool:
  # optax.tree.map_params initialises on an empty pytree node of this class.
  return type(x).__name__ == "_ParamsPlaceholder"


def check_shaped_params(params: Any, transform: str) -> None:
  """Raises ``ValueError`` when ``params`` is optax's shapeless placeholder.

  For transforms whose state is built from the parameters' shapes (stacks of
  matrix blocks, quantized blocks) rather than copies of them: their ``init``
  cannot run on the placeholder ``optax.tree.map_params`` passes, and a state
  built on it would not be the one to map.
  """
  if any(map(_is_placeholder, jax.tree.leaves(params, is_leaf=_is_placeholder))):
    raise ValueError(
        f"{transform} builds its state from the parameters' shapes (stacks of"
        " matrix blocks or quantized blocks), not from copies of them, so"
        " optax.tree.map_params cannot map it. Use"
        " gradtx.transforms.state_shardings(tx, params) for its shardings.")


def check_floating_updates(updates: Any, transform: str) -> None:
  """Raises ``TypeError`` naming the first update leaf of dtype ``float0``
  (the gradient ``jax.grad(..., allow_int=True)`` gives an integer leaf, which
  no arithmetic accepts) or of an integer or bool dtype (an integer array
  passed as a gradient: the update came back integer, its step truncated,
  silently)."""
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    dtype = getattr(u, "dtype", None)
    if dtype is not None and dtype != jax.dtypes.float0 and not jnp.issubdtype(
        dtype, jnp.inexact):
      raise TypeError(
          f"{transform}: the update of {jax.tree_util.keystr(path)} has dtype"
          f" {dtype}. Optimizers step floating (or complex) leaves only: an"
          " integer step would be truncated. Give the optimizer the floating"
          " parameters and their gradients alone.")
    if dtype == jax.dtypes.float0:
      raise TypeError(
          f"{transform}: the update of {jax.tree_util.keystr(path)} has dtype"
          " float0, the gradient of an integer leaf (jax.grad(...,"
          " allow_int=True)). Optimizers step floating leaves only: give the"
          " optimizer the floating parameters alone (nnx.Optimizer(...,"
          " wrt=nnx.Param), or split the tree before jax.grad); optax.masked"
          " does not help, optax.apply_updates cannot add a float0.")


def check_blocks_fit(q: Any, where: str) -> None:
  """Raises ``ValueError`` where a ``QuantizedArray``'s codes and scales do not
  hold its shape in blocks (restored from a checkpoint of another shape)."""
  from gradtx.storage import quantize  # here: the storage package imports this module

  codes = np.shape(q.codes)
  lead = len(codes) - 2
  fits = 0 <= lead < max(1, len(q.shape)) and codes == quantize.codes_shape(
      q.shape, q.block_size, lead) and (not lead or int(np.prod(
          q.shape[lead:], dtype=np.int64)) % q.block_size == 0)
  if not fits or np.shape(q.scales) != codes[:-1]:
    raise ValueError(
        f"{where} stands for shape {q.shape} in blocks of {codes[-1] if codes else '?'},"
        f" but holds codes {codes} and scales {np.shape(q.scales)}:"
        " restored from a checkpoint of another shape?")


def check_state_shape(shape: tuple, expected: tuple, where: str, arguments: str) -> None:
  """Raises ``ValueError`` where the ``shape`` of a state array is not the
  one the transform's ``arguments`` give: a checkpoint of other settings
  restored into it (flax's ``from_bytes`` restores any shape, and the step
  would go on at the old settings, silently)."""
  if tuple(shape) != tuple(expected):
    raise ValueError(
        f"{where} has shape {tuple(shape)} but {arguments} give {tuple(expected)}:"
        " is the state restored from a checkpoint of other settings?")


def check_matching_shapes(
    updates: Any, params: Any, transform: str, of: str = "parameter",
) -> None:
  """Raises ``ValueError`` naming the first leaf whose update and parameter
  shapes differ (a transposed gradient, a tree of another model).

  ``params`` may be a per-leaf state built at ``init`` (``of="state"`` says
  so); its 8-bit leaves count as one leaf of the shape they stand for.
  """
  check_floating_updates(updates, transform)
  if params is None:
    return
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  from gradtx.storage import quantize  # here: the storage package imports this module

  quantized = lambda x: isinstance(x, quantize.QuantizedArray)
  shapes = [tuple(p.shape) if quantized(p) else np.shape(p)
            for p in jax.tree.leaves(params, is_leaf=quantized)]
  if len(flat) != len(shapes):
    raise ValueError(
        f"{transform}: the updates have {len(flat)} leaves but the {of} tree"
        f" {len(shapes)}: are they the gradients of these parameters"
        + ("?" if of == "parameter" else ", and is the state this optimizer's own"
           " (not one restored from another optimizer's checkpoint)?"))
  for (path, _), p in zip(flat, jax.tree.leaves(params, is_leaf=quantized)):
    if quantized(p):
      check_blocks_fit(p, f"{transform}: the 8-bit {of} of {jax.tree_util.keystr(path)}")
  for (path, u), shape in zip(flat, shapes):
    if np.shape(u) != shape:
      raise ValueError(
          f"{transform}: the update of {jax.tree_util.keystr(path)} has shape"
          f" {np.shape(u)} but its {of} has shape {shape}"
          + (" (built at init): is it the gradient of its parameter?" if of == "state" else ""))
