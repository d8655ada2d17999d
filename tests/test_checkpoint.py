"""Every optimizer state checkpoints with orbax and resumes bit-identically.

The recipe (README, "Checkpointing"): ``ocp.CheckpointManager.save(step,
args=ocp.args.StandardSave({"params": params, "opt": state}))``, and restore
into an abstract target, ``ocp.utils.to_shape_dtype_struct`` of every leaf
(with the arrays' shardings, so a sharded state comes back sharded), through
``ocp.args.StandardRestore``. ``flax.nnx.Optimizer`` state goes through
``nnx.state`` / ``nnx.update``.
"""

import contextlib
import functools
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.support import helpers
from tests.support.cases import CASES, STRUCTURED

OPTIMIZERS = {
    "sgd": lambda: go.sgd(0.05, momentum=0.9),
    "adagrad": lambda: go.adagrad(0.05),
    "rmsprop": lambda: go.rmsprop(0.01, momentum=0.5, centered=True),
    "adam": lambda: go.adam(0.01, amsgrad=True),
    "adamw": lambda: go.adamw(0.01),
    "adamw_8bit": lambda: go.adamw_8bit(0.01),
    "adamw_stochastic_bf16": lambda: go.adamw(0.01, mu_dtype=gt.StochasticBfloat16()),
    "adabelief": lambda: go.adabelief(0.01),
    "signsgd": lambda: go.signsgd(0.01, momentum=0.9),
    "lion": lambda: go.lion(0.01),
    "tiger": lambda: go.tiger(0.01),
    "lars": lambda: go.lars(0.5, trust_coefficient=0.01),
    "lamb": lambda: go.lamb(0.01),
    "muon": lambda: go.muon(0.02, adam_learning_rate=0.01),
    "shampoo": lambda: go.shampoo(0.01, precondition_every=2, block_size=16),
    "soap": lambda: go.soap(0.01, precondition_every=2),
    "adafactor": lambda: go.adafactor(0.01, min_dim_size_to_factor=8, b1=0.9),
    "psgd_kron": lambda: go.psgd_kron(0.01, precond_update_probability=0.5),
    "adam_mini": lambda: go.adam_mini(0.01, num_heads=4),
    "lookahead": lambda: go.lookahead(go.adamw(0.01), sync_period=3),
    "ademamix_int8": lambda: go.ademamix(0.01, mu_dtype="int8", nu_dtype="int8"),
    "parameter_ema": lambda: go.parameter_ema(go.adamw(0.01), decay=0.9, start_step=1),
    "inject_hyperparams": lambda: optax.inject_hyperparams(go.adamw)(learning_rate=0.01),
    # int8 moments inside optax.masked (Muon's AdamW side): under NNX a
    # masked-out leaf is a variable holding a MaskedNode.
    "muon_int8": lambda: go.muon(0.02, adam_learning_rate=0.01, mu_dtype="int8",
                                 nu_dtype="int8"),
}
# A vector, matrices, a conv kernel and an 8-bit leaf above 4096 elements.
# (No zero-size leaf: orbax refuses to save one, in the params as anywhere;
# gradtx states hold no zero-size placeholders of their own.)
SHAPES = {"bias": (32,), "w": (32, 48), "conv": (3, 3, 4, 8), "big": (64, 80)}


def _problem():
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(0.3 * rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
  grad = lambda p: jax.tree.map(lambda x: jnp.cos(3 * x) + 0.1 * x, p)
  return params, grad


@functools.lru_cache(maxsize=4)
def _stepper(tx, grad):
  """One jitted step of ``tx`` on ``grad``'s gradients, shared by a test's
  runs (traced again only for other shapes or layouts)."""
  @jax.jit
  def step(params, state):
    updates, state = tx.update(grad(params), state, params)
    return optax.apply_updates(params, updates), state

  return step


def _steps(tx, params, state, grad, n):
  for _ in range(n):
    params, state = _stepper(tx, grad)(params, state)
  return params, state


def _bit_identical(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.asarray(x).dtype == np.asarray(y).dtype
      and np.asarray(x).tobytes() == np.asarray(y).tobytes()
      for x, y in zip(leaves_a, leaves_b))


def _save_and_restore(path, tree):
  manager = ocp.CheckpointManager(path)
  manager.save(3, args=ocp.args.StandardSave(tree))
  manager.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  restored = manager.restore(3, args=ocp.args.StandardRestore(abstract))
  manager.close()
  return restored


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_save_restore_resumes_bit_identically(name, tmp_path):
  tx = OPTIMIZERS[name]()
  params, grad = _problem()
  params, state = _steps(tx, params, tx.init(params), grad, 3)
  restored = _save_and_restore(tmp_path / "ckpt", {"params": params, "opt": state})
  assert _bit_identical(restored, {"params": params, "opt": state})
  assert jax.tree.structure(restored["opt"]) == jax.tree.structure(state)
  expected = _steps(tx, params, state, grad, 2)
  resumed = _steps(tx, restored["params"], restored["opt"], grad, 2)
  assert _bit_identical(resumed, expected)


@pytest.mark.parametrize("name", ["adamw", "muon", "shampoo", "soap", "adamw_8bit", "adafactor"])
def test_sharded_state_restores_with_its_shardings(name, tmp_path):
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
  specs = {"bias": P("x"), "w": P("x", "y"), "conv": P(None, None, "x", "y"),
           "big": P("x", None)}
  tx = OPTIMIZERS[name]()
  params, grad = _problem()
  with jax.set_mesh(mesh):
    params = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in specs.items()})
    state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params))(params)
    params, state = _steps(tx, params, state, grad, 3)
    tree = {"params": params, "opt": state}
    restored = _save_and_restore(tmp_path / "ckpt", tree)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
      assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    assert _bit_identical(restored, tree)
    expected = _steps(tx, params, state, grad, 2)
    resumed = _steps(tx, restored["params"], restored["opt"], grad, 2)
  assert _bit_identical(resumed, expected)


class _Net(nnx.Module):
  def __init__(self, rngs):
    self.attn = nnx.MultiHeadAttention(
        num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(self.attn(x))


@pytest.mark.parametrize("name", ["adamw", "muon", "shampoo", "soap", "muon_int8"])
def test_nnx_optimizer_state_round_trips(name, tmp_path):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5, 8)), jnp.float32)

  def build():
    model = _Net(nnx.Rngs(0))
    return model, nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)

  @nnx.jit
  def train(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  model, optimizer = build()
  for _ in range(3):
    train(model, optimizer)
  saved = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
  restored = _save_and_restore(tmp_path / "ckpt", saved)
  new_model, new_optimizer = build()
  nnx.update(new_model, restored["model"])
  nnx.update(new_optimizer, restored["optimizer"])
  losses = [float(train(model, optimizer)) for _ in range(2)]
  new_losses = [float(train(new_model, new_optimizer)) for _ in range(2)]
  assert losses == new_losses
  assert _bit_identical(nnx.state(new_model), nnx.state(model))


@pytest.mark.parametrize("name", ["adamw_8bit", "ademamix_int8", "muon_int8", "soap"])
def test_flax_to_bytes_resumes_bit_identically(name):
  """``flax.serialization.to_bytes`` of the state (a Linen ``TrainState``'s
  checkpoint path), 8-bit codes included ("big" is quantized), restored with
  ``from_bytes`` onto a fresh state: the next steps are the same bits."""
  from flax import serialization
  params, grad = _problem()
  tx = OPTIMIZERS[name]()
  params, state = _steps(tx, params, tx.init(params), grad, 3)
  restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
  assert _bit_identical(restored, state)
  assert _bit_identical(_steps(tx, params, restored, grad, 2), _steps(tx, params, state, grad, 2))


@pytest.mark.parametrize("rows", [63, 60])  # the same 20 blocks of 256, and 19
def test_an_8bit_state_refuses_a_flax_checkpoint_of_another_shape(rows):
  """Restored into a resized weight, the 8-bit moments of the old one were
  taken silently (the block count alike, or truncated) and stepped."""
  from flax import serialization
  tx = go.adamw_8bit(0.01)
  data = serialization.to_bytes(tx.init({"w": jnp.ones((64, 80))}))
  with pytest.raises(ValueError, match=r"8-bit state at .*w is for shape \(%d, 80\)" % rows):
    serialization.from_bytes(tx.init({"w": jnp.ones((rows, 80))}), data)


def test_an_8bit_state_refuses_a_flax_checkpoint_of_float_moments():
  from flax import serialization
  params = {"w": jnp.ones((64, 80))}
  data = serialization.to_bytes(go.adamw(0.01).init(params))
  with pytest.raises(ValueError, match="another mu_dtype / nu_dtype"):
    serialization.from_bytes(go.adamw_8bit(0.01).init(params), data)


@pytest.mark.parametrize("make", [
    lambda: go.adamw_8bit(0.01),
    lambda: go.adamw(0.01, mu_dtype=gt.Int8Blocks(min_size=0)),
    lambda: go.ademamix(0.01, mu_dtype=gt.Int8Blocks(min_size=0)),
    lambda: go.dion(0.01, rank=4, mu_dtype=gt.Int8Blocks(min_size=0)),
], ids=["adamw_8bit", "adamw_int8_mu", "ademamix_int8_mu", "dion_int8_buffer"])
def test_an_update_refuses_8bit_blocks_of_another_shape(make):
  """Blocks for a (64, 80) weight (20) under a (60, 80) one's 8-bit state (19
  needed), as a restore that does not check them leaves it: named, not
  dequantized truncated (also where only the first moment, or Dion's buffer,
  is 8-bit)."""
  tx = make()
  params = {"w": jnp.ones((60, 80))}
  state = tx.init(params)
  big = tx.init({"w": jnp.ones((64, 80))})
  swap = lambda small, large: gt.QuantizedArray(large.codes, large.scales, small.shape,
                                                small.signed)
  is_q = lambda x: isinstance(x, gt.QuantizedArray)
  state = jax.tree.map(lambda a, b: swap(a, b) if is_q(a) else a, state, big, is_leaf=is_q)
  with pytest.raises(ValueError, match=r"8-bit \w+ of \['w'\] stands for shape \(60, 80\)"):
    tx.update(params, state, params)


def test_an_8bit_state_saved_in_the_flat_block_layout_restores():
  """Codes saved flat, (blocks, block_size), as they were before they kept a
  leaf's leading axes, restore into today's (64, 2, 256) codes: the same
  blocks, reshaped; the next step equals the one from the state itself."""
  from flax import serialization
  tx = go.adamw_8bit(0.01)
  params = {"w": jnp.linspace(-1.0, 1.0, 64 * 512).reshape(64, 512)}
  state = tx.update(jax.tree.map(jnp.sin, params), tx.init(params), params)[1]
  is_q = lambda x: isinstance(x, gt.QuantizedArray)
  flat = jax.tree.map(
      lambda q: gt.QuantizedArray(q.codes.reshape(-1, q.block_size), q.scales.reshape(-1),
                                  q.shape, q.signed) if is_q(q) else q,
      state, is_leaf=is_q)
  assert state[0].mu["w"].codes.shape == (64, 2, 256)
  assert flat[0].mu["w"].codes.shape == (128, 256)
  restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(flat))
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal(tx.update(params, restored, params),
                              tx.update(params, state, params))


def test_an_8bit_state_saved_with_another_block_size_says_so():
  from flax import serialization
  params = {"w": jnp.ones((64, 96))}
  data = serialization.to_bytes(go.adamw(0.01, mu_dtype="int8").init(params))
  target = go.adamw(0.01, mu_dtype=gt.Int8Blocks(block_size=128)).init(params)
  with pytest.raises(ValueError, match="blocks of 128 but was saved with blocks of 256"):
    serialization.from_bytes(target, data)


@pytest.mark.parametrize("then", ["stepped = tx.update(p, built, p)[1]",
                                  "register_with_flax(); stepped = built"])
def test_flax_serializes_an_8bit_state_built_before_flax_was_imported(then, tmp_path):
  """A state built before flax's first import (a checkpoint helper imported
  late) saves once it is stepped, or after ``register_with_flax()``."""
  import subprocess
  import sys
  script = tmp_path / "late.py"
  script.write_text(
      "import sys, jax.numpy as jnp\n"
      "from gradtx import optimizers as go\n"
      "from gradtx.storage import register_with_flax\n"
      "tx = go.adamw_8bit(0.01); p = {'w': jnp.ones((64, 80))}\n"
      "built = tx.init(p)\n"
      "assert 'flax' not in sys.modules\n"
      "from flax import serialization\n"
      f"{then}\n"
      "data = serialization.to_bytes(stepped)\n"
      "serialization.from_bytes(tx.init(p), data)\n"
      "print('saved')\n")
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert "saved" in out.stdout, out.stderr[-2000:]


_MESH_SPECS = {"bias": P("d"), "w": P("d", None), "conv": P(None, None, None, "d"),
               "big": P("d", None)}


def _abstract_on(mesh, tx, params):
  """The restore target on ``mesh``: parameters as ``ShapeDtypeStruct``s with
  their shardings, the state from ``jax.eval_shape(tx.init, ...)`` with
  ``gt.state_shardings`` (the README's recipe)."""
  abstract = {k: jax.ShapeDtypeStruct(
      p.shape, p.dtype, sharding=NamedSharding(mesh, _MESH_SPECS[k]))
              for k, p in params.items()}
  with jax.set_mesh(mesh):
    shapes = jax.eval_shape(tx.init, abstract)
    shardings = gt.state_shardings(tx, abstract)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       shapes, shardings)
  return {"params": abstract, "opt": state}


# SOAP's eigenbasis of a rank-deficient factor is arbitrary in its null space
# (round-off of another layout picks another one): only full-rank factors
# are comparable, so sides over 32 (whose factors these gradients leave
# rank-deficient) are not preconditioned here.
_IN_FLOAT64 = ("shampoo", "soap", "psgd_kron")
_RESUMED = {**OPTIMIZERS, "soap": lambda: go.soap(
    0.01, precondition_every=2, max_precondition_dim=32)}


@pytest.mark.parametrize("name", ["adamw", "muon", "shampoo", "soap", "adamw_8bit",
                                  "adafactor", "adam_mini", "psgd_kron"])
def test_a_state_resumes_on_another_mesh_size(name, tmp_path):
  """Saved on 8 devices, restored on 4, then 1, then 8 again: every hop takes
  one step, and each step equals the uninterrupted run's (Shampoo and SOAP in
  float64: float32 round-off through their roots and eigenbases differs
  between layouts by more than 1e-6 whatever the checkpoint, as their sharded
  tests found)."""
  with contextlib.ExitStack() as stack:
    if name in _IN_FLOAT64:
      stack.enter_context(jax.enable_x64(True))
    _resume_on_other_meshes(name, tmp_path)


def _resume_on_other_meshes(name, tmp_path):
  tx = _RESUMED[name]()
  params, grad = _problem()
  if name in _IN_FLOAT64:
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
  reference, state = [], tx.init(params)
  p = params
  for _ in range(6):
    p, state = _steps(tx, p, state, grad, 1)
    reference.append(p)
  reference = reference[2:]  # after 3, 4, 5 and 6 steps
  mesh = lambda n: jax.make_mesh((n,), ("d",), axis_types=(AxisType.Explicit,),
                                 devices=jax.devices()[:n])
  with jax.set_mesh(mesh(8)):
    abstract = _abstract_on(mesh(8), tx, params)
    placed = jax.device_put(params, {k: a.sharding for k, a in abstract["params"].items()})
    state = jax.jit(tx.init, out_shardings=jax.tree.map(
        lambda a: a.sharding, abstract["opt"]))(placed)
    tree = dict(zip(("params", "opt"), _steps(tx, placed, state, grad, 3)))
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  for hop, devices in enumerate((4, 1, 8)):
    manager.save(hop, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    target = _abstract_on(mesh(devices), tx, params)
    with jax.set_mesh(mesh(devices)):
      restored = manager.restore(hop, args=ocp.args.StandardRestore(target))
      for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
      tree = dict(zip(("params", "opt"),
                      _steps(tx, restored["params"], restored["opt"], grad, 1)))
    for k, p in tree["params"].items():
      np.testing.assert_allclose(np.asarray(p), reference[hop + 1][k], rtol=1e-6, atol=1e-7)
  manager.close()


def _mesh(n):
  return jax.make_mesh((n,), ("d",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:n])


@pytest.mark.parametrize("case", CASES + STRUCTURED, ids=lambda c: c.name)
def test_every_state_has_one_shape_whatever_the_mesh_size(case):
  """For every optimizer, the README's restore target (``jax.eval_shape`` of
  init plus ``gt.state_shardings``) has the same structure, shapes and dtypes
  on meshes of 8, 4 and 1 devices: a state saved on any of them restores on
  any other, orbax resharding the saved arrays (the values are the saved
  ones). With ``tests/test_sharding.py``'s sharded-equals-unsharded steps
  (every optimizer on one device, the matrix layouts on 2, 3 and 8), the step
  after such a restore is the uninterrupted run's;
  ``test_a_state_resumes_on_another_mesh_size`` runs the hops 8 -> 4 -> 1 -> 8
  end to end for the optimizers with their own state layouts."""
  params, _ = _problem()
  tx = case.make()
  targets = [_abstract_on(_mesh(n), tx, params)["opt"] for n in (8, 4, 1)]
  described = [(jax.tree.structure(t), [(a.shape, a.dtype) for a in jax.tree.leaves(t)])
               for t in targets]
  assert described[0] == described[1] == described[2], case.name
  for n, target in zip((8, 4, 1), targets):
    assert all(a.sharding.mesh.size == n for a in jax.tree.leaves(target)), case.name


def _readme_function(name):
  """A function defined in one of README.md's python blocks."""
  (block,) = [b for b in helpers.readme_python_blocks() if f"def {name}(" in b]
  namespace = {}
  exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
  return namespace[name]


@pytest.mark.parametrize("name", ["psgd_kron", "dion", "adam_mini", "normuon"])
def test_a_linen_checkpoint_with_boxed_statistics_restores_by_the_readme_recipe(name):
  """Before b14608f a Linen box around a parameter boxed the statistics built
  from it too; such a TrainState checkpoint restores into today's plain
  statistics by README's ``unboxed_like``, the same values, and steps.
  tests/linen_boxed_states_c683092.msgpack holds the states c683092's
  library (``benchmarks.revisions.at_revision("c683092")``) saved for this
  model after one step of ``jnp.cos`` of the parameters at lr 1e-2 (its
  16-wide kernels are below Adafactor's factoring size, 128: Adafactor is
  not in it)."""
  import flax.linen as nn
  from flax import serialization
  from flax.training import train_state

  class Boxed(nn.Module):
    @nn.compact
    def __call__(self, x):
      kernel = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
      return nn.Dense(4, kernel_init=nn.with_partitioning(
          nn.initializers.lecun_normal(), ("model", None)))(
              jax.nn.relu(nn.Dense(16, kernel_init=kernel)(x)))

  model, x = Boxed(), jnp.linspace(-1.0, 1.0, 4 * 16).reshape(4, 16)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  saved = serialization.msgpack_restore(
      (pathlib.Path(__file__).parent / "linen_boxed_states_c683092.msgpack").read_bytes())[name]
  target = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                         tx=getattr(go, name)(1e-2))
  with pytest.raises((ValueError, AttributeError, TypeError)):  # as saved: refused, or fails
    serialization.from_state_dict(target.opt_state, saved)
    target.replace(opt_state=serialization.from_state_dict(target.opt_state, saved)
                   ).apply_gradients(grads=jax.tree.map(jnp.cos, params))
  unboxed_like = _readme_function("unboxed_like")
  opt_state = serialization.from_state_dict(target.opt_state, unboxed_like(
      saved, serialization.to_state_dict(target.opt_state)))
  values = lambda tree: sorted((np.shape(v), float(np.sum(v))) for v in jax.tree.leaves(tree))
  assert values(nn.unbox(opt_state)) == values(saved)
  stepped = target.replace(opt_state=opt_state).apply_gradients(
      grads=jax.tree.map(jnp.cos, params))
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(nn.unbox(stepped)))
