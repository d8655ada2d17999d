"""Parameter names: what a leaf's key path says about its role.

One list of each kind of name, shared by every rule that routes or partitions
leaves by name (Muon's ``is_hidden_matrix``, Adam-mini's default blocks, the
default matrix view), so the rules cannot drift apart.
"""

import re
from typing import Optional

# An input table: token embeddings and learned positions (nnx.Embed's
# "embedding", GPT-2's "wte"/"wpe"). "unembed" is an output head instead.
EMBEDDING_PARTS = ("embed", "embd", "wte", "wpe", "position")
# Names that are a learned position table only as a whole name ("pos" is
# part of "compose", "transpose").
EMBEDDING_NAMES = ("pos", "pos_emb")
# An output projection onto the vocabulary or the classes; also any name that
# ends in "head" (lm_head, head).
OUTPUT_HEAD_PARTS = ("unembed", "logits", "readout", "classifier", "qa_outputs")
# Query and key projections: exact names, then parts of names.
QUERY_KEY_NAMES = ("q", "k", "wq", "wk")
QUERY_KEY_PARTS = ("query", "key", "q_proj", "k_proj", "qkv", "c_attn", "in_proj")
# Fused query-key-value input projections (one kernel, q|k|v column blocks).
# Not "in_proj": Mamba's in_proj is a fused (x, z) projection.
FUSED_QKV_PARTS = ("qkv", "c_attn")
# Vectors that are never matrices, whatever their shape (flax's
# MultiHeadAttention has (heads, head_dim) biases).
VECTOR_NAMES = ("bias", "scale")
# Kernels of 3+ dimensions whose layout a name settles: convolutions
# (k₁, …, in, out), flax MultiHeadAttention's output projection
# (heads, head_dim, out), and stacks of experts (experts, in, out).
CONVOLUTION_PARTS = ("conv",)
ATTENTION_OUTPUT_NAMES = ("out", "o_proj", "out_proj")
EXPERT_PARTS = ("expert",)
# The leaf names of kernels laid out (inputs, outputs): Flax's and Haiku's
# (PyTorch's and Equinox's "weight" is (outputs, inputs)).
IN_OUT_KERNEL_NAMES = ("kernel", "w")
# Projections that narrow to a width nothing else takes without ending the
# model: grouped-query keys and values, mixture-of-experts routers.
NARROWING_PARTS = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "kv", "qkv", "attn",
                   "attention", "router", "gate")
NARROWING_NAMES = ("q", "k", "v", "wq", "wk", "wv")


def path_names(path: tuple) -> list[str]:
  """The lower-cased names along a pytree key path (keys, attributes, indices).

  For the path of ``params["block0"]["qkv"]["kernel"]`` this is
  ``["block0", "qkv", "kernel"]``, and so it is for a flattened key
  ``params["block0/qkv/kernel"]`` (keys are split at ``/`` and ``.``). A
  trailing ``"value"`` (the attribute of a flax NNX variable) is dropped, so
  the last name is the parameter's own.
  """
  names = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        name = str(getattr(key, attribute)).lower()
        break
    else:
      name = str(key).lower()
    names.extend(part for part in name.replace(".", "/").split("/") if part)
  if names and names[-1] == "value":
    names.pop()
  return names


def own_names(names: list[str]) -> list[str]:
  """The parameter's own name and its module's (the last two names that are
  not list indices), whose parts say a leaf is an embedding or a head."""
  return [n for n in names if not n.isdigit()][-2:]


def enclosing_names(names: list[str]) -> list[str]:
  """The names of the modules around the leaf's own, list indices and Linen's
  ``_N`` suffixes dropped. They say a leaf is in a head or an embedding only
  as whole words (``head``, ``lm_head``, ``ClassificationHead_0``,
  ``classifier``, ``embeddings``, ``patch_embed``), so that a ``multihead`` or
  ``multi_head`` attention module's and a ``PositionwiseFeedForward``'s
  kernels stay hidden matrices."""
  return [re.sub(r"_\d+$", "", n) for n in names if not n.isdigit()][:-2]


def _ends_in_head(n: str) -> bool:
  """``head``, ``lm_head``, Linen's ``Head_0`` / ``LMHead_0``; not an attention
  module's ``multihead`` / ``multi_head``."""
  n = re.sub(r"_\d+$", "", n)
  return n.endswith("head") and not n.endswith(("multihead", "multi_head"))


def _in_a_head(n: str) -> bool:
  return _ends_in_head(n) or any(t in OUTPUT_HEAD_PARTS for t in n.split("_"))


# The input projections of an attention module, as whole names.
ATTENTION_PROJECTION_NAMES = NARROWING_NAMES + (
    "query", "key", "value", "qkv", "q_proj", "k_proj", "v_proj", "c_attn", "in_proj")


def _is_attention_projection(names: list[str]) -> bool:
  """The leaf's own module is an attention input projection (``query``,
  ``key``, ``value``, ...) inside a module named an attention one: the head
  of a ``MultiHeadAttention`` written as ``Head`` modules, or an
  attention-pooling head; not a ``value`` output beside a ``policy`` one."""
  own = own_names(names)
  return (len(own) == 2 and re.sub(r"_\d+$", "", own[0]) in ATTENTION_PROJECTION_NAMES
          and any("attention" in n or "attn" in n for n in enclosing_names(names)))


def _in_an_embedding(n: str) -> bool:
  # Not "position" or "pos" alone: a position_wise_ffn is no table.
  return any("embed" in t or "embd" in t or t in ("wte", "wpe") for t in n.split("_"))


def is_output_head(names: list[str]) -> bool:
  """Named an output head, or inside a module that is one, unless the leaf is
  an attention module's input projection (``_is_attention_projection``: the
  ``key``/``query``/``value`` of an attention head written as a ``Head``
  module, as in nanoGPT's lecture code, or of an attention-pooling head)."""
  own = own_names(names)
  return any(
      (any(part in n for part in OUTPUT_HEAD_PARTS)
       and not n.startswith(("pre_", "prelogits")))  # ViT's hidden pre_logits
      or _ends_in_head(n)
      for n in own
  ) or (any(map(_in_a_head, enclosing_names(names))) and not _is_attention_projection(names))


def _names_a_table(n: str, kernel: bool) -> bool:
  """An own name of an embedding: one containing ``EMBEDDING_PARTS``; with
  ``position`` alone, not a dense kernel's (``position_wise_ffn/kernel``,
  ``positional_mlp/kernel``), but a table's (``positional_encoding``,
  ``PositionalEncoding_0/pe``)."""
  if any(part in n for part in EMBEDDING_PARTS if part != "position"):
    return True
  return "position" in n and not kernel


def is_embedding(names: list[str]) -> bool:
  own = own_names(names)
  kernel = is_in_out_kernel(names)
  return not is_output_head(names) and (
      any(_names_a_table(n, kernel) for n in own)
      or any(n in EMBEDDING_NAMES for n in own)
      or any(map(_in_an_embedding, enclosing_names(names))))


def is_position_table(names: list[str]) -> bool:
  own = any(n in EMBEDDING_NAMES or "position" in n or "wpe" in n for n in own_names(names))
  return own or any(t in ("pos", "position", "wpe") or t.startswith("posembed")
                    for n in enclosing_names(names) for t in n.split("_"))


def is_query_key(names: list[str]) -> bool:
  return any(n in QUERY_KEY_NAMES for n in names) or any(
      part in n for n in names for part in QUERY_KEY_PARTS
  )


def is_vector(names: list[str]) -> bool:
  """A bias or a norm scale: the leaf's own (last) name says so."""
  return bool(names) and any(v in names[-1] for v in VECTOR_NAMES)


def is_fused_qkv(names: list[str]) -> bool:
  return any(part in n for n in names for part in FUSED_QKV_PARTS)


def is_convolution(names: list[str]) -> bool:
  return any(part in n for n in names for part in CONVOLUTION_PARTS)


def is_attention_output(names: list[str]) -> bool:
  return any(n in ATTENTION_OUTPUT_NAMES for n in names)


def is_expert_stack(names: list[str]) -> bool:
  return any(part in n for n in names for part in EXPERT_PARTS)


def head_candidates_by_shape(
    leaves: list, embeddings: Optional[list] = None, settled: Optional[list] = None,
) -> list[list[int]]:
  """Per token embedding of shape (vocab, d), the indices of the 2-D (d, vocab)
  leaves of ``(names, shape)`` pairs beside it whose role names have not
  ``settled`` already (by default, those not named an output head), outside
  repeated blocks (``in_repeated_block``)."""
  if embeddings is None:
    embeddings = [is_embedding(names) for names, _ in leaves]
  if settled is None:
    settled = [is_output_head(names) for names, _ in leaves]
  tables = {tuple(shape) for (names, shape), table in zip(leaves, embeddings)
            if table and len(shape) == 2 and shape[0] != shape[1]
            and not is_position_table(names)}
  shared = _shared_prefix([names for names, _ in leaves])  # a wrapper around the model
  groups = {}
  for i, ((names, shape), table, known) in enumerate(zip(leaves, embeddings, settled)):
    if (len(shape) == 2 and not is_vector(names) and not table and not known
        and not in_repeated_block(names[shared:]) and (shape[1], shape[0]) in tables):
      groups.setdefault((shape[1], shape[0]), []).append(i)
  return list(groups.values())


def classifiers_by_shape(
    leaves: list, embeddings: list, settled: list, named_heads: list,
) -> list[int]:
  """The indices of the unnamed classifier heads of a tree of ``(names, shape)``
  pairs that holds no token embedding (``embeddings`` flags the embeddings)
  and no output head (``named_heads`` flags those found by axis names or path
  names); leaves whose role is ``settled`` are none.

  A classifier head there is a 2-D kernel laid out (inputs, outputs)
  (``IN_OUT_KERNEL_NAMES``: Flax's ``kernel``, Haiku's ``w``) outside repeated
  blocks (``in_repeated_block``) that narrows, d -> k with k < d, from a
  width another such kernel gives to a width k that no other leaf takes as
  its inputs and no other kernel gives (a GRU's fused gates), nor half of it
  (a split: a VAE's mean and log-variance) nor with another kernel's output
  beside it (a concatenation): the last layer of an MLP or a CNN
  (``Dense_1``, ``linear2``, ``output``, 64 -> 10). A guess: the caller
  reports and warns. Not an
  attention or routing projection by name (``NARROWING_PARTS``: grouped-query
  keys and values, a router narrow so too), and only where one kernel is so
  (several outputs are left to their names). A tree with a token
  embedding is left to ``head_candidates_by_shape`` (a tied head is no leaf,
  and a fused ``kv`` or a router may narrow to a width nothing takes).
  """
  if any(named_heads) or any(
      table and len(shape) == 2 and shape[0] != shape[1] and not is_position_table(names)
      and not is_in_out_kernel(names)
      for (names, shape), table in zip(leaves, embeddings)):
    return []
  shared = _shared_prefix([names for names, _ in leaves])
  inputs, outputs = {}, {}  # widths a matrix may take; widths a kernel gives
  for i, (names, shape) in enumerate(leaves):
    if len(shape) >= 2 and _product(shape) and not is_vector(names):
      for width in _widths_taken(names, shape):
        inputs.setdefault(width, set()).add(i)
      if is_in_out_kernel(names):
        outputs.setdefault(shape[-1], set()).add(i)

  others = lambda widths, w, i: bool(widths.get(w, set()) - {i})
  # Kernels that narrow, fed by another kernel, to a width no other leaf
  # takes and no other kernel gives (a GRU's fused gates: dense_i and dense_h).
  found = [
      i for i, ((names, shape), table, known) in enumerate(zip(leaves, embeddings, settled))
      if len(shape) == 2 and _product(shape) and is_in_out_kernel(names)
      and not table and not known
      and not _narrows_inside(names) and shape[1] < shape[0]
      and not in_repeated_block(names[shared:]) and others(outputs, shape[0], i)
      and not others(inputs, shape[1], i) and not others(outputs, shape[1], i)]
  if len(found) != 1:  # several outputs (an actor and a critic): left to their names
    return []
  (i,) = found
  k = leaves[i][1][1]
  split = k % 2 == 0 and others(inputs, k // 2, i)  # a VAE's mean | log-variance
  joined = any(others(inputs, w + k, i) for w, js in outputs.items() if js - {i})
  return [] if split or joined else found


def _widths_taken(names: list[str], shape: tuple) -> set:
  """The input widths a matrix-like leaf may take: a dense kernel's rows, a
  convolution's input channels (or its flattened patch), an attention
  projection's model width (a (d, heads, head_dim) query) or its heads·head_dim
  (a (heads, head_dim, d) output)."""
  if len(shape) == 2:
    return {shape[0]}
  widths = {shape[-2], _product(shape[:-1])}
  return widths | {shape[0]} if _narrows_inside(names) or is_attention_output(names) else widths


def _narrows_inside(names: list[str]) -> bool:
  """An attention or routing projection (``NARROWING_PARTS``), by its own names."""
  own = own_names(names)
  return any(n in NARROWING_NAMES or any(p in n for p in NARROWING_PARTS) for n in own)


def is_in_out_kernel(names: list[str]) -> bool:
  return bool(names) and names[-1] in IN_OUT_KERNEL_NAMES


def _product(shape: tuple) -> int:
  n = 1
  for s in shape:
    n *= s
  return n


def _shared_prefix(paths: list) -> int:
  """How many leading names every one of ``paths`` shares (a module that
  wraps the whole model, Linen's ``GPT_0``); at most all but each one's own two."""
  if len(paths) < 2:
    return 0
  shortest = min(len(p) for p in paths) - 2
  n = 0
  while n < shortest and all(p[n] == paths[0][n] for p in paths):
    n += 1
  return n


def in_repeated_block(names: list[str]) -> bool:
  """Whether a module enclosing the leaf's own is one of a list or a numbered
  family (``blocks[0]``, Linen's ``Block_0``): a layer repeated through the
  model, never its output head (an MLP as wide as the vocabulary, beside a
  tied embedding). The leaf's own module may be numbered (``Dense_2``); the
  caller drops the names every leaf shares (a wrapper, Linen's ``GPT_0``)."""
  return any(n.isdigit() or re.search(r"_\d+$", n) for n in names[:-2])


def heads_by_shape(
    leaves: list, embeddings: Optional[list] = None, settled: Optional[list] = None,
) -> list[bool]:
  """Which of ``(names, shape)`` pairs are output heads by their shape.

  A 2-D leaf of shape (d, vocab) is an output head when the same tree holds
  a token embedding of shape (vocab, d) with vocab != d (an embedding name,
  not a learned position table; or the leaves ``embeddings`` flags, e.g. by
  their axis names); a square table says nothing. This finds a vocabulary
  projection whatever it is called (Linen's ``Dense_2``); leaves whose role
  their names have ``settled`` are left out. Where several others have that
  shape (an MLP as wide as the vocabulary), one is the head:
  the nearest the tree's root, then the last in natural order (``Dense_10``
  after ``Dense_9``), as Linen names a model's last layer.
  """
  heads = {head_of(group, leaves)
           for group in head_candidates_by_shape(leaves, embeddings, settled)}
  return [i in heads for i in range(len(leaves))]


def head_of(group: list[int], leaves: list) -> int:
  """The head among a ``head_candidates_by_shape`` group (see ``heads_by_shape``)."""
  return max(group, key=lambda i: _head_rank(leaves[i][0]))


def _head_rank(names: list[str]) -> tuple:
  """Nearer the root first, then the natural order of the names."""
  natural = tuple(tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", n))
                  for n in names)
  return (-len(names), natural)
