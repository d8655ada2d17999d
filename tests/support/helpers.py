"""Small fixtures, step loops and tree predicates shared by the test modules."""

import pathlib
import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gradtx import optimizers as go
from gradtx import transforms as gt

_RNG = np.random.default_rng(0)
# A matrix and a vector, and six gradients for them (float32).
PARAMS = {
    "w": jnp.asarray(_RNG.normal(size=(3, 2)), jnp.float32),
    "b": jnp.asarray(_RNG.normal(size=(2,)), jnp.float32),
}
GRADS = [
    jax.tree.map(lambda p: jnp.asarray(_RNG.normal(size=p.shape), p.dtype), PARAMS)
    for _ in range(6)
]


def run_steps(tx, params, grads_seq, state=None):
  """Eager reference loop; returns (params, state, list of updates)."""
  state = tx.init(params) if state is None else state
  updates_seq = []
  for grads in grads_seq:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    updates_seq.append(updates)
  return params, state, updates_seq


def jit_updates(tx, grads_seq, params=None):
  """Feeds gradients through one jitted ``tx.update`` (params fixed, by
  default zeros like the first gradient); returns (updates list, last state)."""
  params = jax.tree.map(jnp.zeros_like, grads_seq[0]) if params is None else params
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates = []
  for grads in grads_seq:
    u, state = step(grads, state, params)
    updates.append(u)
  return updates, state


def floating_leaves(tree) -> list:
  return [
      x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  ]


def all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in floating_leaves(tree))


def bit_identical(a, b) -> bool:
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
      np.asarray(x).dtype == np.asarray(y).dtype
      and np.asarray(x).tobytes() == np.asarray(y).tobytes()
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def make_mesh(axis_type=jax.sharding.AxisType.Explicit, shape=(4, 2), names=("x", "y")):
  """A mesh over the 8 host devices tests/conftest.py asks for."""
  assert len(jax.devices()) >= 8, "tests/conftest.py asks for 8 host devices"
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))


def nnx_train(model, tx, loss_fn: Callable, steps: int, *, jit: bool = True):
  """``steps`` steps of ``nnx.Optimizer(model, tx)`` on ``loss_fn(model)``.

  Returns (losses, number of traces of the step, the optimizer).
  """
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  traces = []

  def train_step(model, optimizer):
    traces.append(1)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  train_step = nnx.jit(train_step) if jit else train_step
  losses = [float(train_step(model, optimizer)) for _ in range(steps)]
  return losses, len(traces), optimizer


def gpt_tree(layers=2, width=128, vocab=1024, context=256) -> dict:
  """Abstract float32 parameters of a small GPT (flat names)."""
  shapes = {"tok_embed": (vocab, width), "pos_embed": (context, width)}
  for i in range(layers):
    shapes.update({
        f"block{i}/ln1_scale": (width,), f"block{i}/ln1_bias": (width,),
        f"block{i}/qkv_kernel": (width, 3 * width), f"block{i}/qkv_bias": (3 * width,),
        f"block{i}/proj_kernel": (width, width), f"block{i}/proj_bias": (width,),
        f"block{i}/fc1_kernel": (width, 4 * width), f"block{i}/fc1_bias": (4 * width,),
        f"block{i}/fc2_kernel": (4 * width, width), f"block{i}/fc2_bias": (width,),
    })
  return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def state_bytes(tx, params) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))


def state_ratio(tx, params=None, anchor: Optional[optax.GradientTransformation] = None) -> float:
  """Bytes of ``tx``'s state over AdamW's (the anchor), on ``gpt_tree()``."""
  params = gpt_tree() if params is None else params
  anchor = go.adamw(1e-3) if anchor is None else anchor
  return state_bytes(tx, params) / state_bytes(anchor, params)


class EmbedClassifier(nnx.Module):
  """Embed → Linear → LayerNorm → Linear head: matrices, a table, vectors."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 8, rngs=rngs)
    self.hidden = nnx.Linear(8, 16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, 11, rngs=rngs)

  @staticmethod
  def loss(x):
    """Cross-entropy of predicting (x + 1) % 11 from the tokens x."""
    def loss_fn(m):
      logits = m.head(m.norm(jax.nn.gelu(m.hidden(m.embed(x)))))
      return optax.softmax_cross_entropy_with_integer_labels(logits, (x + 1) % 11).mean()
    return loss_fn


# The matrix transforms, for the checks that their per-matrix program is
# traced once per distinct shape (tests/transforms/test_contract.py, on one
# device; tests/test_distributed.py, on a mesh).
MATRIX_TRANSFORMS = {
    "orthogonalize_newton_schulz": gt.orthogonalize_newton_schulz,
    "clip_singular_values": gt.clip_singular_values,
    "kronecker_precondition": lambda: gt.kronecker_precondition(precondition_every=1),
    "scale_by_soap": gt.scale_by_soap,
    "scale_by_psgd_kron": gt.scale_by_psgd_kron,
}


def two_shape_tree(per_shape: int) -> dict:
  """``per_shape`` matrices of each of two shapes, zeros."""
  return {**{f"a{i}": jnp.zeros((16, 24)) for i in range(per_shape)},
          **{f"b{i}": jnp.zeros((32, 16)) for i in range(per_shape)}}


def matrix_products(tx, tree, state=None) -> int:
  """How many matrix products ``tx``'s lowered update holds for ``tree``."""
  state = tx.init(tree) if state is None else state
  return jax.jit(tx.update).lower(tree, state, tree).as_text().count("stablehlo.dot_general")


def readme_python_blocks() -> list:
  """README.md's top-level ```python blocks (indented ones are fragments
  inside a list), in order."""
  text = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
  return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
