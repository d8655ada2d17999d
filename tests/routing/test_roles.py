"""gradtx.routing.roles: which leaf is a hidden matrix, an output head, an
embedding, by axis names, then path names, then shapes."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradtx import transforms as gt
from tests.transforms.test_adamw_side import PARAMS


def test_is_hidden_matrix_keeps_embeddings_heads_and_vectors_off_the_matrices():
  routed = jax.tree_util.tree_map_with_path(gt.is_hidden_matrix, PARAMS)
  assert routed == {"tok_embed": {"embedding": False}, "block": {"kernel": True},
                    "lm_head": {"kernel": False}, "bias": False}


def test_matrix_roles_read_axis_names_then_path_names_then_shapes():
  boxed = lambda shape, names: nn.LogicallyPartitioned(jnp.zeros(shape), names)
  params = {
      **PARAMS,
      # Axis names outrank the path: a vocab-last "proj" is a head, a
      # vocab-first "proj_in" an embedding.
      "proj": boxed((4, 6), ("embed", "vocab")),
      "proj_in": boxed((6, 4), ("vocab", "embed")),
      # Neither names nor axis names: (4, 6) beside the (6, 4) table is a head.
      "Dense_2": {"kernel": jnp.zeros((4, 6))},
  }
  assert nn.unbox(gt.matrix_roles(params)) == {  # roles in the boxes of the leaves
      "tok_embed": {"embedding": "embedding"}, "block": {"kernel": "hidden"},
      "lm_head": {"kernel": "output_head"}, "bias": "other", "proj": "output_head",
      "proj_in": "embedding", "Dense_2": {"kernel": "output_head"}}
  # The same tree without its embedding: no head by shape.
  del params["tok_embed"], params["proj_in"]
  assert gt.matrix_roles(params)["Dense_2"] == {"kernel": "hidden"}
