"""Sharded parameters and states, for every optimizer of the case registry.

tests/conftest.py gives 8 host devices. State leaves shaped like a parameter
must follow its sharding (``optax.tree_map_params``'s recipe and a plain
``jax.jit(tx.init)`` on an Explicit mesh), matrix statistics (stacks, PSGD's
factors) are split over the devices in the owner layout, other statistics are
replicated, and a sharded step gives the unsharded result, for layouts that
split the matrix views the transforms reshape (README, Conventions: Sharding).
"""

import contextlib
import math
import re

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.support.cases import CASES, CASES_BY_NAME, LR, STRUCTURED
from tests.support.helpers import make_mesh, nnx_train, run_steps

# Every optimizer on an Explicit-axes mesh (jax.make_mesh's default); three
# state layouts (one buffer; Adam + MaskedState; multi_transform; PSGD's
# owners and leaf-wise vectors) on an Auto one, to keep the compile count down.
_AUTO_MESH_CASES = ("sgd_momentum", "adamw_mask", "muon", "psgd_kron")
_MESH_PARAMS = [
    pytest.param(c, jax.sharding.AxisType.Explicit, id=f"explicit-{c.name}")
    for c in CASES + STRUCTURED
] + [
    pytest.param(c, jax.sharding.AxisType.Auto, id=f"auto-{c.name}")
    for c in CASES + STRUCTURED
    if c.name in _AUTO_MESH_CASES
]


_SPECS = {"w": P("x", "y"), "b": P("x"), "c": P()}
_SHARD_PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 32, dtype=jnp.float32).reshape(8, 4),
    "b": jnp.linspace(0.5, 1.5, 8, dtype=jnp.float32),
    "c": jnp.array([0.3, -0.7], jnp.float32),
}
_SHARD_GRADS = jax.tree.map(lambda p: jnp.cos(3 * p) + 0.1, _SHARD_PARAMS)


def _placed_state(tx, mesh):
  """Sharded params and grads, and the state placed by ``gt.state_shardings``.

  Checks on the way that the helper gives every state leaf the layout
  ``_expected_sharding`` describes.
  """
  param_shardings = {k: NamedSharding(mesh, s) for k, s in _SPECS.items()}
  params = jax.device_put(_SHARD_PARAMS, param_shardings)
  grads = jax.device_put(_SHARD_GRADS, param_shardings)
  shardings = gt.state_shardings(tx, params)
  abstract_state = jax.eval_shape(tx.init, params)
  flat_abstract = jax.tree_util.tree_leaves_with_path(abstract_state)
  flat_shardings = jax.tree.leaves(shardings)
  assert len(flat_shardings) == len(flat_abstract)
  for (path, leaf), sharding in zip(flat_abstract, flat_shardings):
    assert sharding.is_equivalent_to(_expected_sharding(path, leaf, mesh), leaf.ndim), (
        jax.tree_util.keystr(path), sharding)
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  _check_shardings(state, mesh, "init")
  return params, grads, state


# State fields that are stacks of matrices spread over all devices (owners).
_STACKS = ("factors", "left_stats", "right_stats", "left_root", "right_root", "left_basis",
           "right_basis", "mu_stacks", "nu_stacks")


def _expected_sharding(path, leaf, mesh):
  """The param's spec for a copy of a param (8-bit moments of small leaves
  included); the owner layout (split over every mesh axis along the stack
  axis) for stacks of matrix statistics and PSGD Kron's factors of matrices (a
  vector's factor is laid out like the vector); Adam-mini's per-block second
  moment like its parameter on the axes it keeps; replicated for anything else
  (factored and per-block moments, counts), even where its shape happens to
  match another param."""
  names = [getattr(k, "name", None) for k in path]
  keys = [getattr(k, "key", None) for k in path]
  if "factors" in names and "b" in keys:  # a vector's PSGD factor: like the vector
    return NamedSharding(mesh, _SPECS["b"])
  if any(n in _STACKS for n in names):
    # Stored unpadded: split over the owners when the mesh size divides the
    # stack, else along its rows when it divides them, else replicated.
    axes = tuple(mesh.axis_names)
    if leaf.shape[0] % mesh.size == 0:
      return NamedSharding(mesh, P(axes, *[None] * (leaf.ndim - 1)))
    if leaf.ndim > 1 and leaf.shape[1] % mesh.size == 0:
      return NamedSharding(mesh, P(None, axes, *[None] * (leaf.ndim - 2)))
    return NamedSharding(mesh, P())
  for k, spec in _SPECS.items():
    if k in keys and leaf.shape == _SHARD_PARAMS[k].shape:
      return NamedSharding(mesh, spec)
  if "nu" in names and keys[-1] == "w" and leaf.shape == (1, 4):
    # Adam-mini's second moment of w, one block per column: split like w's columns.
    return NamedSharding(mesh, P(None, "y"))
  return NamedSharding(mesh, P())


def _check_shardings(tree, mesh, what):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    expected = _expected_sharding(path, leaf, mesh)
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (
        what, jax.tree_util.keystr(path), leaf.sharding, expected)


def test_psgd_kron_momentum_keeps_its_parameters_layout_on_an_auto_mesh():
  """The README recipe on Auto axes (state placed by ``gt.state_shardings``,
  a plain ``jax.jit`` step): the matrix leaves' momentum used to come back
  from the owners' stacks whole on every device (8x its memory); it is now
  updated where its leaf lives. (The bias, stepped leaf-wise, keeps its
  layout since its factor is stored like it: ``test_sharded_params_keep_their_sharding``.)"""
  mesh = make_mesh(jax.sharding.AxisType.Auto)
  tx = go.psgd_kron(LR)
  params, grads, state = _placed_state(tx, mesh)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p)[1])
  with jax.set_mesh(mesh):
    state = step(params, state, grads)
    state = step(params, state, grads)
  mu = state[0].mu["w"]
  assert mu.sharding.is_equivalent_to(params["w"].sharding, 2), mu.sharding
  ref = run_steps(tx, _SHARD_PARAMS, [_SHARD_GRADS, _SHARD_GRADS])[1]
  np.testing.assert_allclose(np.asarray(mu), ref[0].mu["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", STRUCTURED, ids=[c.name for c in STRUCTURED])
def test_state_shardings_follow_params(case):
  _placed_state(case.make(), make_mesh(jax.sharding.AxisType.Explicit))


@pytest.mark.parametrize("case,axis_type", _MESH_PARAMS)
def test_sharded_params_keep_their_sharding(case, axis_type):
  mesh = make_mesh(axis_type)
  tx = case.make()
  params, grads, state = _placed_state(tx, mesh)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  with jax.set_mesh(mesh):
    new_params, new_state, updates = step(params, state, grads)
  _check_shardings(new_params, mesh, "params")
  _check_shardings(updates, mesh, "updates")
  _check_shardings(new_state, mesh, "state")

  ref_params, ref_state, _ = run_steps(tx, _SHARD_PARAMS, [_SHARD_GRADS])
  chex.assert_trees_all_close(new_params, ref_params, rtol=1e-5, atol=1e-6)
  # Stacks are stored unpadded: the state has the same shapes on any mesh.
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["shampoo", "soap", "psgd_kron", "muon", "adamw"])
def test_uncommitted_gradients_step_like_committed_ones_without_set_mesh(name):
  """Gradients as plain host arrays beside sharded parameters and state, no
  ``jax.set_mesh``: Shampoo, SOAP and PSGD Kron found no mesh on them and
  took the one-device path against state stacks on the mesh (a
  ShardingTypeError); they now step as with committed gradients, like the
  element-wise optimizers, in the parameters' layout."""
  mesh = make_mesh(jax.sharding.AxisType.Explicit, shape=(8,), names=("d",))
  tx = CASES_BY_NAME[name].make()
  shardings = jax.tree.map(lambda p: NamedSharding(mesh, P("d") if p.shape[0] % 8 == 0 else P()),
                           _SHARD_PARAMS)
  params = jax.device_put(_SHARD_PARAMS, shardings)
  state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params))(params)
  uncommitted = jax.tree.map(np.asarray, _SHARD_GRADS)
  committed = jax.device_put(_SHARD_GRADS, shardings)
  # Eager too, but for PSGD Kron (whose eager step on an Explicit mesh needs set_mesh), and
  # with the host gradients a constant of the jitted step.
  closure = lambda g: jax.jit(lambda s, p: tx.update(g, s, p))
  for step in [jax.jit(tx.update), lambda g, s, p: closure(g)(s, p)] + (
      [] if name == "psgd_kron" else [tx.update]):
    updates, _ = step(uncommitted, state, params)
    expected, _ = step(committed, state, params)
    for u, e, p in zip(jax.tree.leaves(updates), jax.tree.leaves(expected),
                       jax.tree.leaves(params)):
      np.testing.assert_allclose(u, e, rtol=1e-6, atol=1e-7)
      assert u.sharding.is_equivalent_to(p.sharding, u.ndim), (u.sharding, p.sharding)

@pytest.mark.parametrize("factory, static_args", [
    (go.muon, ()), (go.adamuon, ()), (go.normuon, ()), (go.dion, ("rank",)),
    (go.shampoo, ("block_size", "max_precondition_dim")), (go.vmuon, ()),
], ids=["muon", "adamuon", "normuon", "dion", "shampoo", "vmuon"])
def test_injected_hyperparameters_step_on_an_explicit_mesh(factory, static_args):
  """``optax.inject_hyperparams`` traces the hyperparameters; the per-device
  programs (shard_map, auto_axes) closed over them and were refused on
  Explicit axes (NotImplementedError, or a mesh mismatch for Dion). They now
  enter as arguments: the sharded step is the one-device one."""
  mesh = make_mesh(jax.sharding.AxisType.Explicit, shape=(8,), names=("d",))
  tx = optax.inject_hyperparams(factory, static_args=static_args)(learning_rate=0.02)
  rng = np.random.default_rng(0)
  host = {"w": rng.standard_normal((64, 32)).astype(np.float32),
          "b": np.zeros(32, np.float32)}
  expected, _ = jax.jit(tx.update)(host, tx.init(host), host)
  with jax.set_mesh(mesh):
    params = jax.device_put(host, {"w": NamedSharding(mesh, P("d")),
                                   "b": NamedSharding(mesh, P())})
    state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params))(params)
    updates, _ = jax.jit(tx.update)(params, state, params)
  for u, e in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
    np.testing.assert_allclose(u, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES + STRUCTURED, ids=lambda c: c.name)
def test_jit_init_on_an_explicit_mesh_gives_the_helpers_layout(case):
  """Inside ``jax.set_mesh`` a plain ``jax.jit(tx.init)`` needs no
  ``out_shardings``: every state leaf is typed as ``gt.state_shardings``
  lays it out."""
  tx = case.make()
  mesh = make_mesh(jax.sharding.AxisType.Explicit)
  _, _, placed = _placed_state(tx, mesh)
  with jax.set_mesh(mesh):
    params = jax.device_put(
        _SHARD_PARAMS, {k: NamedSharding(mesh, s) for k, s in _SPECS.items()})
    state = jax.jit(tx.init)(params)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(placed)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)


# Layouts that split the views the transforms reshape into: blocks of a
# Kronecker factor or of a grafting norm, 8-bit blocks of a column-sharded or
# unevenly row-sharded leaf, Adam-mini's per-head split of a fused qkv.
_VIEW_SPECS = {
    "w": P("x", "y"), "col": P(None, "y"), "rows": P("x", None),
    "conv": P("x", "y", None, None), "qkv": P(None, "y"),
}
_VIEW_SHAPES = {
    "w": (16, 8), "col": (128, 64), "rows": (8, 600), "conv": (4, 2, 8, 6),
    "qkv": (16, 48),
}
_VIEW_OPTIMIZERS = {
    "shampoo_blocks": lambda: go.shampoo(1e-2, block_size=4),
    "shampoo_unblocked": lambda: go.shampoo(1e-2, block_size=None),
    "soap": lambda: go.soap(1e-2),
    "adafactor": lambda: go.adafactor(1e-2, min_dim_size_to_factor=2),
    "adam_mini": lambda: go.adam_mini(1e-2, num_heads=1),
    "adamw_8bit": lambda: go.adamw_8bit(1e-2),
    "muon": lambda: go.muon(1e-2),
}


@pytest.mark.parametrize("name", list(_VIEW_OPTIMIZERS))
def test_sharded_leaves_whose_views_split_sharded_axes(name):
  """Two jitted steps on an Explicit mesh: one trace (the state keeps its
  layout), params keep theirs, and the result is the unsharded one."""
  tx = _VIEW_OPTIMIZERS[name]()
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
            for k, s in _VIEW_SHAPES.items()}
  traces = []

  def step(params, state):
    traces.append(1)
    grads = jax.tree.map(lambda p: jnp.sin(3 * p) + 0.1, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  ref, ref_state = params, tx.init(params)
  for _ in range(2):
    ref, ref_state = jax.jit(step)(ref, ref_state)

  mesh = make_mesh(jax.sharding.AxisType.Explicit)
  traces.clear()
  with jax.set_mesh(mesh):
    new = jax.device_put(
        params, {k: NamedSharding(mesh, s) for k, s in _VIEW_SPECS.items()})
    state = init_state = jax.jit(tx.init)(new)
    jitted = jax.jit(step)
    for _ in range(2):
      new, state = jitted(new, state)
  assert len(traces) == 1
  for before, after in zip(jax.tree.leaves(init_state), jax.tree.leaves(state)):
    assert after.sharding.is_equivalent_to(before.sharding, after.ndim)
  for k, spec in _VIEW_SPECS.items():
    assert new[k].sharding.spec == spec, k
  chex.assert_trees_all_close(new, ref, rtol=1e-4, atol=1e-5)


def test_8bit_state_of_large_leaves_follows_the_helper():
  """Leaves >= 4096 elements hold block codes: the helper splits those of a
  row-sharded leaf by rows (over the rows' mesh axes only, for a leaf split
  over two) and replicates the others; the step keeps that layout (one
  compilation) and the update the param's."""
  mesh = make_mesh(jax.sharding.AxisType.Explicit)
  shardings = {"w": NamedSharding(mesh, P("x", "y")),
               "b": NamedSharding(mesh, P("x"))}
  params = jax.device_put(
      {"w": jnp.linspace(-1, 1, 128 * 64).reshape(128, 64),
       "b": jnp.linspace(0, 1, 128)}, shardings)
  tx = go.adamw_8bit(1e-2)
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params))(params)
    assert isinstance(state[0].mu["w"], gt.QuantizedArray)
    for codes in (state[0].mu["w"].codes, state[0].nu["w"].codes):
      assert codes.sharding.spec[0] == "x", codes.sharding
    traces = []

    @jax.jit
    def step(params, state):
      traces.append(1)
      grads = jax.tree.map(jnp.sin, params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    new_params, new_state = step(*step(params, state))
  assert len(traces) == 1
  assert new_params["w"].sharding.spec == P("x", "y")
  plain = jax.tree.map(np.asarray, params)
  ref = step(*step(plain, tx.init(plain)))[0]
  chex.assert_trees_all_close(new_params, ref, rtol=1e-6, atol=1e-7)
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert after.sharding.is_equivalent_to(before.sharding, after.ndim)


class _ShardedLinear(nnx.Module):
  """A Linear whose kernel is P('x', 'y') and bias P('y') (flax metadata)."""

  def __init__(self, rngs, sharded, dtype=jnp.float32):
    shard = nnx.with_partitioning if sharded else lambda init, _: init
    self.lin = nnx.Linear(
        8, 4, rngs=rngs, dtype=dtype, param_dtype=dtype,
        kernel_init=shard(nnx.initializers.lecun_normal(), ("x", "y")),
        bias_init=shard(nnx.initializers.ones_init(), ("y",)),
    )

  def __call__(self, x):
    return self.lin(x)


def _nnx_train(make_tx, mesh=None, dtype=jnp.float32):
  rows = jnp.linspace(-1.0, 1.0, 16 * 8, dtype=dtype).reshape(16, 8)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    model = _ShardedLinear(nnx.Rngs(0), sharded=mesh is not None, dtype=dtype)
    losses, _, _ = nnx_train(model, make_tx(), lambda m: jnp.mean(jnp.sin(3 * m(rows)) ** 2), 3)
    return model, losses


@pytest.mark.parametrize(
    "case", [CASES_BY_NAME[n] for n in ("adamw", "muon")] + STRUCTURED,
    ids=lambda c: c.name)
def test_flax_nnx_optimizer_with_sharded_params(case):
  """nnx.Optimizer copies each param's sharding metadata onto the state
  leaves built from it: statistics of another shape must not inherit it
  (optax.adafactor's factored moments do, and fail here)."""
  make = lambda: case.make(0.02)
  # Shampoo in float64: sharded sums add in another order, and the inverse
  # roots of its early, badly conditioned Kronecker factors amplify float32
  # round-off past any tolerance that would still catch a wrong step.
  in_float64 = case.name == "shampoo"
  dtype, tolerance = (jnp.float64, 1e-9) if in_float64 else (jnp.float32, 2e-4)
  with jax.enable_x64(in_float64):
    model, losses = _nnx_train(make, make_mesh(jax.sharding.AxisType.Explicit), dtype)
    ref_model, ref_losses = _nnx_train(make, None, dtype)
  kernel = model.lin.kernel[...]
  assert kernel.sharding.spec == P("x", "y")
  assert losses[-1] < losses[0]
  if case.name in ("soap", "soap_muon", "record_recipe"):
    # Not comparable: the 8x8 factor has rank <= 4, and SOAP's Adam on the
    # eigenbasis of its null space turns rounding noise into O(1) steps (a
    # 1e-6 relative change of the gradients moves the kernel by 0.08 here;
    # soap_muon, and the record recipe around it, orthogonalize that same
    # direction).
    # test_sharded_params_keep_their_sharding compares sharded SOAP steps.
    return
  np.testing.assert_allclose(losses, ref_losses, rtol=tolerance)
  np.testing.assert_allclose(
      kernel, ref_model.lin.kernel[...], rtol=tolerance, atol=tolerance / 10)


class _BoxedMLP(linen.Module):
  """Kernels boxed with mesh axis names (``nn.with_partitioning``)."""

  @linen.compact
  def __call__(self, x):
    boxed = lambda names: linen.with_partitioning(linen.initializers.lecun_normal(), names)
    x = jax.nn.relu(linen.Dense(64, kernel_init=boxed((None, "y")))(x))
    x = jax.nn.relu(linen.Dense(64, kernel_init=boxed(("y", None)))(x))
    return linen.Dense(8, kernel_init=boxed((None, "y")))(x)


def _linen_train(tx, mesh, steps=3):
  """Flax's Linen recipe: a TrainState of boxed parameters, laid out by
  ``nn.get_sharding`` of its abstract value (or unsharded)."""
  model, key = _BoxedMLP(), jax.random.PRNGKey(0)
  x = jnp.linspace(-1.0, 1.0, 16 * 64).reshape(16, 64)
  labels = jnp.arange(16) % 8

  def init(key):
    return train_state.TrainState.create(
        apply_fn=model.apply, params=model.init(key, x)["params"], tx=tx)

  def step(state):
    def loss_fn(params):
      logits = state.apply_fn({"params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  shardings = None if mesh is None else linen.get_sharding(jax.eval_shape(init, key), mesh)
  state = jax.jit(init, out_shardings=shardings)(key)
  step = jax.jit(step, in_shardings=(shardings,), out_shardings=(shardings, None))
  losses = []
  for _ in range(steps):
    state, loss = step(state)
    losses.append(float(loss))
  return state, losses


@pytest.mark.parametrize("name", ["adamw", "muon", "adafactor", "adam_mini", "adamw_8bit",
                                  "dion", "normuon", "psgd_kron", "shampoo"])
def test_linen_train_state_of_boxed_params_on_a_mesh(name):
  """A Linen box around a parameter named the axes of every state leaf built
  from it: Adam-mini's block means (1, 64), Dion's basis, NorMuon's row
  moments, Adafactor's factors and 8-bit scales kept the kernel's names and
  ``nn.get_sharding`` refused them (optax.adafactor still does). Statistics
  are plain; moments shaped like the parameter keep its box and layout."""
  make = lambda: CASES_BY_NAME[name].make(0.02)
  state, losses = _linen_train(make(), make_mesh(jax.sharding.AxisType.Auto))
  _, ref_losses = _linen_train(make(), None)
  kernel = state.params["Dense_0"]["kernel"]
  assert isinstance(kernel, linen.Partitioned)
  assert kernel.value.sharding.spec == P(None, "y")
  assert losses[-1] < losses[0]
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-4)
  if name == "adamw":  # a moment shaped like its parameter is laid out like it
    mu = state.opt_state[0].mu["Dense_0"]["kernel"]
    assert isinstance(mu, linen.Partitioned) and mu.value.sharding.spec == P(None, "y")


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap", "normuon", "psgd_kron"])
def test_same_shape_kernels_of_two_layouts_on_an_auto_mesh(name):
  """Two (64, 32) kernels split P('x') and P('x', 'y') in one stack on Auto
  axes, stepped and applied in one jitted function: XLA's partitioner
  emitted an out-of-range slice taking the second back from its owner (the
  HLO verifier refused the program). Entries now leave their owners split by
  rows (``block_stacks.scattered_by_rows``); the step is the unsharded one."""
  mesh = make_mesh(jax.sharding.AxisType.Auto)
  values = {"k0": jnp.linspace(-1.0, 1.0, 64 * 32).reshape(64, 32),
            "k1": jnp.cos(jnp.linspace(0.0, 9.0, 64 * 32)).reshape(64, 32)}
  specs = {"k0": P("x"), "k1": P("x", "y")}
  tx = CASES_BY_NAME[name].make(LR)

  def step(params, state):
    updates, state = tx.update(jax.tree.map(lambda p: jnp.sin(3 * p), params), state, params)
    return optax.apply_updates(params, updates), state

  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in values.items()}
    shardings = gt.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    layout = (jax.tree.map(lambda p: p.sharding, params), shardings)
    stepped, _ = jax.jit(step, out_shardings=layout)(params, state)
  expected, _ = jax.jit(step)(values, tx.init(values))
  chex.assert_trees_all_close(stepped, expected, rtol=1e-5, atol=1e-6)


def test_compact_states_of_a_data_sharded_leaf_keep_its_sharding():
  """jit(init) on an Explicit 1-D mesh: 8-bit codes of a leaf sharded on its
  first axis only, and Adam-mini's per-row moments, are split the same way."""
  mesh = make_mesh(shape=(8,), names=("data",))
  sharding = NamedSharding(mesh, P("data"))
  params = {"w": jax.device_put(jnp.ones((64, 128)), sharding)}
  with jax.set_mesh(mesh):
    for tx in (go.adamw_8bit(1e-3), go.adam_mini(1e-3)):
      state = jax.jit(tx.init)(params)
      step = jax.jit(lambda p, s, tx=tx: tx.update(p, s, p))
      _, state = step(params, state)
      mu = state[0].mu["w"]
      leaf = mu.codes if isinstance(mu, gt.QuantizedArray) else mu
      assert leaf.sharding.spec[0] == "data"


def _state_bytes_per_device(state) -> int:
  return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize("shape, spec, devices", [
    ((2, 64, 256), P(None, "data", None), 8),  # a scanned stack, FSDP below its layer axis
    ((64, 2048), P(None, "data"), 8),  # a tensor-parallel kernel, split by columns
    ((64, 2048), P("data", None), 8),  # FSDP rows
    # Rows that are not whole blocks: (4, 256) codes are reshaped to (32, 32) and
    # back, which Explicit axes type only as a merge then a split.
    ((4, 32, 32), P("data", None, None), 4),  # a stack split along its layer axis
    ((2, 64, 64), P(None, "data", None), 4),
    ((2, 32, 128), P(None, "data", None), 8),
], ids=["scanned-fsdp", "columns", "rows", "layers-small-rows", "scanned-small-rows",
        "scanned-half-rows"])
def test_8bit_codes_split_like_a_parameter_split_past_its_first_axis(shape, spec, devices):
  """The codes keep the leading axes that are whole blocks, so they split like
  their parameter there too: the state per device is a quarter of float32
  AdamW's (it was 2.03x: whole codes on every device), two jitted steps compile
  once, keep the layout, and equal the one-device steps."""
  mesh = make_mesh(shape=(devices,), names=("data",))
  params = {"w": jax.device_put(
      jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32),
      NamedSharding(mesh, spec))}
  tx = go.adamw_8bit(1e-2)
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init)(params)
    codes = state[0].mu["w"].codes
    assert codes.sharding.spec[:len(shape)] == tuple(spec) + (None,) * (len(shape) - len(spec))
    ratio = (_state_bytes_per_device(state)
             / _state_bytes_per_device(jax.jit(optax.adamw(1e-2).init)(params)))
    assert ratio < 0.26, ratio
    traces = []

    @jax.jit
    def step(params, state):
      traces.append(1)
      updates, state = tx.update(jax.tree.map(jnp.sin, params), state, params)
      return optax.apply_updates(params, updates), state

    new_params, new_state = step(*step(params, state))
  assert len(traces) == 1
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert after.sharding.is_equivalent_to(before.sharding, after.ndim)
  plain = jax.tree.map(np.asarray, params)
  one_device = jax.jit(lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(jax.tree.map(jnp.sin, p), s, p)))
  ref = one_device(*one_device(plain, tx.init(plain)))
  chex.assert_trees_all_close(new_params, ref[0], rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(
      jax.tree.map(np.asarray, new_state), jax.tree.map(np.asarray, ref[1]))


# Meshes of 1, 2 and 3 devices, parameters sharded along their first axis
# (the README's recipe): 3 divides no stack of 2 same-shape matrices, and a
# one-device mesh still types its arrays with its axis (issue: Explicit
# reshapes across a sharded axis of size 1 were refused).
_SIZED_PARAMS = {
    k: jnp.asarray(np.random.default_rng(i).normal(size=shape), jnp.float32)
    for i, (k, shape) in enumerate(
        {"w": (6, 4), "v": (6, 12), "stack": (6, 6, 4), "b": (6,)}.items())
}
_SIZED_SPECS = {"w": P("d", None), "v": P(None, "d"), "stack": P("d", None, None),
                "b": P("d")}
# One optimizer per matrix transform's layout code (Newton–Schulz, Kronecker,
# SOAP, 8-bit blocks, factored, per-block, K-FAC, low rank, normalize,
# factored geometry, hyperball); the rest reuse them and get one device.
_EVERY_SIZE = ("muon", "shampoo", "soap", "adamw_8bit", "adafactor", "adam_mini", "kfac",
               "dion", "normuon", "vmuon", "muonh")
_MESH_SIZES = [
    pytest.param(c, n, t, id=f"{t.name.lower()}{n}-{c.name}")
    for c in CASES + STRUCTURED
    for n, t in [(1, jax.sharding.AxisType.Explicit)]
    + ([(2, jax.sharding.AxisType.Explicit), (3, jax.sharding.AxisType.Explicit),
        (1, jax.sharding.AxisType.Auto)] if c.name in _EVERY_SIZE else [])
]


@pytest.mark.parametrize("case,size,axis_type", _MESH_SIZES)
def test_every_mesh_size_gives_the_unsharded_steps(case, size, axis_type):
  tx = case.make()
  mesh = jax.make_mesh((size,), ("d",), axis_types=(axis_type,),
                       devices=jax.devices()[:size])
  grads = [jax.tree.map(lambda p, k=k: jnp.cos((3 + k) * p) + 0.1, _SIZED_PARAMS)
           for k in range(2)]
  ref_params, _, _ = run_steps(tx, _SIZED_PARAMS, grads)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  shardings = {k: NamedSharding(mesh, s) for k, s in _SIZED_SPECS.items()}
  with jax.set_mesh(mesh):
    params = jax.device_put(_SIZED_PARAMS, shardings)
    state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params))(params)
    for g in grads:
      params, state = step(params, state, jax.device_put(g, shardings))
  for k, p in params.items():
    assert p.sharding.is_equivalent_to(shardings[k], p.ndim), (k, p.sharding)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES + STRUCTURED, ids=lambda c: c.name)
def test_optax_map_params_maps_the_parameter_copies_or_refuses(case):
  """optax's documented way to derive state shardings, ``optax.tree.map_params``,
  either maps exactly the state leaves that are copies of a parameter, or (a
  state of stacks or quantized blocks) refuses, naming ``state_shardings``."""
  tx = case.make()
  params = {"w": jnp.ones((8, 4)), "b": jnp.ones(8), "big": jnp.ones((64, 128))}
  state = tx.init(params)
  try:
    marked = optax.tree.map_params(tx, _ParamMark, state)
  except ValueError as error:
    assert "gradtx.transforms.state_shardings" in str(error)
    return
  flat_marked, flat_state = jax.tree.leaves(marked), jax.tree.leaves(state)
  assert len(flat_marked) == len(flat_state)
  for mark, leaf in zip(flat_marked, flat_state):
    if isinstance(mark, _ParamMark):
      assert jnp.shape(leaf) == mark.shape
    else:
      assert mark is leaf
      # No copy of a matrix parameter is left unmapped (AdaMuon's element-wise
      # v was, so map_params' sharding recipe replicated it).
      assert jnp.shape(leaf) not in ((8, 4), (64, 128)), jnp.shape(leaf)


class _ParamMark:
  """What ``map_params`` puts where a parameter copy was (a pytree leaf)."""

  def __init__(self, param):
    self.shape = jnp.shape(param)


def _muon_on_experts(shapes):
  """go.muon's update of random experts {name: shape} under "experts", split
  P('expert') over a (data 2, expert 4) mesh: checks it equals the
  one-device update and keeps the sharding; returns the compiled text."""
  rng = np.random.default_rng(0)
  params = {"experts": {k: jnp.asarray(rng.standard_normal(s), jnp.float32)
                        for k, s in shapes.items()}}
  grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
  tx = go.muon(0.02)
  expected, _ = tx.update(grads, tx.init(params), params)
  mesh = make_mesh(shape=(2, 4), names=("data", "expert"))
  sharding = NamedSharding(mesh, P("expert", None, None))
  with jax.set_mesh(mesh):
    p, g = jax.device_put(params, sharding), jax.device_put(grads, sharding)
    state = jax.jit(tx.init)(p)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    updates, _ = step(g, state, p)
    text = step.lower(g, state, p).compile().as_text()
  for name in shapes:
    np.testing.assert_allclose(updates["experts"][name], expected["experts"][name],
                               rtol=2e-5, atol=2e-6)
    assert updates["experts"][name].sharding.is_equivalent_to(sharding, 3)
  return text


def test_an_expert_stack_is_orthogonalized_where_its_experts_already_are():
  """Experts (8, 64, 128) split over ``expert`` of a (data 2, expert 4) mesh:
  each expert's Newton-Schulz runs on a device that holds it, so the compiled
  step moves nothing to the owners (no collective-permute, no all-to-all);
  only the results are gathered over ``data``, where the parameters are
  replicated. The update equals the one-device update."""
  text = _muon_on_experts({"experts_in": (8, 64, 128)})
  assert "collective-permute" not in text and "all-to-all" not in text


def test_a_swiglu_expert_group_is_orthogonalized_where_its_experts_already_are():
  """A SwiGLU MoE: ``gate`` and ``up`` (8, 64, 128) share one stack, ``down``
  (8, 128, 64) has its own, all split over ``expert`` of a (data 2, expert 4)
  mesh. The shared stack interleaves its members expert by expert
  (``block_stacks.interleaved``), so each device owns gate and up matrices of
  experts it holds: the compiled step moves nothing to the owners, and the
  update equals the one-device update."""
  text = _muon_on_experts({"gate": (8, 64, 128), "up": (8, 64, 128), "down": (8, 128, 64)})
  assert "collective-permute" not in text and "all-to-all" not in text


def test_fewer_experts_than_devices_are_orthogonalized_where_they_are():
  """Four experts (4, 32, 16) over ``expert`` of a (data 2, expert 4) mesh:
  the stack is padded from 4 to 8 blocks within each expert's part
  (``block_stacks.padded_per_shard``), so no expert moves either."""
  text = _muon_on_experts({"down": (4, 32, 16)})
  assert "collective-permute" not in text and "all-to-all" not in text


def test_tensor_parallel_kernels_are_not_gathered_whole_on_their_way_to_the_owners():
  """Kernels split over rows and columns, ``P('fsdp', 'tensor')`` on a
  (data 2, fsdp 2, tensor 2) Explicit mesh: on the way to and from the owners
  each passes through a split of its rows over every axis
  (``block_stacks.rows_over_mesh``), so no device gathers a whole kernel
  (XLA's partitioner, asked for the owners' layout directly, gathered every
  kernel whole on every device); the update equals the one-device update."""
  rng = np.random.default_rng(0)
  shapes = {"a": (64, 32), "b": (64, 32), "c": (32, 64)}
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
  mesh = make_mesh(shape=(2, 2, 2), names=("data", "fsdp", "tensor"))
  sharding = NamedSharding(mesh, P("fsdp", "tensor"))
  for tx in (go.muon(0.02), go.soap(1e-3, precondition_every=1)):
    expected, _ = tx.update(grads, tx.init(params), params)
    with jax.set_mesh(mesh):
      p, g = jax.device_put(params, sharding), jax.device_put(grads, sharding)
      state = jax.jit(tx.init)(p)
      step = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p))
      updates, _ = step(g, state, p)
      text = step.lower(g, state, p).compile().as_text()
    for name in shapes:
      np.testing.assert_allclose(updates[name], expected[name], rtol=2e-5, atol=2e-6)
      assert updates[name].sharding.is_equivalent_to(sharding, 2)
    gathered = [math.prod(map(int, dims.split(",")))
                for dims in re.findall(r"= f32\[([\d,]+)\][^ ]* all-gather", text)]
    assert gathered and max(gathered) < 64 * 32, gathered  # was 4 x 64 x 32


@pytest.mark.parametrize("name", ["psgd_kron", "adamw"])
def test_a_step_from_state_shardings_is_compiled_once(name):
  """State placed by ``gt.state_shardings`` comes back from a jitted step with
  the sharding it went in with, so the second step hits jit's cache. PSGD
  Kron's replicated key was typed P() and came back P(None,): a second
  compile."""
  tx = getattr(go, name)(LR)
  mesh = make_mesh(shape=(8,), names=("d",))
  specs = {"w": P("d", None), "b": P("d"), "c": P("d")}
  params = {"w": jnp.ones((16, 4)), "b": jnp.ones((8,)), "c": jnp.ones((16,))}
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
    state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params))(params)

    @jax.jit
    def step(params, state):
      updates, state = tx.update(jax.tree.map(lambda p: 0.1 * p, params), state, params)
      return optax.apply_updates(params, updates), state

    _, new_state = step(params, state)
  # jit's compile cache compares shardings by equality, not equivalence.
  for (path, before), after in zip(jax.tree_util.tree_leaves_with_path(state),
                                   jax.tree.leaves(new_state)):
    assert after.sharding == before.sharding, (jax.tree_util.keystr(path), before.sharding.spec,
                                               after.sharding.spec)


def test_adam_mini_eager_init_lays_nu_out_as_its_traced_init_does():
  """``tx.init`` run eagerly on Explicit-typed arrays (with or without
  ``jax.set_mesh``) or on sharded ``jax.ShapeDtypeStruct``s gives the bias's
  per-element ``nu`` the bias's layout, as ``jax.eval_shape(tx.init)`` does
  (eagerly, outside a mesh context, it used to fail)."""
  tx = go.adam_mini(LR)
  mesh = make_mesh(shape=(8,), names=("d",))
  params = {"bias": jax.device_put(jnp.ones(16), NamedSharding(mesh, P("d")))}
  abstract = {"bias": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=params["bias"].sharding)}
  expected = P("d")
  assert tx.init(params)[0].nu["bias"].sharding.spec == expected
  with jax.set_mesh(mesh):
    assert tx.init(params)[0].nu["bias"].sharding.spec == expected
    assert tx.init(abstract)[0].nu["bias"].sharding.spec == expected
    assert jax.eval_shape(tx.init, abstract)[0].nu["bias"].sharding.spec == expected


def test_psgd_kron_steps_same_length_vectors_as_one_stack_where_they_live():
  """On an Explicit mesh PSGD Kron steps biases of one length and layout as
  one vmapped stack (compile time): the numbers are one device's, and every
  bias, its diagonal factor and its momentum keep the bias's layout."""
  mesh = make_mesh(jax.sharding.AxisType.Explicit)
  rng = np.random.default_rng(0)
  params = {f"l{i}": {"w": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32),
                      "b": jnp.asarray(rng.standard_normal(8), jnp.float32),
                      "c": jnp.asarray(rng.standard_normal(4), jnp.float32)} for i in range(3)}
  grads = [jax.tree.map(lambda x, k=k: jnp.cos((k + 1) * x), params) for k in range(3)]
  tx = go.psgd_kron(1e-2, precond_update_probability=1.0)
  ref_params, _, _ = run_steps(tx, params, grads)
  specs = lambda t: jax.tree.map(
      lambda x: P("x", "y") if x.ndim == 2 else (P("x") if x.shape[0] == 8 else P()), t)
  put = lambda t: jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs(t))
  with jax.set_mesh(mesh):
    placed, state = put(params), jax.jit(tx.init)(put(params))
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    for g in grads:
      placed, state = step(placed, state, put(g))
  chex.assert_trees_all_close(placed, ref_params, rtol=1e-5, atol=1e-6)
  for i in range(3):
    assert placed[f"l{i}"]["b"].sharding.spec == P("x")
    assert state[0].factors[f"l{i}"]["b"][0].sharding.spec == P("x")
    assert state[0].mu[f"l{i}"]["b"].sharding.spec == P("x")
