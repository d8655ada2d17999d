"""Flax axis names: what a parameter's logical axis names say about its matrix view.

Flax parameters can carry one name per axis: NNX ``nnx.with_partitioning`` /
``nnx.Param(..., sharding_names=...)`` (kept as the variable's
``out_sharding`` metadata), the partition axis ``nnx.scan`` / ``nnx.vmap``
insert through ``transform_metadata={nnx.PARTITION_NAME: "layers"}``, Linen
``nn.with_logical_partitioning`` / ``nn.with_partitioning`` boxes and the axis
``nn.scan(metadata_params={nn.PARTITION_NAME: "layers"})`` adds to them. Where
a leaf has them, they are the first source of truth of its matrix view and of
its routing; its key path's names, then its shape, decide only what they leave
open. The recognised names (MaxText's and Flax's examples' logical names):

==============  ====================================================  =========================
role            names                                                 the axis is
==============  ====================================================  =========================
``batch``       layers, layer, stage, exp, expert, experts,           an index of separate
                num_experts, num_activations                          matrices (scanned layers,
                                                                      experts, fused gate/up)
``vocab``       vocab, vocab_size                                     the vocabulary
``embed``       embed, embed_no_exp, emb, d_model                     the model width
``attention``   heads, q_heads, kv_heads, num_heads, kv, head_dim,    heads and head features
                kv_head_dim, qk_head_dim, v_head_dim                  (one group of axes)
``mlp``         mlp, mlp_no_fsdp, intermediate, ffn                   the MLP's hidden width
``lora``        q_lora, kv_lora                                       a low-rank bottleneck
``vector``      norm                                                  a norm scale: no matrix
==============  ====================================================  =========================

``add_axis_names(role, *names)`` recognises more. From a leaf's names, in
order (``read``): its ``batch`` axes are the view's ``batch`` (but a router,
(embed, exp) or scanned (layers, embed, exp), is one matrix onto the experts
per layer: a last batch axis after a single other axis); a ``vector`` axis or
fewer than two other axes means no matrix (a stacked bias or norm scale);
otherwise, when every other axis is recognised and they have two roles or
more, the rows are the leading axes of the first axis's role and the columns
the rest ((embed, mlp): embed × mlp; (embed, heads, kv): embed × heads·kv;
(heads, kv, embed): heads·kv × embed). What they leave open (a ``None`` or
unknown name, or one role only) the key path's names and the shape decide,
around the batch axes. A leaf whose other axes are (vocab, …) is an
embedding table and one whose last axis is vocab an output head: neither
goes to a hidden-matrix rule (``gt.is_hidden_matrix``).

Where metadata reaches a transform: in a tree of NNX variables
(``nnx.state(model, nnx.Param)`` and its ``nnx.grad``), of Linen boxes
(``model.init(...)["params"]`` before ``nn.unbox``, and its gradients), and in
a tree of plain arrays with the very paths and shapes of such a tree met
earlier in the process, or of a part of one (``nnx.Optimizer`` hands
``tx.init`` variables and ``tx.update`` plain arrays; ``optax.masked`` hands
its inner transform the leaves it keeps). Where a transform sees only plain arrays (Linen
after ``nn.unbox``, MaxText), ``matrix_view_from_axes(abstract_params)``
gives the names as a matrix-view rule.
"""

import contextlib
import contextvars
import warnings
from typing import Any, Iterator, NamedTuple, Optional

import jax
import optax

from gradtx._internal import routing as _routing
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate

ROLES = ("batch", "vocab", "embed", "attention", "mlp", "lora", "vector")
_ROLE_OF = {}


def add_axis_names(role: str, *names: str) -> None:
  """Recognise ``names`` as axis names of ``role`` (one of the table's roles).

  Example:
    >>> from gradtx import transforms as gt
    >>> gt.add_axis_names("batch", "repeats")  # nn.scan over "repeats"
  """
  if role not in ROLES:
    raise ValueError(f"role must be one of {ROLES}, got {role!r}")
  for name in names:
    _ROLE_OF[name] = role


add_axis_names("batch", "layers", "layer", "stage", "exp", "expert", "experts",
               "num_experts", "num_activations")
add_axis_names("vocab", "vocab", "vocab_size")
add_axis_names("embed", "embed", "embed_no_exp", "emb", "d_model")
add_axis_names("attention", "heads", "q_heads", "kv_heads", "num_heads", "kv", "head_dim",
               "kv_head_dim", "qk_head_dim", "v_head_dim")
add_axis_names("mlp", "mlp", "mlp_no_fsdp", "intermediate", "ffn")
add_axis_names("lora", "q_lora", "kv_lora")
add_axis_names("vector", "norm")


def role_of_axis(name: Any, stacks: bool = True) -> Optional[str]:
  """The role of an axis name; a tuple of names (one axis over several mesh
  axes) takes the first recognised one's, ``None`` if none is recognised.
  ``stacks=False``: a tuple that mixes a stack name with others is not a
  stack (``read`` on a 2-D leaf: ``("fsdp", "expert")`` there is a model axis
  sharded over an expert mesh axis reused for FSDP, where on a 3-D leaf
  ``("expert", "fsdp")`` is experts split over two mesh axes)."""
  parts = tuple(name) if isinstance(name, (tuple, list)) else (name,)
  roles = [_ROLE_OF.get(part) if isinstance(part, str) else None for part in parts]
  if not stacks and len(parts) > 1 and any(r != "batch" for r in roles):
    roles = [r for r in roles if r != "batch"]
  return next((r for r in roles if r is not None), None)


class Reading(NamedTuple):
  """What a leaf's axis names say (``read``).

  Attributes:
    batch: the axes that index separate matrices.
    rows: the rows' axes, when the names settle them, else ``None``.
    cols: the columns' axes, likewise.
    role: ``"vector"`` (no matrix), ``"embedding"``, ``"output_head"``,
      ``"matrix"`` (rows and columns settled) or ``None`` (left open).
  """

  batch: tuple
  rows: Optional[tuple]
  cols: Optional[tuple]
  role: Optional[str]


def read(names: tuple) -> Reading:
  """What the axis ``names`` of a leaf settle (see the module docstring)."""
  roles = [role_of_axis(n, stacks=len(names) > 2) for n in names]
  batch = tuple(i for i, r in enumerate(roles) if r == "batch")
  if batch and batch[-1] == len(roles) - 1 and len(roles) - len(batch) == 1:
    # (…, embed, exp): a router, one matrix onto the experts (per layer).
    batch = batch[:-1]
  axes = [i for i in range(len(names)) if i not in batch]
  other = [roles[i] for i in axes]
  if "vector" in other or len(other) < 2:
    return Reading(batch, None, None, "vector")
  if other[0] == "vocab":
    return Reading(batch, None, None, "embedding")
  if None in other or len(set(other)) < 2:
    return Reading(batch, None, None, "output_head" if other[-1] == "vocab" else None)
  first = next(k for k, r in enumerate(other) if r != other[0])
  role = "output_head" if other[-1] == "vocab" else "matrix"
  return Reading(batch, tuple(axes[:first]), tuple(axes[first:]), role)


def _named_leaf(x: Any) -> Optional[tuple[tuple, tuple]]:
  """(shape, axis names) of an NNX variable or a Linen box that names every
  axis of its value, else ``None``."""
  if _tree.is_box(x):
    names, value = x.names, x.value
  elif _tree.is_variable(x):
    metadata = x.get_metadata()
    names = next((metadata[k] for k in ("out_sharding", "sharding_names", "sharding")
                  if metadata.get(k) is not None), None)
    value = x.get_value()
  else:
    return None
  shape = getattr(value, "shape", None)  # None: a masked-out value (optax.masked)
  if shape is None or not isinstance(names, (tuple, list)):
    return None
  if len(names) == len(shape) - 1 >= 2 and any(role_of_axis(n) for n in names):
    warnings.warn(
        f"a parameter of shape {tuple(shape)} carries the axis names {tuple(names)}, one"
        " fewer than its axes: stacked by nnx.vmap/nnx.scan without"
        " transform_metadata={nnx.PARTITION_NAME: 'layers'}, which names the stack's axis;"
        " its names are ignored", stacklevel=_validate.user_stacklevel())
  if len(names) != len(shape):
    return None
  names = tuple(tuple(n) if isinstance(n, list) else n for n in names)
  return (tuple(shape), names) if any(role_of_axis(n) for n in names) else None


def carries_metadata(tree: Any) -> bool:
  """Whether ``tree`` holds NNX variables or Linen boxes: what they name
  (``axis_names_of``, ``{}`` where nothing) is all the names it has."""
  return any(map(_tree.is_wrapped, jax.tree.leaves(tree, is_leaf=_tree.is_wrapped)))


def axis_names_of(tree: Any) -> dict:
  """``{leaf key: (shape, axis names)}`` of the leaves of ``tree`` that carry names."""
  is_leaf = _tree.is_wrapped
  found = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
    named = _named_leaf(x)
    if named is not None:
      found[_routing.leaf_key(path)] = named
  return found


# The names of each tree met, by the tree's (leaf key, shape)s: a tree of plain
# arrays shaped like one of them, or like a part of one (nnx.Optimizer's update,
# and the subtree optax.masked hands its inner transform), reads the same names.
_MET: dict = {}
_CURRENT: contextvars.ContextVar = contextvars.ContextVar("gradtx_axis_names", default=None)
# The names a transform's ``init`` read, while its init or update runs
# (``keeps_init_names``): what a plain tree reads instead of ``_MET``.
_KEPT: contextvars.ContextVar = contextvars.ContextVar("gradtx_kept_axis_names", default=None)
# During a look (``forgetting_trees_met``): what the transforms' inits read,
# by (transform, signature), forgotten after it.
_LOOKED: contextvars.ContextVar = contextvars.ContextVar("gradtx_looked_axis_names", default=None)


def _signature(tree: Any) -> frozenset:
  return frozenset((_routing.leaf_key(p), tuple(jax.numpy.shape(x)))
                   for p, x in jax.tree_util.tree_flatten_with_path(tree)[0])


def _names_met(signature: frozenset, met: Optional[dict] = None) -> Optional[dict]:
  """The names of the latest tree met (in ``met``, default ``_MET``) whose
  leaves (key and shape) include every leaf of ``signature``, restricted to
  those leaves; ``None`` if none."""
  met = _MET if met is None else met
  if not signature:
    return None
  if signature in met:
    return met[signature]
  for leaves, found in reversed(met.items()):
    if signature <= leaves:
      keys = {key for key, _ in signature}
      return {key: named for key, named in found.items() if key in keys}
  return None


@contextlib.contextmanager
def reading(tree: Any) -> Iterator[None]:
  """The axis names of ``tree`` (or of a tree met before with its paths and
  shapes, or holding them) are what ``names_at`` answers in the ``with`` block."""
  found = axis_names_of(tree)
  kept = _KEPT.get()
  own = bool(found) or carries_metadata(tree)  # variables without names name nothing
  if own:
    signature = _signature(tree)
    _MET.pop(signature, None)  # the latest met is looked at first
    _MET[signature] = found
  elif kept is not None:  # the names this transform's init read ({}: none)
    found = kept
  elif _MET:
    found = _names_met(_signature(tree))
  with using(found if own or found or kept is not None else None):
    yield


def keeps_init_names(tx: Any) -> Any:
  """``tx`` whose ``update`` reads the axis names its ``init`` read.

  A plain tree otherwise reads the names of the latest named tree met with
  its paths and shapes: a second model built with the same paths and shapes
  and other names (or none) changed an optimizer's routing between its init
  and its update (a crash, or silently another routing). ``init`` keeps, per
  tree signature, the tree's own names or those it read (``{}``: none);
  ``update`` on a tree of that signature (or a part of it) reads them. Inside
  another such transform's call, the outer one's names hold.
  """
  memory: dict = {}

  def init_fn(params):
    return _init_keeping_names(tx, memory, params)

  def update_fn(updates, state, params=None, **extra_args):
    return _update_with_kept_names(tx, memory, updates, state, params, extra_args)

  return type(tx)(init_fn, update_fn)


# keeps_init_names' work, at module level: its closures then refer to these
# by name, so cloudpickle (Ray, submitit, joblib) can ship the transform.


def _memory(own: dict) -> dict:
  """A transform's memory, or during a look (``describe``) its own for the look."""
  looked = _LOOKED.get()
  return own if looked is None else looked.setdefault(id(own), {})


def _init_keeping_names(tx: Any, own: dict, params: Any) -> Any:
  if _KEPT.get() is not None:
    return tx.init(params)
  signature = _signature(params)
  found = axis_names_of(params)
  if not found and _MET and not carries_metadata(params):
    found = _names_met(signature) or {}
  kept = _memory(own)
  if kept.get(signature, found) != found:
    warnings.warn(
        "this optimizer was initialised before on a tree of the same paths and shapes with"
        " other axis names (or none): its update cannot tell the two apart and routes both"
        " by these, the latest; build one optimizer per model (a GradientTransformation"
        " shared between nnx.Optimizers keeps one routing)",
        stacklevel=_validate.user_stacklevel())
  kept.pop(signature, None)  # the latest init is looked at first
  kept[signature] = found
  with _kept(found):
    return tx.init(params)


def _update_with_kept_names(tx: Any, own: dict, updates: Any, state: Any, params: Any,
                            extra_args: dict) -> Any:
  kept = None if _KEPT.get() is not None else _names_met(_signature(updates), _memory(own))
  with _kept(kept):
    if isinstance(tx, optax.GradientTransformationExtraArgs):
      return tx.update(updates, state, params, **extra_args)
    if extra_args:
      raise TypeError(f"update() got unexpected keyword arguments {sorted(extra_args)}")
    return tx.update(updates, state, params)


@contextlib.contextmanager
def _kept(names: Optional[dict]) -> Iterator[None]:
  """``names`` kept (``keeps_init_names``) in the block; ``None``: unchanged."""
  if names is None:
    yield
    return
  token = _KEPT.set(names)
  try:
    yield
  finally:
    _KEPT.reset(token)


@contextlib.contextmanager
def forgetting_trees_met() -> Iterator[None]:
  """The trees met in the block are forgotten after it: a look at a tree
  (``gt.describe``) leaves what later plain trees read as it was, so an
  optimizer state built before the look still fits the updates after it."""
  met = dict(_MET)
  token = _LOOKED.set({})
  try:
    yield
  finally:
    _LOOKED.reset(token)
    _MET.clear()
    _MET.update(met)


def has_linen_boxes(tree: Any) -> bool:
  """Whether ``tree`` holds Linen ``nn.Partitioned`` / ``nn.LogicallyPartitioned`` boxes."""
  return any(_tree.is_box(x) for x in jax.tree.leaves(tree, is_leaf=_tree.is_box))


@contextlib.contextmanager
def using(names: Optional[dict]) -> Iterator[None]:
  """``names`` (``axis_names_of``'s) answer ``names_at`` in the block; ``None``
  keeps the names already in use, ``{}`` none."""
  if names is None:
    yield
    return
  token = _CURRENT.set(names)
  try:
    yield
  finally:
    _CURRENT.reset(token)


def names_at(path: tuple, shape: tuple) -> Optional[tuple]:
  """The axis names in use of the leaf at ``path``, if it has ``shape``."""
  found = (_CURRENT.get() or {}).get(_routing.leaf_key(path))
  return found[1] if found is not None and found[0] == tuple(shape) else None


class AxisNamesMatrixView:
  """A matrix-view rule that reads the axis names of a tree of Flax parameters.

  ``rule`` (default ``gt.flax_matrix_view``) with the names of ``params``'
  leaves in use (see the module docstring), whatever tree the transform is
  handed: for parameters that reach the optimizer as plain arrays. Attribute
  ``axis_names``: ``{leaf key: (shape, names)}``.
  """

  def __init__(self, params: Any, rule: Optional[Any] = None):
    self.axis_names = axis_names_of(params)
    self.rule = rule

  def __call__(self, path: tuple, leaf: Any = _routing.NO_LEAF):
    # Imported here: matrix_view imports this module.
    from gradtx.routing import matrix_view

    _routing.check_rule_call("gt.matrix_view_from_axes(...)", leaf)

    with using(self.axis_names):
      return (self.rule or matrix_view.flax_matrix_view)(path, leaf)

  def __repr__(self):
    return f"matrix_view_from_axes(<{len(self.axis_names)} named leaves>)"


@_validate.checks_arguments
def matrix_view_from_axes(params: Any, rule: Optional[Any] = None) -> AxisNamesMatrixView:
  """A matrix-view rule (``matrix_view=``) from the axis names of Flax parameters.

  For parameters whose names a transform cannot see: Linen parameters after
  ``nn.unbox`` (and MaxText's), or any optimizer that is handed plain arrays.
  ``params`` is a tree holding the names: Linen's boxed
  ``jax.eval_shape(model.init, ...)["params"]`` or an ``nnx.State`` (abstract:
  ``nnx.state(nnx.eval_shape(...), nnx.Param)``). Leaves are matched by key
  path (without ``.value`` and box) and shape. The routing of
  ``gt.is_hidden_matrix`` and the optimizers reads the same names (an
  embedding's or output head's ``vocab`` axis) when this rule is their
  ``matrix_view``, or ``rule`` of ``gt.fused_qkv_matrix_view`` /
  ``gt.stacked_matrix_view``.

  Args:
    params: the parameters with their axis names (arrays or abstract).
    rule: the rule that reads the names; default ``gt.flax_matrix_view``.

  Returns:
    A matrix-view rule, a function of ``(path, leaf)``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from gradtx import transforms as gt
    >>> w = jax.ShapeDtypeStruct((4, 8, 16), jnp.float32)
    >>> boxed = {"w": nn.LogicallyPartitioned(w, ("layers", "embed", "mlp"))}
    >>> rule = gt.matrix_view_from_axes(boxed)
    >>> rule((jax.tree_util.DictKey("w"),), jnp.zeros((4, 8, 16)))
    MatrixView(rows=(1,), cols=(2,), batch=(0,), col_blocks=1)
  """
  return AxisNamesMatrixView(params, rule)
