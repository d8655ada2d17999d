"""gradtx.routing.roles: which leaf is a hidden matrix, an output head, an
embedding, by axis names, then path names, then shapes."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
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


def _linen_mlp_as_wide_as_the_vocabulary():
  """Linen's automatic names, vocab 64, d 16, an MLP 4d = 64 wide: the
  up-projection Dense_1 has the head Dense_2's shape."""
  zeros = lambda *shape: jnp.zeros(shape)
  return {"Embed_0": {"embedding": zeros(64, 16)}, "Dense_0": {"kernel": zeros(64, 16)},
          "Dense_1": {"kernel": zeros(16, 64)}, "Dense_2": {"kernel": zeros(16, 64)}}


def test_of_several_kernels_shaped_like_the_head_only_the_last_is_the_head():
  params = _linen_mlp_as_wide_as_the_vocabulary()
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match=r"only \['Dense_2'\]\['kernel'\]"):
    roles = gt.matrix_roles(params)
  assert roles["Dense_1"] == {"kernel": "hidden"} and roles["Dense_2"] == {"kernel": "output_head"}
  description = gt.describe(go.muon(0.02), params)
  assert {r.path: r.branch for r in description}["['Dense_1']['kernel']"] == "muon"
  assert set(description.ambiguous) == {"['Dense_1']['kernel']", "['Dense_2']['kernel']"}


def test_the_head_among_several_is_the_nearest_the_root_then_the_last_by_name():
  zeros = lambda *shape: jnp.zeros(shape)
  params = {"Embed_0": {"embedding": zeros(64, 16)}, "Dense_9": {"kernel": zeros(16, 64)},
            "Dense_10": {"kernel": zeros(16, 64)},
            "Block_0": {"Dense_11": {"kernel": zeros(16, 64)}}}
  with pytest.warns(gt.AmbiguousMatrixViewWarning):
    roles = gt.matrix_roles(params)
  assert [k for k, v in roles.items() if v == {"kernel": "output_head"}] == ["Dense_10"]
  # A head named as one takes no part: the shapes leave nothing to choose.
  named = {**params, "lm_head": {"kernel": zeros(16, 64)}}
  del named["Dense_9"], named["Block_0"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    roles = gt.matrix_roles(named)
  assert roles["lm_head"] == {"kernel": "output_head"} == roles["Dense_10"]


def test_a_branch_without_the_embedding_warns_that_it_cannot_find_the_head():
  """optax.multi_transform hands go.muon its own leaves: beside the masked-out
  embedding, the head Dense_2 has no shape to be found by, and it says so."""
  params = {"Embed_0": {"embedding": jnp.zeros((50, 16))},
            "Dense_0": {"kernel": jnp.zeros((16, 16))}, "Dense_2": {"kernel": jnp.zeros((16, 50))}}
  labels = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: "emb" if path[0].key == "Embed_0" else "rest", p)
  split = optax.multi_transform({"emb": optax.adam(1e-3), "rest": go.muon(0.02)}, labels)
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match=r"\['Embed_0'\]\['embedding'\] is masked"):
    split.init(params)
  # Named, the head is found, and nothing warns.
  params["lm_head"] = params.pop("Dense_2")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    optax.multi_transform({"emb": optax.adam(1e-3), "rest": go.muon(0.02)}, labels).init(params)


def test_only_a_leafs_own_name_and_its_modules_make_it_an_embedding_or_a_head():
  """An enclosing module's name says nothing of a leaf's role: attention in a
  module named "multihead" and a Linen PositionwiseFeedForward_0 are hidden
  matrices (they went to AdamW, silently); "lm_head" and a position table
  still route by name, in a list of layers too."""
  m = lambda *shape: jnp.zeros(shape)
  params = {
      "embed": {"embedding": m(50, 16)},
      "multihead": {"query": {"kernel": m(16, 4, 4)}, "out": {"kernel": m(4, 4, 16)}},
      "PositionwiseFeedForward_0": {"Dense_0": {"kernel": m(16, 64)}},
      "positionwise_ffn": {"layers": [{"kernel": m(64, 16)}]},
      "position_wise_ffn": {"w_1": {"kernel": m(16, 64)}},
      "pos_table": {"position_embedding": m(8, 16)},
      "decoder": {"lm_head": {"kernel": m(16, 50)}},
  }
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    roles = gt.matrix_roles(params)
  assert roles["multihead"]["query"]["kernel"] == "hidden"
  assert roles["multihead"]["out"]["kernel"] == "hidden"
  assert roles["PositionwiseFeedForward_0"]["Dense_0"]["kernel"] == "hidden"
  assert roles["positionwise_ffn"]["layers"][0]["kernel"] == "hidden"
  assert roles["position_wise_ffn"]["w_1"]["kernel"] == "hidden"
  assert roles["pos_table"]["position_embedding"] == "embedding"
  assert roles["embed"]["embedding"] == "embedding"
  assert roles["decoder"]["lm_head"]["kernel"] == "output_head"


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_repeated_blocks_kernel_shaped_like_a_head_is_not_the_head(blocks):
  """With the embedding tied (no head leaf) and an MLP as wide as the
  vocabulary, the blocks' (d, vocab) up-projections are hidden matrices, not
  a head found by shape; a Linen-numbered top-level Dense still is one."""
  m = lambda *shape: jnp.zeros(shape)
  tied = {"embed": {"embedding": m(256, 64)},
          "blocks": [{"up": {"kernel": m(64, 256)}, "down": {"kernel": m(256, 64)}}
                     for _ in range(blocks)]}
  linen = {"Embed_0": {"embedding": m(256, 64)},
           **{f"Block_{i}": {"Dense_0": {"kernel": m(64, 256)}} for i in range(blocks)},
           "Dense_0": {"kernel": m(64, 256)}}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    roles, linen_roles = gt.matrix_roles(tied), gt.matrix_roles(linen)
  assert all(block["up"]["kernel"] == "hidden" for block in roles["blocks"])
  assert all(linen_roles[f"Block_{i}"]["Dense_0"]["kernel"] == "hidden" for i in range(blocks))
  assert linen_roles["Dense_0"]["kernel"] == "output_head"


def test_a_head_or_embedding_module_still_routes_the_layers_inside_it():
  """Enclosing modules count as whole words: the layers of a head module
  (timm's head.fc, HF's classifier / classification_head, a Linen Head_0 of
  two Dense, an nnx.Sequential head) and of HF ViT's embeddings stay on
  AdamW; a wrapper every leaf shares (Linen's GPT_0) hides no head found by
  shape."""
  m = lambda *shape: jnp.zeros(shape)
  params = {
      "embed": {"embedding": m(50, 16)},
      "vit": {"embeddings": {"patch_embeddings": {"projection": {"kernel": m(4, 4, 3, 16)}}}},
      "blocks": [{"multi_head": {"query": {"kernel": m(16, 4, 4)}}}],
      "head": {"fc": {"kernel": m(16, 16)}, "layers": [{"kernel": m(16, 16)}]},
      "classifier": {"out_proj": {"kernel": m(16, 7)}},
      "classification_head": {"dense": {"kernel": m(16, 16)}},
      "Head_0": {"Dense_1": {"kernel": m(16, 8)}},
  }
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    roles = gt.matrix_roles(params)
  assert roles["vit"]["embeddings"]["patch_embeddings"]["projection"]["kernel"] == "embedding"
  assert roles["blocks"][0]["multi_head"]["query"]["kernel"] == "hidden"
  for head in (roles["head"]["fc"]["kernel"], roles["head"]["layers"][0]["kernel"],
               roles["classifier"]["out_proj"]["kernel"],
               roles["classification_head"]["dense"]["kernel"],
               roles["Head_0"]["Dense_1"]["kernel"]):
    assert head == "output_head"
  wrapped = {"GPT_0": {"Embed_0": {"embedding": m(50, 16)},
                       "Block_0": {"Dense_0": {"kernel": m(16, 16)}},
                       "Dense_0": {"kernel": m(16, 50)}}}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert gt.matrix_roles(wrapped)["GPT_0"]["Dense_0"]["kernel"] == "output_head"


class _CNN(nnx.Module):
  """The Flax MNIST tutorial's shape at 8x8: two convolutions, two dense layers."""

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
    self.linear1 = nnx.Linear(128, 64, rngs=rngs)
    self.linear2 = nnx.Linear(64, 10, rngs=rngs)


def _linen_mlp(widths):
  zeros = lambda *shape: jnp.zeros(shape)
  return {f"Dense_{i}": {"kernel": zeros(a, b), "bias": zeros(b)}
          for i, (a, b) in enumerate(zip(widths, widths[1:]))}


def test_an_unnamed_classifier_head_goes_to_adamw():
  """A CNN's or an MLP's last layer (64 -> 10, 64 -> 2), named like any layer,
  went to Muon with the hidden ones: it narrows from a width another layer
  gives to one no layer takes, in a tree with no token embedding."""
  cnn = nnx.state(_CNN(nnx.Rngs(0)), nnx.Param)
  with pytest.warns(gt.AmbiguousMatrixViewWarning, match=r"\['linear2'\]\['kernel'\].*from the"):
    description = gt.describe(go.muon(0.02), cnn)
  routing = {r.path: r.branch for r in description}
  assert routing["['linear2']['kernel']"] == "adam"
  assert list(description.ambiguous) == ["['linear2']['kernel']"]  # a guess, listed
  with pytest.raises(ValueError, match="classifier head from the shapes"):
    gt.describe(go.muon(0.02), cnn, strict=True)
  assert [routing[f"['{k}']['kernel']"] for k in ("conv1", "conv2", "linear1")] == ["muon"] * 3
  roles = gt.matrix_roles(_linen_mlp([30, 64, 64, 2]))
  assert [roles[f"Dense_{i}"]["kernel"] for i in range(3)] == ["hidden", "hidden", "output_head"]


@pytest.mark.parametrize("params, heads", [
    ({"Dense_0": {"kernel": jnp.zeros((12, 5))}}, []),  # a lone matrix: no layer feeds it
    (_linen_mlp([64, 128, 64]), []),  # it narrows to a width the first layer takes
    (_linen_mlp([32, 64, 128]), []),  # it widens
    (_linen_mlp([2, 64, 10]), ["Dense_1"]),
], ids=["lone", "back-to-the-input-width", "widening", "mlp"])
def test_a_kernel_is_a_classifier_head_only_where_it_ends_the_model(params, heads):
  roles = gt.matrix_roles(params)
  assert [k for k in roles if roles[k]["kernel"] == "output_head"] == heads


def test_no_classifier_head_is_guessed_beside_a_token_embedding_or_a_named_head():
  """A tied LM (no head leaf) keeps a narrowing fused kv projection on Muon; a
  tree with a named head guesses no other."""
  zeros = lambda *shape: jnp.zeros(shape)
  tied = {"Embed_0": {"embedding": zeros(50, 64)}, "q": {"kernel": zeros(64, 64)},
          "kv": {"kernel": zeros(64, 32)}, "Dense_0": {"kernel": zeros(64, 64)}}
  assert gt.matrix_roles(tied)["kv"] == {"kernel": "hidden"}
  named = {**_linen_mlp([30, 64, 64, 2]), "lm_head": {"kernel": zeros(64, 8)}}
  assert gt.matrix_roles(named)["Dense_2"]["kernel"] == "hidden"


def test_grouped_query_keys_and_a_router_are_no_classifier_heads():
  """A set transformer with no token embedding: GQA keys and values (64 -> 16)
  and a router (64 -> 4) narrow to widths nothing takes, like the regression
  head (64 -> 1); only the head is one. With two unnamed heads, neither."""
  zeros = lambda *shape: jnp.zeros(shape)
  params = {"input_proj": {"kernel": zeros(12, 64)},
            "attn": {"q_proj": {"kernel": zeros(64, 64)}, "k_proj": {"kernel": zeros(64, 16)},
                     "v_proj": {"kernel": zeros(64, 16)}, "o_proj": {"kernel": zeros(64, 64)}},
            "moe": {"router": {"kernel": zeros(64, 4)}},
            "mlp": {"fc1": {"kernel": zeros(64, 256)}, "fc2": {"kernel": zeros(256, 64)}},
            "out": {"kernel": zeros(64, 1)}}
  roles = gt.matrix_roles(params)
  assert {k: v["kernel"] for k, v in roles["attn"].items()} == dict.fromkeys(
      ("q_proj", "k_proj", "v_proj", "o_proj"), "hidden")
  assert roles["moe"]["router"]["kernel"] == "hidden" and roles["out"]["kernel"] == "output_head"
  params["aux"] = {"kernel": zeros(64, 3)}  # two unnamed outputs: neither is guessed
  roles = gt.matrix_roles(params)
  assert roles["out"]["kernel"] == roles["aux"]["kernel"] == "hidden"


def test_fused_gates_and_two_heads_make_no_classifier_guess():
  """From the second review: an NNX GRU cell's input kernel (in -> 3h, the
  gates' width, which its hidden kernel gives too) was taken for the head;
  of an actor's and a critic's heads only one was (the other vetoed by its
  own width counted as a concatenation). Neither is guessed now."""
  zeros = lambda *shape: jnp.zeros(shape)
  gru = {"proj": {"kernel": zeros(40, 256)},
         "rnn": {"cell": {"dense_i": {"kernel": zeros(256, 192)},
                          "dense_h": {"kernel": zeros(64, 192)}}},
         "out": {"kernel": zeros(64, 10)}}
  assert gt.matrix_roles(gru)["rnn"]["cell"]["dense_i"]["kernel"] == "hidden"
  agent = {"Dense_0": {"kernel": zeros(8, 64)}, "Dense_1": {"kernel": zeros(64, 64)},
           "Dense_2": {"kernel": zeros(64, 4)}, "Dense_3": {"kernel": zeros(64, 1)}}
  assert set(jax.tree.leaves(gt.matrix_roles(agent))) == {"hidden"}


def test_a_linen_head_module_that_owns_its_kernel_is_a_head():
  """``Head_0/kernel`` (a Linen ``class Head(nn.Dense)``) went to Muon: only an
  enclosing module's ``_N`` suffix was dropped."""
  zeros = lambda *shape: jnp.zeros(shape)
  params = {"Dense_0": {"kernel": zeros(16, 32)}, "Head_0": {"kernel": zeros(32, 32)},
            "LMHead_0": {"kernel": zeros(32, 32)}, "MultiHead_0": {"kernel": zeros(32, 32)}}
  roles = gt.matrix_roles(params)
  assert roles["Head_0"] == roles["LMHead_0"] == {"kernel": "output_head"}
  assert roles["MultiHead_0"] == {"kernel": "hidden"}


def test_hidden_layers_whose_own_names_hold_a_table_or_head_word_stay_hidden():
  """An NNX attribute ``position_wise_ffn`` or ``positional_mlp`` went to AdamW
  as a position table, ViT's hidden ``pre_logits`` as a head (substrings of
  their own names); ViT's (1, 1, D) class token went to Muon as a 1 x D
  matrix; a ViT patch-embedding convolution warned that its view was a guess
  though the routing never uses it."""
  zeros = lambda *shape: jnp.zeros(shape)
  params = {"block": {"position_wise_ffn": {"kernel": zeros(32, 128)},
                      "positional_mlp": {"kernel": zeros(128, 32)}},
            "pre_logits": {"kernel": zeros(32, 32)}, "cls": zeros(1, 1, 32),
            "embedding": {"kernel": zeros(4, 4, 3, 32)}, "pos_embedding": zeros(1, 17, 32),
            "head": {"kernel": zeros(32, 10)}}
  with warnings.catch_warnings():
    warnings.simplefilter("error", gt.AmbiguousMatrixViewWarning)
    routing = {r.path: r.branch for r in gt.describe(go.muon(0.02), params)}
  assert routing == {
      "['block']['position_wise_ffn']['kernel']": "muon",
      "['block']['positional_mlp']['kernel']": "muon", "['pre_logits']['kernel']": "muon",
      "['cls']": "adam", "['embedding']['kernel']": "adam", "['pos_embedding']": "adam",
      "['head']['kernel']": "adam"}


def test_the_classifier_rule_leaves_branches_splits_and_concatenations_hidden():
  """From the review of the rule: a multi_transform branch without its head
  took the last hidden layer for one; so did a VAE encoder's mean|log-variance
  layer (its output split in two) and a denoiser's time MLP (its output
  concatenated with another layer's); a 1x1 convolution's height counted as
  a width taken, hiding a ResNet's binary head."""
  zeros = lambda *shape: jnp.zeros(shape)
  mlp = {"fc1": {"kernel": zeros(784, 512)}, "fc2": {"kernel": zeros(512, 128)},
         "head": {"kernel": zeros(128, 10)}}
  labels = {"fc1": {"kernel": "muon"}, "fc2": {"kernel": "muon"}, "head": {"kernel": "adam"}}
  tx = optax.multi_transform({"muon": go.muon(0.02), "adam": optax.adam(1e-3)}, labels)
  routing = {r.path: r.branch for r in gt.describe(tx, mlp)}
  assert routing["['fc2']['kernel']"] == "muon/muon"
  vae = {"encoder": {"fc1": {"kernel": zeros(784, 512)}, "fc2": {"kernel": zeros(512, 32)}},
         "decoder": {"fc1": {"kernel": zeros(16, 512)}, "fc2": {"kernel": zeros(512, 784)}}}
  assert set(jax.tree.leaves(gt.matrix_roles(vae))) == {"hidden"}
  denoiser = {"x_proj": {"kernel": zeros(2, 64)}, "time_mlp_0": {"kernel": zeros(1, 128)},
              "time_mlp_1": {"kernel": zeros(128, 64)}, "hidden_0": {"kernel": zeros(128, 128)},
              "out": {"kernel": zeros(128, 2)}}
  assert set(jax.tree.leaves(gt.matrix_roles(denoiser))) == {"hidden"}
  resnet = {"conv_init": {"kernel": zeros(3, 3, 3, 64)}, "proj": {"kernel": zeros(1, 1, 64, 256)},
            "Dense_0": {"kernel": zeros(256, 1)}}
  assert gt.matrix_roles(resnet)["Dense_0"]["kernel"] == "output_head"


def test_position_tables_and_prediction_logits_keep_their_roles():
  """The own-name rules of this stop first sent ``positional_encoding`` and
  Linen's ``PositionalEncoding_0/pe`` tables to Muon and made
  ``prediction_logits`` hidden; only kernels (``position_wise_ffn/kernel``) and
  ``pre_logits`` are exempt."""
  zeros = lambda *shape: jnp.zeros(shape)
  params = {"positional_encoding": zeros(64, 32), "PositionalEncoding_0": {"pe": zeros(64, 32)},
            "position_wise_ffn": {"kernel": zeros(32, 128)},
            "Dense_0": {"kernel": zeros(128, 32)},
            "prediction_logits": {"kernel": zeros(32, 10)}, "pre_logits": {"kernel": zeros(32, 32)}}
  roles = gt.matrix_roles(params)
  assert roles["positional_encoding"] == roles["PositionalEncoding_0"]["pe"] == "embedding"
  assert roles["prediction_logits"]["kernel"] == "output_head"
  assert roles["position_wise_ffn"]["kernel"] == roles["pre_logits"]["kernel"] == "hidden"


class _LoRAClassifier(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.LoRALinear(16, 32, lora_rank=4, rngs=rngs)
    self.l2 = nnx.LoRALinear(32, 10, lora_rank=4, rngs=rngs)


class _LoRALM(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(40, 16, rngs=rngs)
    self.l1 = nnx.LoRALinear(16, 16, lora_rank=4, rngs=rngs)
    self.out = nnx.LoRALinear(16, 40, lora_rank=4, rngs=rngs)


@pytest.mark.parametrize("model, head", [(_LoRAClassifier, "l2"), (_LoRALM, "out")])
def test_a_lora_adapter_follows_the_head_found_by_shape(model, head):
  """nnx.LoRALinear on a head known by its shape (a classifier, a (d, vocab)
  kernel beside the embedding): its kernel went to AdamW, its lora_a and
  lora_b to Muon (a head known by name sent all three to AdamW)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    branches = {r.path: r.branch for r in gt.describe(
        go.muon(0.02), nnx.state(model(nnx.Rngs(0)), nnx.Param))}
  assert {branches[f"['{head}']{k}"] for k in ("['kernel']", "['lora']['lora_a']",
                                                "['lora']['lora_b']")} == {"adam"}
  assert branches["['l1']['lora']['lora_a']"] == "muon"


@pytest.mark.parametrize("factory", [go.muon, go.normuon, go.adamuon, go.dion, go.vmuon,
                                     go.muonh, go.soap_muon])
def test_a_single_array_is_routed_as_a_dicts_one_matrix(factory):
  """A bare array has an empty path: the LoRA-factor test read its last name
  and every Muon-family optimizer failed at init (IndexError)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (24, 16))
  assert gt.matrix_roles(x) == "hidden"
  tx = factory(1e-2)
  bare, _ = tx.update(0.1 * x, tx.init(x), x)
  named, _ = tx.update({"w": 0.1 * x}, tx.init({"w": x}), {"w": x})
  if factory is go.dion:  # its random start is keyed by the leaf's path
    assert jnp.all(jnp.isfinite(bare)) and jnp.any(bare != 0)
  else:
    assert jnp.allclose(bare, named["w"], rtol=1e-6, atol=1e-7)
