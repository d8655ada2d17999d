"""``describe``: what an optimizer does to each leaf, read from the optimizer itself.

``describe(tx, params)`` traces ``tx.init`` and ``tx.update`` on abstract
parameters (``jax.eval_shape``: nothing is computed or allocated, and the
Flax axis names of ``params`` are not remembered for later plain trees, so a
look changes no training) and reads, per leaf:

* the **branch**: the labels of the ``optax.multi_transform`` partitions the
  leaf falls in (Muon's ``muon`` / ``adam`` / ``embedding``), read from the
  partition states (a partition's branch holds state for exactly its
  leaves; a branch without per-leaf state gets the leaves no other branch
  claims), and the roles the matrix transforms report (``diagonal``: a
  Kronecker, SOAP or K-FAC leaf on its diagonal fallback; ``dense``: a K-FAC
  layer; ``factored r×c``: Adafactor's second moment factored over two axes
  of those sizes, optax's rule). No labels and no role: ``matrix`` when a transform saw the leaf as
  matrices, else ``element-wise``. ``unchanged`` when the update is the
  gradient itself, untouched (found in the traced program): a leaf that
  ``optax.masked`` leaves out (no learning rate, no state: rarely what was
  meant; ``optax.multi_transform`` with ``optax.set_to_zero()`` freezes one),
  or one that a lone transform passes through (Newton–Schulz's biases);
* its **matrix view**, as the transforms that use one saw it, and its Kronecker
  **blocks** where a ``block_size`` cuts it;
* the **state bytes** it accounts for: every state entry shaped like the
  parameter tree gives each leaf its own part, and the stacks that Kronecker
  and SOAP share across leaves are split by the blocks each leaf owns. What
  belongs to no one leaf (step counts, stack padding on a mesh) is
  ``shared_bytes``.

Nothing here restates a routing rule: change the rule, the optimizer or the
wrapper, and ``describe`` shows the change.
"""

import math
import sys
from typing import Any, NamedTuple, Optional

import jax
import optax

from gradtx._internal import routing as _routing
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import axis_names as _axes

# The branch of a leaf whose update is its gradient, untouched.
UNCHANGED = "unchanged"


class LeafDescription(NamedTuple):
  """One leaf of ``describe``.

  Attributes:
    path: the leaf's key path (``jax.tree_util.keystr``, without an NNX
      variable's ``.value``).
    shape: its shape.
    dtype: its dtype's name.
    branch: where it goes (see the module docstring), e.g. ``"muon"``.
    view: the ``gt.MatrixView`` a matrix transform used, or ``None``.
    matrices: ``view``'s (num_matrices, rows, cols), or ``None``.
    blocks: the Kronecker ``BlockLayout`` (blocks of a ``block_size``), or
      ``None``.
    state_bytes: bytes of optimizer state kept for this leaf.
  """

  path: str
  shape: tuple
  dtype: str
  branch: str
  view: Optional[Any]
  matrices: Optional[tuple]
  blocks: Optional[Any]
  state_bytes: int


class Description:
  """``describe``'s answer: rows (``LeafDescription``) when iterated, a table when printed.

  Attributes:
    rows: one ``LeafDescription`` per leaf, in the tree's order.
    shared_bytes: state bytes that belong to no one leaf (counts, padding).
    ambiguous: ``{path: message}`` of the leaves whose matrix view was a
      guess (``gt.AmbiguousMatrixViewWarning``).
    notes: what could not be read (an ``update`` that needs extra arguments),
      and where training may see the tree otherwise (names read from Linen boxes).
  """

  def __init__(self, rows, shared_bytes, ambiguous, notes):
    self.rows = tuple(rows)
    self.shared_bytes = shared_bytes
    self.ambiguous = dict(ambiguous)
    self.notes = tuple(notes)

  def __iter__(self):
    return iter(self.rows)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, key):
    """A row by position, or by (a unique part of) its path."""
    if isinstance(key, int):
      return self.rows[key]
    found = [r for r in self.rows if r.path == key] or [r for r in self.rows if key in r.path]
    if len(found) != 1:
      raise KeyError(f"{key!r} matches {len(found)} leaves")
    return found[0]

  @property
  def state_bytes(self) -> int:
    return sum(r.state_bytes for r in self.rows) + self.shared_bytes

  def __str__(self):
    head = ("path", "shape", "dtype", "branch", "matrices", "blocks", "state")
    lines = [head] + [
        (r.path, "x".join(map(str, r.shape)) or "scalar", r.dtype, r.branch,
         _matrices_text(r), _blocks_text(r.blocks), _bytes_text(r.state_bytes))
        for r in self.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append(f"state: {_bytes_text(self.state_bytes)} in all"
                f" ({_bytes_text(self.shared_bytes)} shared by all leaves)")
    text += [f"guessed view: {m}" for m in self.ambiguous.values()]
    text += [f"note: {n}" for n in self.notes]
    return "\n".join(text)

  __repr__ = __str__


@_validate.checks_arguments
def describe(tx: optax.GradientTransformation, params: Any, *, strict: bool = False,
             **extra_args: Any) -> Description:
  """Per leaf of ``params``: the branch ``tx`` sends it to, its matrix view, blocks and state.

  Works for any gradtx optimizer or transform and for chains and wrappers of
  them (``optax.chain``, ``optax.multi_transform``, ``optax.masked``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``go.lookahead``,
  ``go.sam``, ``go.parameter_ema``). See the module docstring for what each
  column means and where it is read from.

  Args:
    tx: the optimizer.
    params: the parameters: arrays, ``jax.ShapeDtypeStruct`` s, an
      ``nnx.State`` or Linen's boxed parameters; only shapes, dtypes and
      Flax axis names (``gradtx.routing.axis_names``) are read.
    strict: raise a ``ValueError`` when a leaf's matrix view was guessed from
      its shape alone (``gt.AmbiguousMatrixViewWarning``).
    **extra_args: passed to ``tx.update`` (``go.sam``'s ``grad_fn``, K-FAC's
      ``records``); without the ones it needs, ``update`` is not traced and
      ``notes`` says so (the matrix views of transforms that only look at
      them in ``update``, like Newton–Schulz, are then missing).

  Returns:
    A ``Description``: iterate it for ``LeafDescription`` rows, print it for
    a table.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gradtx import optimizers as go, transforms as gt
    >>> params = {"embed": jax.ShapeDtypeStruct((50, 8), jnp.float32),
    ...           "hidden": {"kernel": jax.ShapeDtypeStruct((8, 8), jnp.float32)}}
    >>> [(r.path, r.branch) for r in gt.describe(go.muon(0.02), params)]
    [("['embed']", 'adam'), ("['hidden']['kernel']", 'muon')]
  """
  _check_arguments(tx, params)
  notes = []
  if _axes.has_linen_boxes(params):
    notes.append(
        "axis names read from Linen boxes: an optimizer handed the unboxed arrays"
        " (after nn.unbox; a TrainState of boxed params keeps them) does not see"
        " them unless its matrix_view is gt.matrix_view_from_axes(<these params>)")
  passed_through = set()
  with _routing.recording() as recorder, _axes.forgetting_trees_met():
    state = jax.eval_shape(lambda p: tx.init(p), params)
    recorder.phase = _routing.UPDATE
    try:
      passed_through = _passed_through(tx, params, state, extra_args)
    # An update that needs extra arguments: reported, and the views come from init.
    except Exception as error:  # noqa: BLE001
      notes.append(f"update not traced ({type(error).__name__}: {error}); views from init only")
  if strict and recorder.ambiguous:
    raise ValueError("\n".join(recorder.ambiguous.values()))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  keys = [_routing.leaf_key(path) for path, _ in flat]
  labels, leaf_bytes, shared = _read_state(state, params, keys, recorder)
  rows = []
  for i, (key, (_, leaf), label, nbytes) in enumerate(zip(keys, flat, labels, leaf_bytes)):
    report = recorder.leaves.get(key, _routing.LeafReport())
    view = report.views[0] if report.views else None
    shape = tuple(leaf.shape)
    branch = "/".join(label + tuple(report.roles)) or ("matrix" if view else "element-wise")
    if i in passed_through:
      branch = UNCHANGED
    rows.append(LeafDescription(
        key, shape, _dtype_name(leaf), branch, view,
        None if view is None else view.matrix_shape(shape),
        report.layouts[0] if report.layouts else None,
        nbytes + report.stack_bytes))
  stacked = sum(r.stack_bytes for r in recorder.leaves.values())
  return Description(rows, shared - stacked, recorder.ambiguous, notes)


def _check_arguments(tx, params) -> None:
  """``describe(tx, params)``, in that order; the parameters, not a model or
  an optimizer (whose own state leaves would be listed as parameters)."""
  if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
    raise TypeError(
        f"describe(tx, params): tx must be an optax.GradientTransformation, got"
        f" {type(tx).__name__} (the optimizer comes first, then the parameters)")
  nnx = sys.modules.get("flax.nnx")  # a model or optimizer there comes from flax, imported
  if nnx is not None and isinstance(params, (nnx.Optimizer, nnx.Module)):
    raise TypeError(
        f"describe(tx, params): params is the nnx.{type(params).__name__} itself (its"
        " own state leaves would be listed as parameters); pass the parameters, e.g."
        " nnx.state(model, nnx.Param)")


def _passed_through(tx, params, state, extra_args) -> set[int]:
  """Traces ``tx.update`` (abstractly) and returns the indices of the leaves
  whose update is the gradient itself, the very input (no operation on it)."""
  closed = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, **extra_args)[0])(
      params, state, params)
  n = len(jax.tree.leaves(params))
  inputs, outputs = closed.jaxpr.invars[:n], closed.jaxpr.outvars
  if len(outputs) != n:  # an update tree unlike the parameters': nothing to read
    return set()
  return {i for i, (a, b) in enumerate(zip(inputs, outputs)) if a is b}


def _read_state(state, params, keys, recorder):
  """Per leaf its partition labels and the bytes of the param-shaped state;
  the bytes of everything else."""
  structures = [jax.tree.structure(params),
                jax.tree.structure(_tree.unwrap_metadata(params))]
  n = len(keys)
  # One array (perhaps a Linen box or an NNX variable): its shape.
  single = any(map(jax.tree_util.treedef_is_leaf, structures))
  shape = tuple(jax.numpy.shape(_tree.unwrap_metadata(params))) if single else None
  labels, leaf_bytes = [()] * n, [0] * n
  partitions, claimed, stack_prefixes = [], set(), set()
  shared = 0

  def visit(node, prefix):
    nonlocal shared
    if isinstance(node, optax.MultiTransformState):
      partitions.append((prefix, tuple(node.inner_states)))
      for group, inner in node.inner_states.items():
        visit(inner, prefix + (group,))
      return
    for structure in structures:
      if jax.tree_util.treedef_is_leaf(structure) and getattr(node, "shape", None) != shape:
        continue  # a single array's structure matches any node: only its moments count
      try:
        parts = structure.flatten_up_to(node)
      except (ValueError, TypeError):
        continue
      if len(parts) > 1 and any(_holds_the_structure(part, structure) for part in parts):
        # A chain's tuple of states matched a tuple of as many parameters:
        # its parts are whole transforms' states (one holds a moment shaped
        # like all the parameters), not one leaf's.
        continue
      for i, part in enumerate(parts):
        if jax.tree.leaves(part):
          leaf_bytes[i] += _nbytes(part)
          claimed.add(prefix)
          if len(prefix) > len(labels[i]):
            labels[i] = prefix
      return
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(node)):
      shared += _nbytes(node)
      if getattr(node, "ndim", 0) >= 3:
        stack_prefixes.add(prefix)
      return
    for child in jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]:
      visit(child, prefix)

  visit(state, ())
  if shape is not None:  # one array: all the state is its own (its stacks counted apart)
    stacked = sum(r.stack_bytes for r in recorder.leaves.values())
    leaf_bytes, shared = [leaf_bytes[0] + shared - stacked], stacked
  has_stacks = [recorder.leaves.get(k, _routing.LeafReport()).stack_bytes > 0 for k in keys]
  for prefix, groups in sorted(partitions, key=lambda p: len(p[0])):
    branches = [prefix + (g,) for g in groups]
    unclaimed = [b for b in branches
                 if not any(c[:len(b)] == b for c in claimed)]
    with_stacks = [b for b in branches if any(s[:len(b)] == b for s in stack_prefixes)]
    for i in range(n):
      if labels[i] != prefix:
        continue
      if has_stacks[i] and len(with_stacks) == 1:
        labels[i] = with_stacks[0]
      elif len(unclaimed) == 1:
        labels[i] = unclaimed[0]
  return labels, leaf_bytes, shared


def _holds_the_structure(part, structure) -> bool:
  """Whether a node below ``part`` (or its own children) is laid out like the
  whole parameter tree: a transform's moment, not one leaf's entry."""
  children = jax.tree_util.tree_flatten(part, is_leaf=lambda x: x is not part)[0]
  for child in children:
    if child is part or jax.tree_util.treedef_is_leaf(jax.tree.structure(child)):
      continue
    try:
      structure.flatten_up_to(child)
      return True
    except (ValueError, TypeError):
      if _holds_the_structure(child, structure):
        return True
  return False


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * getattr(x.dtype, "itemsize", 0)
             for x in jax.tree.leaves(tree))


def _dtype_name(leaf) -> str:
  return getattr(leaf.dtype, "name", str(leaf.dtype))


def _matrices_text(row) -> str:
  if row.matrices is None:
    return "-"
  num, rows, cols = row.matrices
  text = f"{num}x{rows}x{cols}" if num > 1 else f"{rows}x{cols}"
  blocks = row.view.col_blocks
  return text + (f" ({blocks} col blocks)" if blocks > 1 else "")


def _blocks_text(layout) -> str:
  if layout is None:
    return "-"
  sides = "" if layout.left and layout.right else (" rows" if layout.left else " cols")
  return (f"{layout.row_blocks}x{layout.col_blocks} of"
          f" {layout.block_rows}x{layout.block_cols}{sides}")


def _bytes_text(n: int) -> str:
  if n < 1024:
    return f"{n} B"
  power = min(int(math.log(n, 1024)), 3)
  return f"{n / 1024 ** power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"
