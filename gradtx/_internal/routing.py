"""What the transforms decide per leaf, reported to ``gradtx.describe``.

``gradtx.describe`` traces an optimizer's ``init`` and ``update`` inside
``recording()``. Meanwhile the transforms report what they decide for each
leaf: its matrix view (``matrix_view.views_of``), its Kronecker blocks
(``kronecker.layouts_of``), a role (a diagonal fallback, a dense K-FAC layer),
the bytes of state they keep for it in stacks shared by many leaves, and
leaves whose view was a guess. Outside ``recording()`` every report is a
no-op. Leaves are keyed by ``leaf_key``: their key path, without the
``.value`` of a flax NNX variable, so the same leaf has the same key in a
tree of variables and in a tree of plain arrays.
"""

import collections
import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator, Sequence

import jax

INIT, UPDATE = "init", "update"


@dataclasses.dataclass
class LeafReport:
  """What the transforms reported for one leaf, each list in report order."""

  views: list = dataclasses.field(default_factory=list)
  layouts: list = dataclasses.field(default_factory=list)
  roles: list = dataclasses.field(default_factory=list)
  stack_bytes: int = 0


@dataclasses.dataclass
class Recorder:
  """The reports of one ``recording()``; ``phase`` is set by the tracer."""

  phase: str = INIT
  leaves: dict = dataclasses.field(
      default_factory=lambda: collections.defaultdict(LeafReport))
  ambiguous: dict = dataclasses.field(default_factory=dict)  # key -> message


_RECORDER: contextvars.ContextVar = contextvars.ContextVar("gradtx_routing", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
  """Collects the reports made inside the ``with`` block."""
  recorder = Recorder()
  token = _RECORDER.set(recorder)
  try:
    yield recorder
  finally:
    _RECORDER.reset(token)


def plain_path(path: Sequence[Any]) -> tuple:
  """``path`` without the trailing ``.value`` of a flax NNX variable.

  ``nnx.Optimizer`` hands ``init`` a tree of variables and ``update`` plain
  arrays: every routing rule, a user's included, is called with this path, so
  that it sees the same path for the same leaf in both.
  """
  path = tuple(path)
  if path and getattr(path[-1], "name", None) == "value":
    path = path[:-1]
  return path


def leaf_key(path: Sequence[Any]) -> str:
  """``jax.tree_util.keystr`` of ``path`` without a trailing ``.value``."""
  return jax.tree_util.keystr(plain_path(path))


def _add(items: list, item: Any) -> None:
  if item not in items:
    items.append(item)


def report_per_leaf(tree: Any, field: str, values: Sequence[Any]) -> None:
  """``values`` (one per leaf of ``tree``, ``None``: nothing) into ``field``."""
  if _RECORDER.get() is not None:
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    report_per_path(paths, field, values)


def report_per_path(paths: Sequence[Any], field: str, values: Sequence[Any]) -> None:
  """``values`` (one per key path, ``None``: nothing) into ``field``."""
  recorder = _RECORDER.get()
  if recorder is None:
    return
  for path, value in zip(paths, values):
    if value is not None:
      _add(getattr(recorder.leaves[leaf_key(path)], field), value)


def report_stack_bytes(paths: Sequence[Any], nbytes: Sequence[int]) -> None:
  """Bytes of stacked state kept for the leaves at ``paths`` (at ``init``)."""
  recorder = _RECORDER.get()
  if recorder is None or recorder.phase != INIT:
    return
  for path, n in zip(paths, nbytes):
    recorder.leaves[leaf_key(path)].stack_bytes += int(n)


def report_ambiguous(path: Sequence[Any], message: str) -> None:
  recorder = _RECORDER.get()
  if recorder is not None:
    recorder.ambiguous.setdefault(leaf_key(path), message)


# The default ``leaf`` of a matrix-view rule: a rule called without one was
# called as a schedule (``optax.inject_hyperparams`` calls every callable
# hyperparameter not in ``static_args`` with the step count).
NO_LEAF = object()


def check_rule_call(rule: str, leaf: Any) -> None:
  """Raises where the rule ``rule`` was called without a leaf."""
  if leaf is NO_LEAF:
    raise TypeError(
        f"{rule} was called with one argument, as optax.inject_hyperparams calls a"
        " schedule: a matrix-view rule takes (path, leaf). List it in static_args:"
        " optax.inject_hyperparams(factory, static_args=('matrix_view',)).")
