"""Which leaf of a tree is a hidden matrix, an output head, an embedding.

Muon and the optimizers built like it (Dion, NorMuon, AdaMuon, SOAP-Muon,
V-Muon, the hyperball ones, MARS-AdamW) update the hidden weight matrices
with their own rule and every other leaf (biases, norm scales, embeddings,
output heads) with AdamW (``gradtx.transforms.AdamWSide``).
``is_hidden_matrix`` is the default rule of which leaf is which, and
``matrix_roles`` the same rule over a whole tree (where an output head can be
found by its shape).
"""

from typing import Any, Callable, Optional

import jax

from gradtx._internal import names as _names
from gradtx.routing import axis_names as _axes
from gradtx.routing import matrix_view as _matrix_view

PathLeafRule = Callable[[tuple, jax.Array], bool]


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
     ``"wpe"``, ``"unembed"``, ``"logits"`` or ``"readout"``, or ending in
     ``"head"`` (``lm_head``, ``head``), or named ``"pos"``;
  3. in the optimizers' routing of the whole tree (``AdamWSide.around``),
     its shape: a 2-D (d, vocab) kernel is an output head when the tree holds
     a token embedding (by 1. or 2.) of shape (vocab, d), vocab != d, whatever
     the kernel is called (Linen's ``Dense_2``).

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
  with _axes.reading(params), _axes.using(getattr(matrix_view, "axis_names", None)):
    axis_roles = [leaf_role(p, x) for p, x in flat]
    names = [_names.path_names(p) for p, _ in flat]
    embeddings = [role == "embedding" or (role is None and _names.is_embedding(n))
                  for n, role in zip(names, axis_roles)]
    by_shape = _names.heads_by_shape(
        [(n, jax.numpy.shape(x)) for n, (_, x) in zip(names, flat)], embeddings)
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
  return treedef.unflatten(roles)
