"""What a model saw in one forward/backward pass, for transforms that read it.

K-FAC needs each dense layer's inputs and the gradients at its outputs;
QK-clip needs each attention head's largest pre-softmax logit. Neither can be
recovered from the weight gradient, so the training step records them
(``gradtx.optimizers.nnx_records`` does it for Flax NNX models) and passes
them on with ``tx.update(grads, state, params, records=records)`` (or
``nnx.Optimizer.update(model, grads, records=records)``). The containers
here are plain pytrees and need no flax.

Records are keyed by the path of the module that produced them, its names
joined by ``"/"`` (``"blocks/0/qkv"``): the path of a parameter leaf minus
its own name (``"kernel"``, ``"bias"``) and flax NNX's trailing ``"value"``.
"""

from typing import NamedTuple, Optional

import jax

from gradtx._internal import names as _names


class DenseRecord(NamedTuple):
  """A dense layer y = x W (+ b) as seen in one pass.

  Attributes:
    inputs: x, shaped (..., fan_in); every leading position is one row.
    output_grads: δ = ∂L/∂y, shaped (..., fan_out), for the loss L that was
      differentiated (typically a mean over the rows).
  """

  inputs: jax.Array
  output_grads: jax.Array


class Records(NamedTuple):
  """Everything recorded in one pass, keyed by module path.

  Attributes:
    dense: ``{module path: DenseRecord}`` for the dense layers.
    max_logits: ``{attention module path: (num_heads,) array}``, each head's
      largest pre-softmax logit q·k/√d over the batch (masked pairs
      excluded).
  """

  dense: dict
  max_logits: dict


def empty_records() -> Records:
  return Records({}, {})


def module_key(names) -> str:
  """The record key of a module path (a sequence of names or indices)."""
  return "/".join(str(n) for n in names)


def leaf_names(path: tuple) -> list[str]:
  """A parameter leaf's path names, without flax NNX's trailing ``value``."""
  return _names.path_names(path)


def split_leaf_path(path: tuple) -> tuple[str, Optional[str]]:
  """(module key, leaf name) of a parameter leaf's key path."""
  names = leaf_names(path)
  if not names:
    return "", None
  return module_key(names[:-1]), names[-1]


def missing_record_error(
    kind: str, key: Optional[str], leaf: str, who: str
) -> ValueError:
  """The error for a leaf whose record is missing (``key=None``: no records)."""
  found = ("no records were passed" if key is None
           else f"the records have no {kind} entry {key!r}")
  return ValueError(
      f"{who}: parameter {leaf} needs a {kind} record, but {found}. Record"
      " the pass (gradtx.optimizers.nnx_records.value_grad_and_records for"
      " flax NNX, which records nnx.Linear calls and observe_attention only:"
      " not nnx.LinearGeneral, nnx.Einsum or convolutions) and call"
      " update(..., records=records), or exclude the leaf with the"
      " transform's rule argument (is_dense= for K-FAC, rule= for qk_clip).")
