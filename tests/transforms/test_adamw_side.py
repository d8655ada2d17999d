"""gt.AdamWSide: the AdamW of a matrix optimizer's other leaves, routed by
``gradtx.routing.roles``."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import transforms as gt

PARAMS = {"tok_embed": {"embedding": jnp.linspace(-1.0, 1.0, 24).reshape(6, 4)},
          "block": {"kernel": jnp.linspace(0.5, -0.5, 32).reshape(4, 8)},
          "lm_head": {"kernel": jnp.linspace(-0.3, 0.7, 24).reshape(4, 6)},
          "bias": jnp.linspace(0.0, 1.0, 8)}


def _steps(tx, params, n=5):
  """n float64 steps of cos((t + 1) p) gradients."""
  with jax.enable_x64(True):
    out = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    state = tx.init(out)
    for t in range(n):
      grads = jax.tree.map(lambda p, t=t: jnp.cos((t + 1) * p), out)
      updates, state = tx.update(grads, state, out)
      out = optax.apply_updates(out, updates)
    return jax.tree.map(np.asarray, out)


def test_around_is_inner_on_hidden_matrices_and_optax_adamw_elsewhere():
  side = gt.AdamWSide(adam_b1=0.8, adam_b2=0.99, adam_eps=1e-7, adam_weight_decay=0.05,
                      embedding_learning_rate=0.3)
  tx = side.around("matrix", optax.sgd(0.02), None, learning_rate=3e-3, weight_decay=0.0)
  ours = _steps(tx, PARAMS)
  adamw = lambda rate: optax.adamw(rate, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.05)
  others = ("lm_head", "bias")
  expected = {
      **_steps(optax.sgd(0.02), {"block": PARAMS["block"]}),
      **_steps(adamw(3e-3), {k: PARAMS[k] for k in others}),
      **_steps(adamw(0.3), {"tok_embed": PARAMS["tok_embed"]}),
  }
  for key in PARAMS:
    np.testing.assert_allclose(jax.tree.leaves(ours[key]), jax.tree.leaves(expected[key]),
                               rtol=1e-12)


def test_adamw_defaults_to_the_matrix_rules_rate_and_decay():
  side = gt.AdamWSide()
  ours = _steps(side.adamw(1e-2, weight_decay=0.1), PARAMS)
  theirs = _steps(optax.adamw(1e-2, weight_decay=0.1), PARAMS)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name, value, message", [
    ("adam_b1", 1.5, "adam_b1 must be in [0, 1), got 1.5"),
    ("adam_b2", -0.1, "adam_b2 must be in [0, 1), got -0.1"),
    ("adam_eps", -1.0, "adam_eps must be in [0, inf), got -1.0"),
    ("adam_learning_rate", "0.1", "adam_learning_rate"),
    ("embedding_learning_rate", -1.0, "embedding_learning_rate"),
])
def test_bad_values_are_refused_by_their_factory_names(name, value, message):
  with pytest.raises(ValueError) as error:
    gt.AdamWSide(**{name: value})
  assert message in str(error.value)


def test_document_fills_the_side_arguments_a_factory_does_not_document():
  @gt.AdamWSide.document
  def factory(learning_rate, *, adam_b1=0.9, adam_b2=0.95, adam_eps=1e-8):
    """A factory.

    Args:
      learning_rate: η.
      adam_b2: its own words.
      adam_*: the AdamW side (``gt.AdamWSide``).

    Returns:
      A transformation.
    """

  doc = inspect.getdoc(factory)
  block = doc.split("Args:")[1].split("Returns:")[0]
  assert [line.split(":")[0].strip() for line in block.splitlines() if line.startswith("  a")] \
      == ["adam_b2", "adam_b1", "adam_eps"]
  assert "adam_b2: its own words." in block and "adam_*" not in block
  assert "embedding_learning_rate" not in block


def test_around_sends_output_heads_to_heads_when_given():
  heads = optax.sgd(1.0)
  tx = gt.AdamWSide(adam_learning_rate=0.1).around(
      "matrix", optax.sgd(0.5), None, learning_rate=0.5, weight_decay=0.0, heads=heads)
  out = _steps(tx, PARAMS, n=1)
  head = np.asarray(PARAMS["lm_head"]["kernel"], np.float64)
  np.testing.assert_allclose(out["lm_head"]["kernel"], head - np.cos(head),
                             rtol=1e-12)
