"""How a parameter is seen as matrices: the one rule every matrix transform uses.

Newton–Schulz, singular-value clipping, Kronecker factors, SOAP's bases,
grafting blocks, Muon's shape scale and Adam-mini's per-neuron and per-head
blocks all ask the same question of a leaf: which of its axes are the rows
(fan-in), which the columns (fan-out), and which index separate matrices. A
``MatrixView`` is the answer and a *matrix-view rule*, a function of
``(path, leaf)``, gives it (``None``: the leaf is not a matrix, e.g. a bias).

The default, ``flax_matrix_view``, reads a leaf's Flax axis names first
where it can see them (``nnx.with_partitioning``, Linen's logical
partitioning, the ``layers`` axis ``nnx.scan`` adds: the table of recognised
names is in ``gradtx.routing.axis_names``); what they leave open, names on
the key path and then the shape decide, after Flax's layouts (kernels are
(fan_in, ..., fan_out)):

=============================================  ===================  =====================
Flax parameter (shape)                          rows (fan-in)        columns (fan-out)
=============================================  ===================  =====================
``nnx.Linear`` kernel (in, out)                 in                   out
``nnx.Embed`` embedding (vocab, features)       vocab                features
``nnx.Conv`` kernel (k₁, …, in, out)            k₁·…·in              out
``MultiHeadAttention`` query/key/value kernel   in                   heads·head_dim
(in, heads, head_dim)
``MultiHeadAttention`` out kernel               heads·head_dim       out
(heads, head_dim, out), beside query/key/value
the same scanned (layers, ...): the module's    as above, per layer  as above
4-D query/key/value and out kernels
an expert stack (experts, in, out): a name      in, per expert       out
containing ``"expert"``; (layers, experts,      (and per layer)
in, out) when scanned
``nnx.Einsum`` kernel                           declare it: ``einsum_matrix_view(spec)``
scanned stacks (``nnx.scan``/``nnx.vmap``)      their axis names (``layers``), else
                                                declare it: ``stacked_matrix_view(n)``
biases, norm scales (any shape), 0-/1-D leaves  not matrices (``None``)
=============================================  ===================  =====================

A leaf of 3 or more dimensions that no name settles (a convolution: a name
containing ``"conv"``; attention: ``query``/``key``/``value``/``out``;
experts) is read as a convolution kernel, but that is a guess: a scanned
stack of dense kernels has the same shape (a stacked ``o_proj``, or an
``out`` whose module holds no query/key/value kernels, included). The guess warns once per leaf
(``AmbiguousMatrixViewWarning``, naming the leaf, the view and the fix), and
``flax_matrix_view(path, leaf, strict=True)`` refuses it instead;
``gradtx.describe`` lists such leaves.

Override it per leaf with any function of ``(path, leaf)``, e.g.
``lambda path, leaf: gt.MatrixView(rows=(0,), cols=(1,), batch=(2,)) if
"experts" in jax.tree_util.keystr(path) else gt.flax_matrix_view(path, leaf)``.
"""

import contextlib
import contextvars
import dataclasses
import math
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import names as _names
from gradtx._internal import routing as _routing
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import axis_names as _axes


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """A leaf seen as a stack of (rows × cols) matrices.

  Every axis of the leaf is in exactly one of ``batch``, ``rows`` and
  ``cols``. The leaf, transposed to ``batch + rows + cols`` and reshaped, is
  an array of shape (num_matrices, num_rows, num_cols).

  Attributes:
    rows: the axes whose product is a matrix's rows (fan-in), in order.
    cols: the axes whose product is its columns (fan-out).
    batch: the axes that index separate matrices (layers of a scanned
      stack, experts, heads of an ``einsum_matrix_view``).
    col_blocks: the columns are this many equal, consecutive blocks, each a
      matrix of its own (a fused (d, 3d) qkv kernel is the three (d, d)
      matrices q, k and v: ``fused_qkv_matrix_view``).
  """

  rows: tuple[int, ...]
  cols: tuple[int, ...]
  batch: tuple[int, ...] = ()
  col_blocks: int = 1

  @property
  def order(self) -> tuple[int, ...]:
    return self.batch + self.rows + self.cols

  def matrix_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(num_matrices, num_rows, num_cols) of a leaf of ``shape``."""
    if sorted(self.order) != list(range(len(shape))):
      raise ValueError(
          f"{self} does not name every axis of a leaf of shape {shape} once")
    size = lambda axes: math.prod(shape[a] for a in axes)
    k = self.col_blocks
    if k < 1 or size(self.cols) % k:
      raise ValueError(
          f"{self}: col_blocks={k} does not divide the {size(self.cols)} columns"
          f" of a leaf of shape {shape}")
    return size(self.batch) * k, size(self.rows), size(self.cols) // k

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """``x`` as its (num_matrices, num_rows, num_cols) stack."""
    num, rows, cols = self.matrix_shape(x.shape)
    if self.order != tuple(range(x.ndim)):
      x = jnp.transpose(x, self.order)
    if self.col_blocks == 1:
      return x.reshape(num, rows, cols)
    x = x.reshape(num // self.col_blocks, rows, self.col_blocks, cols)
    return jnp.swapaxes(x, 1, 2).reshape(num, rows, cols)

  def from_matrices(self, m: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of ``to_matrices`` for a leaf of ``shape``."""
    transposed = tuple(shape[a] for a in self.order)
    if self.col_blocks > 1:
      num, rows, cols = m.shape
      m = jnp.swapaxes(m.reshape(num // self.col_blocks, self.col_blocks, rows, cols), 1, 2)
    x = m.reshape(transposed)
    if self.order != tuple(range(len(shape))):
      x = jnp.transpose(x, tuple(self.order.index(a) for a in range(len(shape))))
    return x


MatrixViewRule = Callable[[tuple, Any], Optional[MatrixView]]

# The attribute names of flax's MultiHeadAttention projections.
_ATTENTION_INPUTS = ("query", "key", "value")
_ATTENTION_OUTPUT = "out"

# Per module (its key-path names) holding MultiHeadAttention kernels in the
# tree ``views_of`` is reading, their shapes by projection name (``query``,
# ``key``, ``value``, ``out``); None outside one (a rule called alone).
_ATTENTION_MODULES = contextvars.ContextVar("attention_modules", default=None)


@contextlib.contextmanager
def reading(tree: Any):
  """What ``flax_matrix_view`` reads of the whole ``tree`` in the block: its
  Flax axis names (``axis_names.reading``) and its MultiHeadAttention
  modules, so that a kernel named ``out`` is settled only in a module that
  holds query/key/value kernels, and 4-D attention kernels are a scanned
  stack only where the module's projections agree on it."""
  modules = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = _names.path_names(path)
    if len(names) >= 2 and (names[-2] in _ATTENTION_INPUTS + (_ATTENTION_OUTPUT,)
                            or names[-2] in _names.FUSED_QKV_PARTS):
      modules.setdefault(tuple(names[:-2]), {})[names[-2]] = tuple(jnp.shape(leaf))
  token = _ATTENTION_MODULES.set(modules)
  try:
    with _axes.reading(tree):
      yield
  finally:
    _ATTENTION_MODULES.reset(token)


def _attention_module(names: list[str]) -> Optional[dict]:
  """The projections' shapes of the module holding this kernel (None: outside
  ``views_of``; {}: no MultiHeadAttention there)."""
  modules = _ATTENTION_MODULES.get()
  if modules is None:
    return None
  return modules.get(tuple(names[:-2]), {})


def _is_flax_attention_output(names: list[str]) -> bool:
  """A 3-D kernel named ``out`` in a module that also holds query, key or
  value kernels (flax's MultiHeadAttention); outside ``views_of``, any such
  ``out``. (torch's ``o_proj``/``out_proj`` are 2-D linear layers: stacked,
  a guess.)"""
  if len(names) < 2 or names[-2] != _ATTENTION_OUTPUT:
    return False
  module = _attention_module(names)
  return module is None or any(n in module for n in _ATTENTION_INPUTS + _names.FUSED_QKV_PARTS)


def _is_expert_stack(names: list[str], ndim: int) -> bool:
  """A 3-D leaf (experts, in, out) or a 4-D one (layers, experts, in, out)
  named ``expert``; not a convolution's kernel inside an expert (a 1-D one's
  (k, in, out) in its own ``conv`` module; a 2-D one's, 4-D, anywhere)."""
  if not _names.is_expert_stack(names):
    return False
  if ndim == 3:
    return not _names.is_convolution(_names.own_names(names))
  return ndim == 4 and not _names.is_convolution(names)


def _scanned_attention(names: list[str], shape: tuple) -> bool:
  """A 4-D query/key/value (layers, in, heads, head_dim) or out (layers,
  heads, head_dim, out) kernel of a scanned MultiHeadAttention: its module
  holds both kinds, on the same layers, heads and head_dim."""
  if len(names) < 2 or names[-2] not in _ATTENTION_INPUTS + (_ATTENTION_OUTPUT,):
    return False
  module = _attention_module(names) or {}
  inputs = [module[n] for n in _ATTENTION_INPUTS if n in module]
  out = module.get(_ATTENTION_OUTPUT)
  return (len(shape) == 4 and out is not None and len(out) == 4 and bool(inputs)
          and all(len(s) == 4 and (s[0], s[2], s[3]) == out[:3] for s in inputs))


class AmbiguousMatrixViewWarning(UserWarning):
  """A leaf's matrix view, or its routing as an output head, was guessed from its shape alone."""


# (leaf key, shape) of the guesses already warned about: each warns once.
_WARNED: set = set()


@_validate.checks_arguments
def flax_matrix_view(path: tuple, leaf: Any = _routing.NO_LEAF, *,
                     strict: bool = False) -> Optional[MatrixView]:
  """The default matrix view of a leaf, from its axis names, key path and shape.

  First the leaf's Flax axis names, where the transform can see them
  (``gradtx.routing.axis_names``: ``layers``/``exp`` axes are the view's
  batch, (embed, mlp) is embed × mlp, a stacked bias or norm scale is no
  matrix); they leave open what they do not recognise. Then the module
  docstring's table, by name and shape. In order: 0- and 1-D leaves and leaves
  whose own name contains ``"bias"`` or ``"scale"`` have no view; 2-D leaves
  are (rows, cols) as they are; 3-D kernels of flax's MultiHeadAttention
  ``query``/``key``/``value`` projections are (in, heads·head_dim); 3-D
  leaves with ``"expert"`` in a name are a stack of (in, out) matrices (4-D:
  scanned layers of them); the 4-D query/key/value and out kernels of a
  module that holds both, on the same layers, heads and head_dim, are a
  scanned MultiHeadAttention's, one matrix per layer; every other leaf of 3
  or more dimensions is a kernel (fan_in…, fan_out): rows are all axes but
  the last. That last reading is a guess unless a name says convolution (up
  to 4 axes: a 5-D kernel may be a 3-D convolution or scanned 2-D ones) or
  MultiHeadAttention output (3 axes, ``out`` beside query/key/value kernels
  when the whole tree is read): it warns once per leaf
  (``AmbiguousMatrixViewWarning``).

  Args:
    path: the leaf's key path (``jax.tree_util`` keys).
    leaf: the parameter (an array or a ``jax.ShapeDtypeStruct``; only its
      shape is read).
    strict: raise a ``ValueError`` instead of warning about a guess.

  Returns:
    The leaf's ``MatrixView``, or ``None``.
  """
  _routing.check_rule_call("gt.flax_matrix_view", leaf)
  shape = tuple(jnp.shape(leaf))
  axes = _axes.names_at(path, shape)
  if axes is not None:
    reading = _axes.read(axes)
    if reading.role == "vector":
      return None
    if reading.rows is not None:
      view = MatrixView(reading.rows, reading.cols, reading.batch)
      own = [a for a in range(len(shape)) if a not in reading.batch]
      if (len(own) == 3 and _names.is_attention_output(_names.path_names(path))
          and _axes.role_of_axis(axes[own[0]]) == "embed"):
        # flax's MultiHeadAttention gives the output projection kernel_init's
        # names (a query's) unless out_kernel_init is passed: its layout,
        # (heads, head_dim, out), is taken.
        view = MatrixView((own[0], own[1]), (own[2],), reading.batch)
        _warn(path, strict, (
            f"{_routing.leaf_key(path)} {shape}: an attention output kernel whose axis"
            f" names {axes} start with the model width, as a query's do: flax's"
            " MultiHeadAttention gives the output projection kernel_init's names"
            " unless out_kernel_init is passed. Its layout, (heads, head_dim, out),"
            " is taken (one heads·head_dim x out matrix), not the names'; pass"
            " out_kernel_init=nnx.with_partitioning(init, (heads, kv, embed)) names."))
      return view
    if reading.batch:
      return _around_batch(path, shape, reading.batch, strict)
  ndim = len(shape)
  names = _names.path_names(path)
  if ndim < 2 or _names.is_vector(names):
    return None
  if ndim > 2 and sum(n > 1 for n in shape) < 2:  # a vector kept with unit axes: ViT's cls token
    return None
  if ndim == 3 and any(n in _ATTENTION_INPUTS for n in names[:-1]):
    return MatrixView(rows=(0,), cols=(1, 2))
  if _is_expert_stack(names, ndim):
    return MatrixView(rows=(ndim - 2,), cols=(ndim - 1,), batch=tuple(range(ndim - 2)))
  # Scanned MultiHeadAttention: one (in, heads·head_dim) or (heads·head_dim,
  # out) matrix per layer, where the module's projections agree on it.
  if _scanned_attention(names, shape):
    if names[-2] == _ATTENTION_OUTPUT:
      return MatrixView(rows=(1, 2), cols=(3,), batch=(0,))
    return MatrixView(rows=(1,), cols=(2, 3), batch=(0,))
  view = MatrixView(rows=tuple(range(ndim - 1)), cols=(ndim - 1,))
  # The names settle flax's layouts only: a 3-D MultiHeadAttention output
  # (heads, head_dim, out), a 1- or 2-D convolution; with more axes they may
  # be scanned layers (a 5-D "conv" kernel, which a 3-D convolution's also
  # is). A 4-D "conv" kernel is taken as a 2-D convolution's, though a
  # scanned stack of 1-D ones has that shape too (README, Routing).
  settled = ((ndim == 3 and _is_flax_attention_output(names))
             or (ndim <= 4 and _names.is_convolution(names)))
  if ndim == 5 and _names.is_convolution(names):
    _warn(path, strict, (
        f"{_routing.leaf_key(path)} {shape}: a 5-D convolution kernel is a 3-D"
        " convolution's (kd, kh, kw, in, out) or a stack of 2-D ones (scanned"
        " layers); it is seen as one (kd·kh·kw·in) x out matrix. For a 3-D"
        " convolution keep that with a matrix_view= rule returning"
        " gt.MatrixView(rows=(0, 1, 2, 3), cols=(4,)) for it; for scanned layers"
        " name the axis ('layers') or pass matrix_view=gt.stacked_matrix_view()."),
        shape)
  elif ndim > 2 and not settled and not (_names.is_embedding(names)
                                         or _names.is_output_head(names)):
    # (the Muon family sends embeddings and heads to AdamW, the view unused)
    _guessed(path, shape, view, strict)
  return view


def _around_batch(path: tuple, shape: tuple, batch: tuple, strict: bool) -> Optional[MatrixView]:
  """The view of a leaf whose axis names settle only its ``batch`` axes: the
  path's names and the shape decide on the other axes."""
  others = [a for a in range(len(shape)) if a not in batch]
  inner = flax_matrix_view(
      path, jax.ShapeDtypeStruct(tuple(shape[a] for a in others), jnp.float32), strict=strict)
  if inner is None:
    return None
  axes = lambda inner_axes: tuple(others[a] for a in inner_axes)
  return MatrixView(axes(inner.rows), axes(inner.cols), batch + axes(inner.batch),
                    inner.col_blocks)


def _guessed(path: tuple, shape: tuple, view: MatrixView, strict: bool) -> None:
  key = _routing.leaf_key(path)
  _, rows, cols = view.matrix_shape(shape)
  message = (
      f"{key} {shape}: a {len(shape)}-D leaf with no name that settles its layout is"
      f" seen as one {rows}x{cols} matrix (a convolution kernel: rows are all axes"
      " but the last). If its leading axes index separate matrices (scanned layers,"
      " experts), give them axis names (nnx.with_partitioning, 'layers') or pass"
      " matrix_view=gt.stacked_matrix_view() (where= picks the stacked leaves: the"
      " others keep their own view); an nnx.Einsum or DenseGeneral kernel is read"
      " by gt.einsum_matrix_view(spec); to keep this view, pass your own rule as"
      " matrix_view= or name the module (conv, expert).")
  _warn(path, strict, message, shape)


def _warn(path: tuple, strict: bool, message: str, shape: tuple = ()) -> None:
  """Reports (``gt.describe``) and warns once, or raises where ``strict``."""
  key = _routing.leaf_key(path)
  _routing.report_ambiguous(path, message)
  if strict:
    raise ValueError(message)
  if (key, shape, message) not in _WARNED:
    _WARNED.add((key, shape, message))
    warnings.warn(message, AmbiguousMatrixViewWarning,
                  stacklevel=_validate.user_stacklevel())


def _settled_by_names(path: tuple, shape: tuple) -> bool:
  """Whether the axis names in use settle the leaf's matrices or stack axes."""
  axes = _axes.names_at(path, shape)
  if axes is None:
    return False
  reading = _axes.read(axes)
  return reading.rows is not None or bool(reading.batch) or reading.role == "vector"


@_validate.checks_arguments
def stacked_matrix_view(
    num_axes: int = 1, rule: MatrixViewRule = flax_matrix_view,
    where: Optional[Callable[[tuple, Any], bool]] = None,
) -> MatrixViewRule:
  """A rule for stacked layers: the leading ``num_axes`` axes index matrices.

  For parameters of layers built with ``nnx.scan`` / ``nnx.vmap`` (a leading
  layer axis): on a stacked leaf ``rule`` is applied to the shape without
  those axes, which become the view's ``batch``. Stacked leaves are those
  ``where(path, leaf)`` picks; by default every leaf with at least
  ``num_axes + 2`` axes (a stack of matrices). Every other leaf keeps the view
  ``rule`` gives it: the model's ordinary 2-D kernels stay matrices, and so
  does a leaf whose axis names settle its matrices or its stack axes (an
  expert stack named (layers, exp, embed, mlp)).
  """
  num_axes = _validate.check_integer("num_axes", num_axes, 1)

  def stacked(path, leaf=_routing.NO_LEAF):
    _routing.check_rule_call("gt.stacked_matrix_view()", leaf)
    shape = tuple(jnp.shape(leaf))
    is_stack = len(shape) >= num_axes + 2 if where is None else where(path, leaf)
    if not is_stack or _settled_by_names(path, shape):
      return rule(path, leaf)
    if len(shape) <= num_axes:
      return None
    inner = rule(path, jax.ShapeDtypeStruct(shape[num_axes:], jnp.float32))
    if inner is None:
      return None
    shift = lambda axes: tuple(a + num_axes for a in axes)
    return MatrixView(shift(inner.rows), shift(inner.cols),
                      tuple(range(num_axes)) + shift(inner.batch), inner.col_blocks)

  stacked.axis_names = getattr(rule, "axis_names", None)
  return stacked


@_validate.checks_arguments
def fused_qkv_matrix_view(
    num_parts: int = 3, rule: MatrixViewRule = flax_matrix_view
) -> MatrixViewRule:
  """A rule that sees a fused attention input kernel as ``num_parts`` matrices.

  A leaf whose path names a fused projection (a name containing ``"qkv"`` or
  ``"c_attn"``, ``gradtx._internal.names.FUSED_QKV_PARTS``) and whose view
  under ``rule`` is (rows, num_parts·rows) matrices gets
  ``col_blocks=num_parts``: a (d, 3d) ``nnx.Linear`` kernel is q, k and v,
  three (d, d) matrices, as the reference Muon (modded-nanogpt) orthogonalizes
  them. Every other leaf keeps ``rule``'s view, and so does a fused kernel of
  another width (grouped-query attention's (d, d + 2·d_kv), whose blocks are
  not equal).
  """
  if not isinstance(num_parts, int) or num_parts < 1:
    raise ValueError(f"num_parts must be an integer >= 1, got {num_parts!r}")

  def fused(path, leaf=_routing.NO_LEAF):
    _routing.check_rule_call("gt.fused_qkv_matrix_view()", leaf)
    view = rule(path, leaf)
    if view is None or not _names.is_fused_qkv(_names.path_names(path)):
      return view
    _, rows, cols = view.matrix_shape(tuple(jnp.shape(leaf)))
    if cols != num_parts * rows:
      return view
    return dataclasses.replace(view, col_blocks=view.col_blocks * num_parts)

  fused.axis_names = getattr(rule, "axis_names", None)
  return fused


def einsum_matrix_view(spec: str) -> MatrixView:
  """The view of an ``nnx.Einsum`` kernel from its einsum string.

  For ``"inputs,kernel->output"``: kernel axes contracted with the input are
  the rows, axes that only reach the output are the columns, and axes shared
  by input, kernel and output (e.g. heads in ``"bnd,ndh->bnh"``) index
  separate matrices.

  Example:
    >>> from gradtx import transforms as gt
    >>> gt.einsum_matrix_view("btd,dnh->btnh")
    MatrixView(rows=(0,), cols=(1, 2), batch=(), col_blocks=1)
  """
  try:
    inputs, output = spec.replace(" ", "").split("->")
    operand, kernel = inputs.split(",")
  except ValueError:
    raise ValueError(
        f"spec must read 'inputs,kernel->output', got {spec!r}") from None
  rows = tuple(i for i, a in enumerate(kernel) if a in operand and a not in output)
  cols = tuple(i for i, a in enumerate(kernel) if a in output and a not in operand)
  batch = tuple(i for i, a in enumerate(kernel) if a in operand and a in output)
  if not rows or not cols or len(rows + cols + batch) != len(kernel):
    raise ValueError(f"the kernel of {spec!r} has no (rows, cols) matrix view")
  return MatrixView(rows, cols, batch)


def view_of(path: tuple, leaf: Any, rule: Optional[MatrixViewRule]) -> Optional[MatrixView]:
  """``rule``'s view of a leaf (default rule: ``flax_matrix_view``).

  Empty leaves (a zero-size axis) are never matrices, whatever the rule.
  """
  if rule is not None and not callable(rule):
    raise ValueError(
        "matrix_view must be None or a rule, a function of (path, leaf) giving a"
        f" MatrixView or None (e.g. gt.stacked_matrix_view()), got {rule!r}")
  if math.prod(jnp.shape(leaf)) == 0:
    return None
  path = _routing.plain_path(path)
  view = (flax_matrix_view if rule is None else rule)(path, leaf)
  if view is not None:
    try:
      view.matrix_shape(tuple(jnp.shape(leaf)))  # validates
    except ValueError as error:
      raise ValueError(
          f"the matrix view of {_routing.leaf_key(path)}: {error}") from None
  return view


def views_of(tree: Any, rule: Optional[MatrixViewRule]) -> list:
  """The ``MatrixView`` (or ``None``) of every leaf of ``tree``, as a list."""
  with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  with reading(tree):
    views = [view_of(path, leaf, rule) for path, leaf in with_paths]
  _routing.report_per_leaf(tree, "views", views)
  return views


def batch_axes(path: tuple, leaf: Any, rule: Optional[MatrixViewRule]) -> tuple[int, ...]:
  """The axes of a leaf that index separate arrays (scanned layers, experts).

  For transforms that keep state per axis of a leaf rather than per matrix
  (PSGD Kron). With a ``rule``: the ``batch`` of its view (none without one).
  By default only what settles them without a guess at rows and columns, so
  without a warning: the leaf's Flax axis names (``layers``, ``exp``, ...,
  ``gradtx.routing.axis_names``), else ``"expert"`` in the path of a 3- or
  4-D leaf and a scanned MultiHeadAttention's 4-D kernels (as
  ``flax_matrix_view`` reads them).
  """
  if rule is not None:
    view = view_of(path, leaf, rule)
    return () if view is None else tuple(view.batch)
  shape = tuple(jnp.shape(leaf))
  names = _axes.names_at(path, shape)
  if names is not None:
    return tuple(_axes.read(names).batch)
  names = _names.path_names(path)
  if _is_expert_stack(names, len(shape)):
    return tuple(range(len(shape) - 2))
  if _scanned_attention(names, shape):
    return (0,)
  return ()


def batch_axes_of(tree: Any, rule: Optional[MatrixViewRule]) -> list:
  """``batch_axes`` of every leaf of ``tree``, as a list."""
  with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  with reading(tree):
    return [batch_axes(path, leaf, rule) for path, leaf in with_paths]


def map_view_statistics(
    fn: Callable[[Any, MatrixView], tuple], num_outputs: int, params: Any,
    rule: Optional[MatrixViewRule],
) -> tuple:
  """``fn(leaf, view)`` for each leaf with a view under ``rule``, ``None`` for the others.

  Per-matrix state (row or column statistics of each matrix of a view), as
  ``num_outputs`` trees collected like ``gradtx._internal.tree.map_statistics``
  (state not shaped like its parameter).
  """
  views = views_of(params, rule)

  def statistic(path, p):
    del path
    view = views.pop(0)
    return (None,) * num_outputs if view is None else fn(p, view)

  return _tree.map_statistics(statistic, num_outputs, params, with_path=True)


def on_matrix_views(
    inner: optax.GradientTransformation,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Runs a stateless ``inner`` transform on the matrix views of the leaves.

  .. math:: u \leftarrow \mathrm{view}^{-1}(\mathrm{inner}(\mathrm{view}(u)))

  Each leaf with a view reaches ``inner`` as its (num_matrices, rows, cols)
  stack and is reshaped back; leaves without one skip ``inner`` (it sees
  ``None`` there) and come out unchanged.

  Args:
    inner: a stateless transformation that treats leading axes as a batch.
    matrix_view: the matrix-view rule; default ``flax_matrix_view``.

  Returns:
    An ``optax.GradientTransformation`` with ``inner``'s state; an ``inner``
    whose state holds arrays (moments laid out like the leaves, not their
    views) is refused at ``init``, scalars (a step count) are kept.
  """
  _validate.check_transformation("inner", inner)

  def init_fn(params):
    state = inner.init(params)
    if any(jnp.ndim(x) for x in jax.tree.leaves(state)):
      raise ValueError(
          f"on_matrix_views runs a stateless inner transform, but {inner!r} keeps"
          " arrays in its state (built on the leaves, stepped on their matrix"
          " views): chain a stateful transform outside on_matrix_views")
    return state

  def update_fn(updates, state, params=None):
    leaves, treedef = jax.tree.flatten(updates)
    views = views_of(updates, matrix_view)
    # Leaves without a view are hidden from inner (as None) and kept as they are.
    shaped = [None if v is None else v.to_matrices(u) for u, v in zip(leaves, views)]
    out, state = inner.update(treedef.unflatten(shaped), state, params)
    out = [
        u if v is None else v.from_matrices(o, u.shape)
        for o, u, v in zip(treedef.flatten_up_to(out), leaves, views)
    ]
    return treedef.unflatten(out), state

  return optax.GradientTransformation(init_fn, update_fn)
