"""Which leaf of a tree is a hidden matrix, an output head, an embedding.

Muon and the optimizers built like it (Dion, NorMuon, AdaMuon, SOAP-Muon,
V-Muon, the hyperball ones, MARS-AdamW) update the hidden weight matrices
with their own rule and every other leaf (biases, norm scales, embeddings,
output heads) with AdamW (``gradtx.transforms.AdamWSide``).
``is_hidden_matrix`` is the default rule of which leaf is which, and
``matrix_roles`` the same rule over a whole tree (where an output head can be
found by its shape).
"""

import warnings
from typing import Any, Callable, Optional

import jax

from gradtx._internal import names as _names
from gradtx._internal import routing as _routing
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import axis_names as _axes
from gradtx.routing import matrix_view as _matrix_view

PathLeafRule = Callable[[tuple, jax.Array], bool]

# The leaf keys of the routing guesses already warned about (a head chosen among
# several of its shape, a masked-out embedding): each warns once per process.
_WARNED: set = set()


def is_hidden_matrix(
    path: tuple, leaf: jax.Array, *,
    matrix_view: Optional[_matrix_view.MatrixViewRule] = None,
) -> bool:
  """gradtx's default Muon routing rule.

  A leaf goes to Muon when it has a matrix view (``gt.flax_matrix_view``, or
  ``matrix_view``: dense and convolution kernels, attention projections;
  not biases, norm scales, 1-D or empty leaves) and it is neither an
  embedding nor an output head. Which rule decides, first to last:

  1. its Flax axis names, where the routing sees them (a tree of NNX
     variables or Linen boxes, or ``matrix_view=gt.matrix_view_from_axes(...)``):
     (vocab, …) is an embedding, (…, vocab) an output head, and names that
     settle rows and columns ((embed, mlp)) make a hidden matrix;
  2. names on its key path: a name containing ``"embed"`` (``embedding``,
     ``tok_embed``), ``"position"`` (learned positions), ``"wte"``,
     ``"wpe"``, ``"unembed"``, ``"logits"``, ``"readout"`` or
     ``"classifier"``, or ending in ``"head"`` (``lm_head``, ``head``), or
     named ``"pos"``;
  3. in the optimizers' routing of the whole tree (``AdamWSide.around``),
     its shape: a 2-D (d, vocab) kernel is an output head when the tree holds
     a token embedding (by 1. or 2.) of shape (vocab, d), vocab != d, whatever
     the kernel is called (Linen's ``Dense_2``); where several kernels have
     that shape, only one is the head (the nearest the root, then the last by
     name) and the choice warns (``gt.AmbiguousMatrixViewWarning``); in a
     tree with no token embedding and no head found by 1. or 2. (a CNN, an
     MLP), a 2-D ``kernel`` (Flax's, Haiku's ``w``: inputs × outputs) outside
     repeated blocks that narrows d -> k, k < d, from a width another kernel
     gives to a width no other leaf takes as its inputs is a classifier head
     (``Dense_1``, ``linear2``: 64 -> 10), as Jordan (2024) leaves the
     classifier to AdamW, where it is the only such kernel not named an
     attention or routing projection (``k_proj``, ``router``), its width is
     given by no other kernel, neither split nor concatenated, and the tree
     is no ``multi_transform``/``masked`` branch; that guess warns
     (``gt.AmbiguousMatrixViewWarning``) and ``gt.describe`` lists it.

  Everything else goes to AdamW; gt.describe shows where each leaf goes.
  Misrouting an embedding or head to Muon raises no error, only trains worse
  (Jordan 2024; optax's default labels every 2-D leaf as Muon).
  """
  with _axes.using(getattr(matrix_view, "axis_names", None)):
    if _matrix_view.view_of(path, leaf, matrix_view) is None:
      return False
    role = leaf_role(path, leaf)
  if role in ("embedding", "output_head", "matrix"):
    return role == "matrix"
  names = _names.path_names(path)
  return not (_names.is_embedding(names) or _names.is_output_head(names))


def leaf_role(path: tuple, leaf: Any) -> Optional[str]:
  """The role (``gradtx.routing.axis_names.read``) the axis names in use give a leaf."""
  axes = _axes.names_at(path, jax.numpy.shape(leaf))
  return None if axes is None else _axes.read(axes).role


def matrix_roles(params: Any, *, matrix_view: Optional[_matrix_view.MatrixViewRule] = None) -> Any:
  """Each leaf's part in the Muon family's routing, as a tree of strings.

  ``"hidden"``: a hidden matrix (``is_hidden_matrix``, less the output heads
  found by shape); ``"output_head"``: a leaf with a matrix view that its axis
  names, its path names or its shape (a (d, vocab) kernel beside a (vocab, d)
  token embedding) make an output head; ``"embedding"``: a token or position
  table by its axis names or path names; ``"other"``: the rest (biases, norm
  scales, leaves with no matrix view). ``is_hidden_matrix``'s docstring
  lists the order in which the rules decide.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  with _matrix_view.reading(params), _axes.using(getattr(matrix_view, "axis_names", None)):
    axis_roles = [leaf_role(p, x) for p, x in flat]
    names = [_names.path_names(p) for p, _ in flat]
    embeddings = [role == "embedding" or (role is None and _names.is_embedding(n))
                  for n, role in zip(names, axis_roles)]
    shaped = [(n, jax.numpy.shape(x)) for n, (_, x) in zip(names, flat)]
    settled = [role is not None or _names.is_output_head(n) for n, role in zip(names, axis_roles)]
    groups = _names.head_candidates_by_shape(shaped, embeddings, settled)
    heads = {_names.head_of(group, shaped) for group in groups}
    named_heads = [role == "output_head" or (role is None and _names.is_output_head(n))
                   for n, role in zip(names, axis_roles)]
    if not _holds_masked_leaves(params):  # a branch's part: its head may be elsewhere
      for i in _names.classifiers_by_shape(shaped, embeddings, settled, named_heads):
        heads.add(i)
        _classifier_guessed(flat[i][0], shaped[i][1])
    by_shape = [i in heads for i in range(len(flat))]
    # A LoRA adapter's factors (nnx.LoRALinear's lora.lora_a, lora_b) follow
    # the head whose kernel they adapt, as they do a head known by name.
    head_modules = {tuple(names[i][:-1]) for i in heads}
    by_shape = [head or (bool(n) and n[-1] in _LORA_FACTORS and tuple(n[:-2]) in head_modules)
                for head, n in zip(by_shape, names)]
    for group in groups:
      if len(group) > 1:
        _one_head_of_several([flat[i][0] for i in group], [i in heads for i in group])
    roles = []
    for (p, x), n, role, embedding, shape_head in zip(
        flat, names, axis_roles, embeddings, by_shape):
      has_view = _matrix_view.view_of(p, x, matrix_view) is not None
      if is_hidden_matrix(p, x, matrix_view=matrix_view):
        roles.append("output_head" if shape_head and role is None else "hidden")
      elif embedding:
        roles.append("embedding")
      elif has_view and (role == "output_head" or (
          role not in ("embedding", "matrix") and _names.is_output_head(n))):
        roles.append("output_head")
      else:
        roles.append("other")
  if not any(embeddings) and "output_head" not in roles:
    _warn_if_embedding_masked_out(params)
  return treedef.unflatten(roles)


_LORA_FACTORS = ("lora_a", "lora_b")


def _classifier_guessed(path: tuple, shape: tuple) -> None:
  """Reports (``gt.describe``; ``strict=True`` refuses it) and warns once that
  the leaf at ``path`` was taken for a classifier head from the shapes."""
  key = _routing.leaf_key(path)
  message = (
      f"{key} {shape} is taken for the model's classifier head from the shapes alone (it"
      " narrows to a width no other layer takes) and goes to AdamW, as the Muon reference"
      " keeps the output layer off Muon. If it is a hidden layer, or to settle it, name the"
      " head (head, classifier, logits), give axis names, or pass is_muon_param.")
  _routing.report_ambiguous(path, message)
  if key not in _WARNED:
    _WARNED.add(key)
    warnings.warn(message, _matrix_view.AmbiguousMatrixViewWarning,
                  stacklevel=_validate.user_stacklevel())


def _holds_masked_leaves(params: Any) -> bool:
  """Whether ``optax.multi_transform`` / ``optax.masked`` left leaves out of
  ``params`` (a branch sees its own leaves only)."""
  is_masked = _tree.is_masked_node
  return any(map(is_masked, jax.tree.leaves(params, is_leaf=is_masked)))


def _one_head_of_several(paths: list, chosen: list) -> None:
  """Reports (``gt.describe``) and warns once that ``paths`` all have the
  output head's shape and only the ``chosen`` one is routed as the head."""
  keys = [_routing.leaf_key(p) for p in paths]
  head = next(k for k, c in zip(keys, chosen) if c)
  message = (
      f"{', '.join(keys)} all have the shape of an output head beside the token embedding"
      f" (d, vocab): only {head} (the nearest the root, then the last by name) is taken"
      " for the head, the others for hidden matrices. Name the head (lm_head, logits) or"
      " give axis names ('embed', 'vocab') to settle it.")
  for path in paths:
    _routing.report_ambiguous(path, message)
  if head not in _WARNED:
    _WARNED.add(head)
    warnings.warn(message, _matrix_view.AmbiguousMatrixViewWarning,
                  stacklevel=_validate.user_stacklevel())


def _warn_if_embedding_masked_out(params: Any) -> None:
  """Warns once when a token embedding of the tree is masked out of it
  (``optax.multi_transform`` / ``optax.masked`` hand a transform its own
  leaves only) and no output head was found: a head that only its shape beside
  the embedding makes one would be routed as a hidden matrix."""
  is_masked = _tree.is_masked_node
  masked = [path for path, x in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_masked)[0]
            if is_masked(x) and _names.is_embedding(_names.path_names(path))
            and not _names.is_position_table(_names.path_names(path))]
  if not masked or _routing.leaf_key(masked[0]) in _WARNED:
    return
  _WARNED.add(_routing.leaf_key(masked[0]))
  warnings.warn(
      f"the token embedding {_routing.leaf_key(masked[0])} is masked out of the tree this"
      " optimizer routes (optax.multi_transform or optax.masked hand it its own leaves):"
      " an output head beside it cannot be found by its (d, vocab) shape, and none was"
      " found by name. If this tree holds the head, name it (lm_head, logits), give it"
      " axis names ('embed', 'vocab') or route it to another branch.",
      _matrix_view.AmbiguousMatrixViewWarning, stacklevel=_validate.user_stacklevel())
