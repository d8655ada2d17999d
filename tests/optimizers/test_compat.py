"""Integration and robustness checks run over every optimizer in gradtx.optimizers.

Each optimizer (and the variants whose state or code path differs) is one entry
of ``CASES``; every check below is parametrized over that one list, so a new
optimizer gets the whole battery by adding a line. What is checked:

* jit: one trace for three steps, with a constant or a scheduled learning rate;
* ``optax.inject_hyperparams``: hyper-parameters changed at run time act like
  the same values given to the factory;
* ``optax.chain`` / ``multi_transform`` / ``MultiSteps`` / ``apply_if_finite``;
* ``flax.nnx.Optimizer`` inside ``nnx.jit``;
* dtypes (bf16 stays bf16, float64 under x64), pytrees with ``None`` and
  ``optax.MaskedNode`` leaves, ``jax.vmap``, and sharded params and states;
* non-finite and zero gradients;
* argument validation at factory-call time.

Non-finite gradients, documented behaviour: a NaN gradient coordinate gives a
NaN update coordinate (and NaN moments) for every optimizer: nothing is masked
silently, AMSGrad's running maximum included. Skipping bad steps is opt-in,
through ``optax.apply_if_finite``, which leaves the inner state untouched.
"""

import functools
import inspect
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go

LR = 0.1


def _decay_matrices(params):
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


class Case(NamedTuple):
  """One optimizer configuration: ``factory(learning_rate, **kwargs)``."""

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict
  static_args: tuple = ()  # non-numeric arguments for inject_hyperparams

  def make(self, learning_rate: Any = LR, **overrides):
    return self.factory(learning_rate, **{**self.kwargs, **overrides})

  def inject(self, learning_rate: Any = LR):
    factory = optax.inject_hyperparams(
        self.factory, static_args=self.static_args
    )
    return factory(learning_rate=learning_rate, **self.kwargs)

  @property
  def decays_weights(self) -> bool:
    params = inspect.signature(self.factory).parameters
    if "weight_decay" not in params:
      return False
    return self.kwargs.get("weight_decay", params["weight_decay"].default) != 0

  @property
  def sign_based(self) -> bool:
    return self.factory in (go.signsgd, go.lion, go.tiger)

  @property
  def elementwise(self) -> bool:
    """Whether each update coordinate depends on its own gradient only."""
    return self.factory not in (
        go.muon, go.shampoo, go.soap, go.adafactor, go.adam_mini, go.adamw_8bit
    )

  @property
  def state_dtypes(self) -> set:
    """Storage dtypes fixed by the configuration rather than the params."""
    return {
        jnp.dtype(self.kwargs[k])
        for k in ("mu_dtype", "nu_dtype")
        if self.kwargs.get(k) is not None
    }


CASES = [
    Case("sgd", go.sgd, {}),
    Case("sgd_momentum", go.sgd, dict(momentum=0.9)),
    Case(
        "sgd_nesterov_wd",
        go.sgd,
        dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    ),
    Case("adagrad", go.adagrad, {}),
    Case("rmsprop", go.rmsprop, {}),
    Case(
        "rmsprop_centered_momentum",
        go.rmsprop,
        dict(centered=True, momentum=0.9),
    ),
    Case("adam", go.adam, {}),
    Case("adam_amsgrad", go.adam, dict(amsgrad=True)),
    Case("adamw", go.adamw, {}),
    Case("adamw_amsgrad", go.adamw, dict(amsgrad=True)),
    Case(
        "adamw_mask",
        go.adamw,
        dict(mask=_decay_matrices, weight_decay=0.1),
        static_args=("mask",),
    ),
    Case(
        "adamw_bf16_nu",
        go.adamw,
        dict(nu_dtype=jnp.bfloat16),
        static_args=("nu_dtype",),
    ),
    Case("adabelief", go.adabelief, dict(weight_decay=1e-2)),
    Case("signsgd", go.signsgd, {}),
    Case("signsgd_momentum", go.signsgd, dict(momentum=0.9)),
    Case("lion", go.lion, dict(weight_decay=1e-2)),
    Case("tiger", go.tiger, dict(weight_decay=1e-2)),
    Case(
        "muon",
        go.muon,
        dict(weight_decay=1e-2),
        static_args=("ns_steps", "is_muon_param"),
    ),
    Case(
        "shampoo",
        go.shampoo,
        dict(precondition_every=2, weight_decay=1e-2),
        static_args=("precondition_every", "block_size", "max_precondition_dim"),
    ),
    Case(
        "soap",
        go.soap,
        dict(precondition_every=2),
        static_args=("precondition_every", "max_precondition_dim"),
    ),
    Case(
        "adafactor",
        go.adafactor,
        dict(min_dim_size_to_factor=2, momentum=0.9, weight_decay=1e-2),
        static_args=("min_dim_size_to_factor", "decay_offset"),
    ),
    Case("adam_mini", go.adam_mini, dict(weight_decay=1e-2)),
    Case("adamw_8bit", go.adamw_8bit, {}, static_args=("block_size",)),
]

CASES_BY_NAME = {c.name: c for c in CASES}
cases = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])

_RNG = np.random.default_rng(0)
PARAMS = {
    "w": jnp.asarray(_RNG.normal(size=(3, 2)), jnp.float32),
    "b": jnp.asarray(_RNG.normal(size=(2,)), jnp.float32),
}
GRADS = [
    jax.tree.map(lambda p: jnp.asarray(_RNG.normal(size=p.shape), p.dtype), PARAMS)
    for _ in range(6)
]


def _steps(tx, params, grads_seq, state=None):
  """Eager reference loop; returns (params, state, list of updates)."""
  state = tx.init(params) if state is None else state
  updates_seq = []
  for grads in grads_seq:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    updates_seq.append(updates)
  return params, state, updates_seq


def _floating_leaves(tree):
  return [
      x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  ]


def _bit_identical(a, b) -> bool:
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
      np.asarray(x).dtype == np.asarray(y).dtype
      and np.asarray(x).tobytes() == np.asarray(y).tobytes()
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _is_optimizer(name):
  parameters = list(inspect.signature(getattr(go, name)).parameters)
  return parameters[:1] == ["learning_rate"]


OPTIMIZERS = sorted(filter(_is_optimizer, go.__all__))


def test_cases_cover_every_optimizer():
  covered = {c.factory.__name__ for c in CASES}
  assert covered == set(OPTIMIZERS), set(OPTIMIZERS) ^ covered


# --- jit --------------------------------------------------------------------


@cases
@pytest.mark.parametrize("scheduled", [False, True], ids=["const_lr", "sched_lr"])
def test_one_trace_for_three_jitted_steps(case, scheduled):
  lr = optax.linear_schedule(LR, LR / 10, transition_steps=4) if scheduled else LR
  tx = case.make(lr)
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(None)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for grads in GRADS[:3]:
    params, state = step(params, state, grads)
  assert len(traces) == 1
  assert step._cache_size() == 1

  eager_params, eager_state, _ = _steps(tx, PARAMS, GRADS[:3])
  chex.assert_trees_all_close(params, eager_params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal_structs(state, eager_state)


# --- inject_hyperparams -----------------------------------------------------


@functools.cache
def _injected(name):
  """The inject_hyperparams form of a case and its jitted update, shared."""
  tx = CASES_BY_NAME[name].inject(LR)
  return tx, jax.jit(tx.update)


@cases
def test_inject_hyperparams_learning_rate(case):
  tx, update = _injected(case.name)
  state = tx.init(PARAMS)
  assert set(state.hyperparams) >= {"learning_rate"}
  u_base, s_base = update(GRADS[0], state, PARAMS)
  reference, _ = case.make(LR).update(GRADS[0], case.make(LR).init(PARAMS), PARAMS)
  # Injected hyper-parameters are float32 arrays, so 1 - b is rounded
  # differently from the Python-float arithmetic of the static factory.
  chex.assert_trees_all_close(u_base, reference, rtol=1e-4, atol=1e-6)

  for factor in (2.0, 0.0):
    state = tx.init(PARAMS)
    state.hyperparams["learning_rate"] = jnp.asarray(LR * factor, jnp.float32)
    u, s = update(GRADS[0], state, PARAMS)
    expected = jax.tree.map(lambda x: factor * x, u_base)
    chex.assert_trees_all_close(u, expected, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(s.inner_state, s_base.inner_state)
    assert float(s.hyperparams["learning_rate"]) == pytest.approx(LR * factor)
  assert update._cache_size() == 1


_NEW_VALUES = {"b1": 0.5, "weight_decay": 0.25, "momentum": 0.5, "beta": 0.5}


@cases
def test_inject_hyperparams_other_than_learning_rate(case):
  tx, update = _injected(case.name)
  names = sorted(set(_NEW_VALUES) & set(tx.init(PARAMS).hyperparams))
  assert names, "every optimizer has a decay or weight decay to inject"

  def run(state):
    params, updates_seq = PARAMS, []
    for grads in GRADS[:2]:
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
      updates_seq.append(updates)
    return updates_seq

  baseline = run(tx.init(PARAMS))
  for name in names:
    state = tx.init(PARAMS)
    state.hyperparams[name] = jnp.asarray(_NEW_VALUES[name], jnp.float32)
    injected = run(state)
    _, _, static = _steps(case.make(**{name: _NEW_VALUES[name]}), PARAMS, GRADS[:2])
    chex.assert_trees_all_close(injected, static, rtol=1e-5, atol=1e-6)
    # A sign is insensitive to a decay's exact value; decay is always visible.
    if name == "weight_decay" or not case.sign_based:
      with pytest.raises(AssertionError):
        chex.assert_trees_all_close(injected, baseline, rtol=1e-5, atol=1e-6)
  assert update._cache_size() == 1


@cases
def test_factory_accepts_traced_hyperparameters(case):
  numeric = {
      k: v.default
      for k, v in inspect.signature(case.factory).parameters.items()
      if isinstance(v.default, float) and k not in case.kwargs
  }
  numeric.update(
      {k: v for k, v in case.kwargs.items() if isinstance(v, float)},
      learning_rate=LR,
  )

  def first_update(hyperparams):
    lr = hyperparams.pop("learning_rate")
    tx = case.make(lr, **hyperparams)
    return tx.update(GRADS[0], tx.init(PARAMS), PARAMS)[0]

  # Tracing is enough: validation must let tracers through (values are
  # checked by the inject_hyperparams tests, which run traced values).
  traced = {k: jnp.asarray(v, jnp.float32) for k, v in numeric.items()}
  out = jax.eval_shape(first_update, traced)
  chex.assert_trees_all_equal_shapes_and_dtypes(out, GRADS[0])


# --- composition with optax wrappers ----------------------------------------


@cases
def test_chain_after_clip_by_global_norm(case):
  max_norm = 0.5
  chained = optax.chain(optax.clip_by_global_norm(max_norm), case.make())
  norm = optax.global_norm(GRADS[0])
  assert norm > max_norm
  clipped = jax.tree.map(lambda g: g * (max_norm / norm), GRADS[0])

  u_chain, state = chained.update(GRADS[0], chained.init(PARAMS), PARAMS)
  u_ref, ref_state = case.make().update(clipped, case.make().init(PARAMS), PARAMS)
  chex.assert_trees_all_close(u_chain, u_ref, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(state[1], ref_state, rtol=1e-5, atol=1e-7)


@cases
def test_multi_transform_with_frozen_subtree(case):
  tx = optax.multi_transform(
      {"train": case.make(), "freeze": optax.set_to_zero()},
      {"w": "train", "b": "freeze"},
  )
  params, _, updates_seq = _steps(tx, PARAMS, GRADS[:2])
  only_w, _, ref_seq = _steps(case.make(), {"w": PARAMS["w"]}, [{"w": g["w"]} for g in GRADS[:2]])
  chex.assert_trees_all_close(params["w"], only_w["w"], rtol=1e-6)
  chex.assert_trees_all_equal(params["b"], PARAMS["b"])
  for updates, ref in zip(updates_seq, ref_seq):
    chex.assert_trees_all_close(updates["w"], ref["w"], rtol=1e-6, atol=1e-7)


@cases
def test_multisteps_applies_average_gradient_every_third_step(case):
  k = 3
  tx = optax.MultiSteps(case.make(), every_k_schedule=k)
  update = jax.jit(tx.update)
  params, state = PARAMS, tx.init(PARAMS)
  applied = []
  for i, grads in enumerate(GRADS[: 2 * k]):
    updates, state = update(grads, state, params)
    if (i + 1) % k:
      chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
    params = optax.apply_updates(params, updates)
    applied.append(params)

  means = [
      jax.tree.map(lambda *g: sum(g) / k, *GRADS[j : j + k])
      for j in range(0, 2 * k, k)
  ]
  ref_params, ref_state, _ = _steps(case.make(), PARAMS, means)
  chex.assert_trees_all_close(applied[k - 2], PARAMS)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state.inner_opt_state, ref_state, rtol=1e-5, atol=1e-6)
  assert update._cache_size() == 1


# --- flax.nnx ---------------------------------------------------------------


class _MLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(3, 8, rngs=rngs)
    self.out = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


_X = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32)
_Y = jnp.sin(_X @ jnp.array([[1.0], [-2.0], [0.5]]))


@cases
def test_flax_nnx_optimizer_reduces_loss(case):
  model = _MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, case.make(0.02), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    def loss_fn(model):
      return jnp.mean((model(_X) - _Y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(15)]
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses


# --- dtypes -----------------------------------------------------------------


@cases
def test_bfloat16_params_stay_bfloat16(case):
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  grads = [jax.tree.map(lambda g: g.astype(jnp.bfloat16), g) for g in GRADS[:2]]
  tx = case.make()
  new_params, state, updates_seq = _steps(tx, params, grads)

  for tree in (new_params, *updates_seq):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in _floating_leaves(tx.init(params))} <= {
      jnp.dtype(jnp.bfloat16)
  }
  assert {x.dtype for x in _floating_leaves(state)} <= {jnp.dtype(jnp.bfloat16)}
  # Arithmetic runs in float32: the first update is the float32 one, rounded.
  f32_params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  f32_grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads[0])
  f32_update, _ = tx.update(f32_grads, tx.init(f32_params), f32_params)
  chex.assert_trees_all_close(
      jax.tree.map(lambda u: u.astype(jnp.float32), updates_seq[0]),
      f32_update,
      rtol=1e-2,
      atol=1e-3,
  )


@cases
def test_float64_under_x64(case):
  with jax.enable_x64(True):
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), PARAMS)
    grads = [jax.tree.map(lambda g: jnp.asarray(g, jnp.float64), g) for g in GRADS[:2]]
    tx = case.make()
    new_params, state, updates_seq = _steps(tx, params, grads)
    float64 = jnp.dtype(jnp.float64)
    for tree in (new_params, *updates_seq):
      assert {x.dtype for x in jax.tree.leaves(tree)} == {float64}
    state_dtypes = {x.dtype for x in _floating_leaves(state)}
    assert state_dtypes <= {float64} | case.state_dtypes
    if _floating_leaves(state):
      assert float64 in state_dtypes
    f32_params, _, _ = _steps(tx, PARAMS, GRADS[:2])
  chex.assert_trees_all_close(
      jax.tree.map(lambda p: p.astype(jnp.float32), new_params),
      f32_params,
      rtol=1e-4,
      atol=1e-5,
  )


# --- pytrees ----------------------------------------------------------------


@cases
def test_none_and_masked_node_leaves(case):
  def with_holes(tree):
    return {**tree, "frozen": None, "masked": optax.MaskedNode()}

  tx = case.make()
  params = with_holes(PARAMS)
  new_params, state, updates_seq = _steps(tx, params, [with_holes(g) for g in GRADS[:2]])
  for updates in updates_seq:
    assert updates["frozen"] is None
    assert updates["masked"] == optax.MaskedNode()
  assert new_params["frozen"] is None
  ref_params, ref_state, _ = _steps(tx, PARAMS, GRADS[:2])
  chex.assert_trees_all_close(
      {k: new_params[k] for k in PARAMS}, ref_params, rtol=1e-6
  )
  chex.assert_trees_all_close(jax.tree.leaves(state), jax.tree.leaves(ref_state))


@cases
def test_vmap_over_independent_problems(case):
  batch = 3
  offsets = jnp.arange(batch, dtype=jnp.float32)
  params_b = jax.tree.map(lambda p: p[None] + offsets.reshape(-1, *[1] * p.ndim), PARAMS)
  grads_b = [
      jax.tree.map(lambda g: g[None] * (1 + offsets.reshape(-1, *[1] * g.ndim)), g)
      for g in GRADS[:2]
  ]
  tx = case.make()
  state = jax.vmap(tx.init)(params_b)
  params = params_b
  for grads in grads_b:
    updates, state = jax.vmap(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)

  for i in range(batch):
    take = lambda t: jax.tree.map(lambda x: x[i], t)
    ref_params, ref_state, _ = _steps(tx, take(params_b), [take(g) for g in grads_b])
    chex.assert_trees_all_close(take(params), ref_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(take(state), ref_state, rtol=1e-5, atol=1e-6)


# --- sharding ---------------------------------------------------------------


def _mesh(axis_type):
  assert len(jax.devices()) >= 8, "tests/conftest.py asks for 8 host devices"
  return jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type,) * 2)


# Every optimizer on an Explicit-axes mesh (jax.make_mesh's default); a few,
# one per state layout, on an Auto one, to keep the compile count down.
_AUTO_MESH_CASES = ("sgd_momentum", "rmsprop_centered_momentum", "adamw_amsgrad", "adamw_mask", "lion", "muon")
_MESH_PARAMS = [
    pytest.param(c, jax.sharding.AxisType.Explicit, id=f"explicit-{c.name}")
    for c in CASES
] + [
    pytest.param(c, jax.sharding.AxisType.Auto, id=f"auto-{c.name}")
    for c in CASES
    if c.name in _AUTO_MESH_CASES
]


_SPECS = {"w": P("x", "y"), "b": P("x"), "c": P()}
_SHARD_PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 32, dtype=jnp.float32).reshape(8, 4),
    "b": jnp.linspace(0.5, 1.5, 8, dtype=jnp.float32),
    "c": jnp.array([0.3, -0.7], jnp.float32),
}
_SHARD_GRADS = jax.tree.map(lambda p: jnp.cos(3 * p) + 0.1, _SHARD_PARAMS)


@pytest.mark.parametrize("case,axis_type", _MESH_PARAMS)
def test_sharded_params_keep_their_sharding(case, axis_type):
  mesh = _mesh(axis_type)
  tx = case.make()
  param_shardings = {k: NamedSharding(mesh, s) for k, s in _SPECS.items()}
  params = jax.device_put(_SHARD_PARAMS, param_shardings)
  grads = jax.device_put(_SHARD_GRADS, param_shardings)
  replicated = NamedSharding(mesh, P())

  abstract_state = jax.eval_shape(tx.init, params)
  # The usual recipe; the is_leaf / MaskedNode clause is needed only where a
  # state holds a masked copy of the params (multi_transform, as in Muon).
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  state_shardings = optax.tree_map_params(
      tx,
      lambda p, s: p if is_masked(p) else s,
      abstract_state,
      param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=is_masked,
  )
  by_shape = {_SHARD_PARAMS[k].shape: param_shardings[k] for k in _SPECS}

  def check(tree, what):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      expected = by_shape.get(leaf.shape, replicated)
      assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (
          what, jax.tree_util.keystr(path), leaf.sharding, expected)

  # tree_map_params finds every params-shaped leaf and gives it the param's.
  flat_shardings = jax.tree.leaves(state_shardings)
  flat_abstract = jax.tree.leaves(abstract_state)
  assert len(flat_shardings) == len(flat_abstract)
  for leaf, sharding in zip(flat_abstract, flat_shardings):
    assert sharding == by_shape.get(leaf.shape, replicated), (leaf, sharding)

  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  check(state, "init")

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  new_params, new_state, updates = step(params, state, grads)
  check(new_params, "params")
  check(updates, "updates")
  check(new_state, "state")

  ref_params, ref_state, _ = _steps(tx, _SHARD_PARAMS, [_SHARD_GRADS])
  chex.assert_trees_all_close(new_params, ref_params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new_state, ref_state, rtol=1e-5, atol=1e-6)


# --- non-finite and zero gradients ------------------------------------------


def _with_nan(grads):
  return {**grads, "w": grads["w"].at[1, 0].set(jnp.nan)}


@cases
def test_nan_gradient_propagates_into_updates(case):
  tx = case.make()
  state = tx.init(PARAMS)
  _, state = tx.update(GRADS[0], state, PARAMS)
  updates, state = tx.update(_with_nan(GRADS[1]), state, PARAMS)
  assert bool(jnp.isnan(updates["w"][1, 0]))
  # Element-wise rules poison only that coordinate; matrix and block rules
  # (orthogonalization, preconditioners, shared scales) may spread it within
  # the leaf. Other leaves are untouched.
  if case.elementwise:
    assert int(jnp.isnan(updates["w"]).sum()) == 1
  assert bool(jnp.all(jnp.isfinite(updates["b"])))
  # Stateful optimizers remember it: later updates stay NaN there.
  if _floating_leaves(state):
    assert any(bool(jnp.isnan(x).any()) for x in _floating_leaves(state))
    updates, _ = tx.update(GRADS[2], state, PARAMS)
    assert bool(jnp.isnan(updates["w"][1, 0]))


@pytest.mark.parametrize(
    "factory", [go.adam, go.adamw], ids=["adam", "adamw"]
)
def test_amsgrad_maximum_does_not_swallow_nan(factory):
  tx = factory(LR, amsgrad=True)
  big = jax.tree.map(lambda g: 100 * g, GRADS[0])
  _, state = tx.update(big, tx.init(PARAMS), PARAMS)
  _, state = tx.update(_with_nan(GRADS[1]), state, PARAMS)
  adam_state = state[0] if factory is go.adamw else state[1]
  assert bool(jnp.isnan(adam_state.nu_max["w"][1, 0]))
  updates, state = tx.update(GRADS[2], state, PARAMS)
  assert bool(jnp.isnan(updates["w"][1, 0]))


@cases
def test_apply_if_finite_skips_step_and_keeps_state(case):
  max_errors = 2
  tx = optax.apply_if_finite(case.make(), max_consecutive_errors=max_errors)
  update = jax.jit(tx.update)
  updates, state = update(GRADS[0], tx.init(PARAMS), PARAMS)
  before = state.inner_state

  for i in range(max_errors):
    updates, state = update(_with_nan(GRADS[1]), state, PARAMS)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
    assert _bit_identical(state.inner_state, before)
    assert int(state.notfinite_count) == i + 1

  # A finite step afterwards goes through and equals the step never skipped.
  _, ref_state, ref_updates = _steps(case.make(), PARAMS, GRADS[:1])
  ref_u, _ = case.make().update(GRADS[2], ref_state, PARAMS)
  updates, state = update(GRADS[2], state, PARAMS)
  chex.assert_trees_all_close(updates, ref_u, rtol=1e-6, atol=1e-7)
  assert int(state.notfinite_count) == 0

  # More than max_consecutive_errors in a row: the NaN is let through, loudly.
  for _ in range(max_errors + 1):
    updates, state = update(_with_nan(GRADS[3]), state, PARAMS)
  assert bool(jnp.isnan(updates["w"][1, 0]))
  assert update._cache_size() == 1


@cases
def test_zero_gradients_give_finite_updates(case):
  tx = case.make()
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)

  fresh, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
  if case.decays_weights:
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(fresh))
    assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(fresh))
  else:
    chex.assert_trees_all_equal(fresh, zeros)

  @jax.jit
  def many_zero_steps(params, state):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(zeros, state, params)
      return (optax.apply_updates(params, updates), state), updates

    (params, state), updates = jax.lax.scan(
        body, (params, state), None, length=2000
    )
    return params, state, updates

  # One real step, then many zero ones: moments decay towards 0 (and
  # underflow) without producing 0/0.
  params, state, _ = _steps(tx, PARAMS, GRADS[:1])
  for tree in many_zero_steps(params, state):
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in _floating_leaves(tree))


# --- argument validation ----------------------------------------------------

_DECAY_ARGS = {
    go.sgd: ("momentum", "dampening"),
    go.adagrad: (),
    go.rmsprop: ("decay", "momentum"),
    go.adam: ("b1", "b2"),
    go.adamw: ("b1", "b2"),
    go.adabelief: ("b1", "b2"),
    go.signsgd: ("momentum",),
    go.lion: ("b1", "b2"),
    go.tiger: ("beta",),
    go.muon: ("beta", "adam_b1", "adam_b2"),
}
_NON_NEGATIVE_ARGS = {
    go.sgd: ("weight_decay",),
    go.adagrad: ("eps", "weight_decay", "initial_accumulator_value"),
    go.rmsprop: ("eps", "weight_decay"),
    go.adam: ("eps", "weight_decay", "eps_root"),
    go.adamw: ("eps", "weight_decay", "eps_root"),
    go.adabelief: ("eps", "weight_decay"),
    go.signsgd: (),
    go.lion: ("weight_decay",),
    go.tiger: ("weight_decay",),
    go.muon: ("weight_decay", "eps", "adam_eps", "adam_weight_decay"),
}
_COUNT_ARGS = {f: () for f in _DECAY_ARGS} | {go.muon: ("ns_steps",)}
_SCHEDULABLE_ARGS = {
    f: ("learning_rate",)
    + (("weight_decay",) if "weight_decay" in inspect.signature(f).parameters else ())
    for f in _DECAY_ARGS
}


def _factory_ids(table):
  return [
      (f, a) for f, args in table.items() for a in args
  ]


def test_validation_tables_cover_every_optimizer():
  for table in (_DECAY_ARGS, _NON_NEGATIVE_ARGS):
    assert {f.__name__ for f in table} == set(OPTIMIZERS)
  for f in _DECAY_ARGS:
    numeric = {
        k for k, v in inspect.signature(f).parameters.items()
        if isinstance(v.default, (int, float)) and not isinstance(v.default, bool)
    }
    ranged = set(_DECAY_ARGS[f]) | set(_NON_NEGATIVE_ARGS[f]) | set(_COUNT_ARGS[f])
    assert numeric <= ranged, (
        f.__name__, numeric)


def _call(factory, name, value):
  if name == "learning_rate":
    return factory(value)
  return factory(LR, **{name: value})


@pytest.mark.parametrize(
    "factory,name", _factory_ids(_DECAY_ARGS),
    ids=[f"{f.__name__}-{a}" for f, a in _factory_ids(_DECAY_ARGS)],
)
@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_decay_outside_unit_interval_is_rejected(factory, name, value):
  with pytest.raises(ValueError) as error:
    _call(factory, name, value)
  message = str(error.value)
  assert name in message and "[0, 1)" in message, message


@pytest.mark.parametrize(
    "factory,name", _factory_ids(_NON_NEGATIVE_ARGS) + [(f, "learning_rate") for f in _DECAY_ARGS],
    ids=[f"{f.__name__}-{a}" for f, a in _factory_ids(_NON_NEGATIVE_ARGS)]
    + [f"{f.__name__}-learning_rate" for f in _DECAY_ARGS],
)
@pytest.mark.parametrize("value", [-1e-3, float("nan")])
def test_negative_value_is_rejected(factory, name, value):
  with pytest.raises(ValueError) as error:
    _call(factory, name, value)
  message = str(error.value)
  assert name in message and ("[0, inf]" in message or "non-negative" in message), message


@pytest.mark.parametrize(
    "factory,name", _factory_ids(_SCHEDULABLE_ARGS),
    ids=[f"{f.__name__}-{a}" for f, a in _factory_ids(_SCHEDULABLE_ARGS)],
)
@pytest.mark.parametrize("value", ["0.1", None, [0.1]], ids=["str", "none", "list"])
def test_non_number_non_schedule_is_rejected(factory, name, value):
  with pytest.raises(ValueError) as error:
    _call(factory, name, value)
  message = str(error.value)
  assert name in message and "schedule" in message, message


@pytest.mark.parametrize(
    "factory,name", _factory_ids(_COUNT_ARGS),
    ids=[f"{f.__name__}-{a}" for f, a in _factory_ids(_COUNT_ARGS)],
)
@pytest.mark.parametrize("value", [0, -1])
def test_count_below_one_is_rejected(factory, name, value):
  with pytest.raises(ValueError, match=name):
    _call(factory, name, value)


@pytest.mark.parametrize("factory", list(_DECAY_ARGS), ids=lambda f: f.__name__)
def test_non_number_hyperparameter_is_rejected_at_factory_time(factory):
  """A string where a number belongs must not wait for the first update.

  (Some are even accepted for good: ``jnp.asarray("0.5", jnp.float32)``
  parses the string, so ``adam(b1="0.5")`` trains.)
  """
  accepted = []
  for name in _DECAY_ARGS[factory] + _NON_NEGATIVE_ARGS[factory]:
    try:
      _call(factory, name, "0.5")
    except ValueError as error:
      assert name in str(error), str(error)
    else:
      accepted.append(name)
  assert not accepted, f"{factory.__name__} accepted strings for {accepted}"


@pytest.mark.parametrize("factory", list(_DECAY_ARGS), ids=lambda f: f.__name__)
def test_valid_edge_values_are_accepted(factory):
  """0 is inside every range; schedules and arrays are accepted unchecked."""
  for name in _DECAY_ARGS[factory] + _NON_NEGATIVE_ARGS[factory]:
    _call(factory, name, 0.0)
    _call(factory, name, np.float32(0.5))
  factory(0.0)
  factory(optax.constant_schedule(LR))
  factory(jnp.asarray(LR))
