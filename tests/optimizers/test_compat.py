"""Integration and robustness checks run over every optimizer in gradtx.optimizers.

Each optimizer (and each variant whose state or code path differs) is one
entry of ``CASES``, built here and nowhere else. The element-wise optimizers
get the whole battery below; the structured ones (preconditioners, factored,
block-shared and quantized states: ``STRUCTURED``), whose programs take
several times longer to compile, get the checks most likely to break in them
(jit, inject_hyperparams, non-finite and zero gradients, state shardings).
Argument validation lives in ``test_compat_validation.py``. What is checked:

* jit: one trace for three steps, with a constant or a scheduled learning rate;
* ``optax.inject_hyperparams``: hyper-parameters changed at run time act like
  the same values given to the factory;
* ``optax.chain`` / ``multi_transform`` / ``MultiSteps`` / ``apply_if_finite``;
* ``flax.nnx.Optimizer`` inside ``nnx.jit``;
* dtypes (bf16 stays bf16, float64 under x64), pytrees with ``None`` and
  ``optax.MaskedNode`` leaves, ``jax.vmap``, and sharded params and states;
* non-finite and zero gradients.

Non-finite gradients, the contract: a NaN gradient coordinate gives a NaN
update coordinate (and NaN moments) for every optimizer: nothing is masked
silently, AMSGrad's running maximum included. Skipping bad steps is opt-in,
through ``optax.apply_if_finite``, which leaves the inner state untouched.
(``adamw_8bit`` zeroes such coordinates instead, as bitsandbytes does, and
says so in ``scale_by_adam``'s docstring; its test records the conflict.)
An infinite gradient is not checked: sign-based rules map it to ±1.
"""

import collections
import contextlib
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
from gradtx import transforms as gt

LR = 0.1


def _decay_matrices(params):
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


class Case(NamedTuple):
  """One optimizer configuration: ``factory(learning_rate, **kwargs)``."""

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict
  static_args: tuple = ()  # non-numeric arguments for inject_hyperparams
  # optax.adafactor's order: η is applied before the momentum and the weight
  # decay, so the state holds η-scaled steps and λ is not scaled by η.
  lr_mid_chain: bool = False
  # Storage dtypes the optimizer fixes whatever the params' (e.g. lookahead's
  # float32 slow weights of bf16 params).
  fixed_state_dtypes: tuple = ()

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
    dtypes = {
        jnp.dtype(self.kwargs[k])
        for k in ("mu_dtype", "nu_dtype")
        if self.kwargs.get(k) is not None
    }
    return dtypes | {jnp.dtype(d) for d in self.fixed_state_dtypes}


def lookahead_adamw(learning_rate, b1=0.9, weight_decay=1e-4):
  """``go.lookahead`` around ``go.adamw``: the wrapper through the battery."""
  return go.lookahead(
      go.adamw(learning_rate, b1=b1, weight_decay=weight_decay), sync_period=2)


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
    # LARS's learning rate sits inside its momentum, as in the paper.
    Case("lars", go.lars, dict(weight_decay=1e-2, nesterov=True, trust_coefficient=1.0),
         lr_mid_chain=True),
    Case("lars_mask", go.lars,
         dict(weight_decay=1e-2, mask=_decay_matrices, trust_coefficient=1.0),
         static_args=("mask",), lr_mid_chain=True),
    Case("lamb", go.lamb, dict(weight_decay=1e-2)),
    Case("lookahead", lookahead_adamw, dict(weight_decay=1e-2),
         fixed_state_dtypes=(jnp.float32,)),
    Case(
        "muon",
        go.muon,
        dict(weight_decay=1e-2),
        static_args=("ns_steps",),
    ),
]
# Structured states: a lighter battery (see the module docstring).
STRUCTURED = [
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
        dict(min_dim_size_to_factor=2, b1=0.9, weight_decay=1e-2),
        static_args=("min_dim_size_to_factor", "decay_offset"),
        lr_mid_chain=True,
    ),
    Case("adam_mini", go.adam_mini, dict(weight_decay=1e-2)),
    Case("adamw_8bit", go.adamw_8bit, {}, static_args=("block_size",)),
]

CASES_BY_NAME = {c.name: c for c in CASES + STRUCTURED}
cases = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
structured = pytest.mark.parametrize(
    "case", STRUCTURED, ids=[c.name for c in STRUCTURED]
)
every_case = pytest.mark.parametrize(
    "case", CASES + STRUCTURED, ids=[c.name for c in CASES + STRUCTURED]
)
SCHEDULE = optax.linear_schedule(LR, LR / 10, transition_steps=4)

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


def test_cases_cover_every_optimizer():
  optimizers = set(filter(_is_optimizer, go.__all__))
  covered = {c.factory.__name__ for c in CASES + STRUCTURED}
  assert covered == optimizers | {"lookahead_adamw"}, optimizers ^ covered


_TRACES = collections.Counter()


@functools.cache
def _shared_step(name, scheduled=False):
  """A case's jitted training step, compiled once for the whole module.

  Returns (tx, step) with ``step(params, state, grads) -> (params, state,
  updates)``; every trace is counted in ``_TRACES[name, scheduled]``.
  """
  tx = CASES_BY_NAME[name].make(SCHEDULE if scheduled else LR)

  @jax.jit
  def step(params, state, grads):
    _TRACES[name, scheduled] += 1
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  return tx, step


def _run(name, grads_seq, scheduled=False, state=None):
  """``_steps`` with the shared jitted step, from PARAMS."""
  tx, step = _shared_step(name, scheduled)
  params = PARAMS
  state = tx.init(params) if state is None else state
  updates_seq = []
  for grads in grads_seq:
    params, state, updates = step(params, state, grads)
    updates_seq.append(updates)
  return params, state, updates_seq


# --- jit --------------------------------------------------------------------


_TRACE_PARAMS = [
    pytest.param(c, scheduled, id=f"{c.name}-{'sched' if scheduled else 'const'}_lr")
    for c in CASES
    for scheduled in (False, True)
] + [pytest.param(c, True, id=f"{c.name}-sched_lr") for c in STRUCTURED]


@pytest.mark.parametrize("case,scheduled", _TRACE_PARAMS)
def test_one_trace_for_three_jitted_steps(case, scheduled):
  tx, step = _shared_step(case.name, scheduled)
  params, state, _ = _run(case.name, GRADS[:3], scheduled)
  assert _TRACES[case.name, scheduled] == 1
  assert step._cache_size() == 1
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(PARAMS))
  if case in CASES:  # eager is cheap for the element-wise rules: compare
    eager_params, _, _ = _steps(tx, PARAMS, GRADS[:3])
    chex.assert_trees_all_close(params, eager_params, rtol=1e-5, atol=1e-6)


# --- inject_hyperparams -----------------------------------------------------


@functools.cache
def _injected(name):
  """The inject_hyperparams form of a case and its jitted update, shared."""
  tx = CASES_BY_NAME[name].inject(LR)
  return tx, jax.jit(tx.update)


@every_case
def test_inject_hyperparams_learning_rate(case):
  tx, update = _injected(case.name)
  state = tx.init(PARAMS)
  assert set(state.hyperparams) >= {"learning_rate"}
  u_base, s_base = update(GRADS[0], state, PARAMS)
  # (The scheduled step's first learning rate is LR too.)
  _, _, (reference,) = _run(case.name, GRADS[:1], scheduled=case in STRUCTURED)
  # Injected hyper-parameters are float32 arrays, so 1 - b is rounded
  # differently from the Python-float arithmetic of the static factory.
  chex.assert_trees_all_close(u_base, reference, rtol=1e-4, atol=1e-6)

  updates = {}
  for factor in (0.0, 2.0):
    state = tx.init(PARAMS)
    state.hyperparams["learning_rate"] = jnp.asarray(LR * factor, jnp.float32)
    updates[factor], s = update(GRADS[0], state, PARAMS)
    assert float(s.hyperparams["learning_rate"]) == pytest.approx(LR * factor)
    if not case.lr_mid_chain:
      chex.assert_trees_all_close(s.inner_state, s_base.inner_state)
  # The update is affine in η: u(2η) - u(η) = u(η) - u(0) ...
  chex.assert_trees_all_close(
      jax.tree.map(jnp.subtract, updates[2.0], u_base),
      jax.tree.map(jnp.subtract, u_base, updates[0.0]),
      rtol=1e-5, atol=1e-7,
  )
  # ... and linear, u(0) = 0, unless a weight decay escapes the η scaling.
  if not (case.lr_mid_chain and case.decays_weights):
    chex.assert_trees_all_equal(updates[0.0], jax.tree.map(jnp.zeros_like, u_base))
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
  only_w, _, ref_seq = _steps(
      case.make(), {"w": PARAMS["w"]}, [{"w": g["w"]} for g in GRADS[:2]]
  )
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
  allowed = {jnp.dtype(jnp.bfloat16)} | case.state_dtypes
  assert {x.dtype for x in _floating_leaves(tx.init(params))} <= allowed
  assert {x.dtype for x in _floating_leaves(state)} <= allowed
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
  grads = [with_holes(g) for g in GRADS[:2]]
  new_params, state, updates_seq = _steps(tx, params, grads)
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
  expand = lambda x: offsets.reshape(-1, *[1] * x.ndim)
  params_b = jax.tree.map(lambda p: p[None] + expand(p), PARAMS)
  grads_b = [
      jax.tree.map(lambda g: g[None] * (1 + expand(g)), g)
      for g in GRADS[:2]
  ]
  tx = case.make()
  state = jax.vmap(tx.init)(params_b)
  params = params_b
  for grads in grads_b:
    updates, state = jax.vmap(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)

  for i in range(batch):
    take = lambda t, i=i: jax.tree.map(lambda x: x[i], t)
    ref_params, ref_state, _ = _steps(tx, take(params_b), [take(g) for g in grads_b])
    chex.assert_trees_all_close(take(params), ref_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(take(state), ref_state, rtol=1e-5, atol=1e-6)


# --- sharding ---------------------------------------------------------------


def _mesh(axis_type):
  assert len(jax.devices()) >= 8, "tests/conftest.py asks for 8 host devices"
  return jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type,) * 2)


# Every optimizer on an Explicit-axes mesh (jax.make_mesh's default); three
# state layouts (one buffer; Adam + MaskedState; multi_transform) on an Auto
# one, to keep the compile count down.
_AUTO_MESH_CASES = ("sgd_momentum", "adamw_mask", "muon")
_MESH_PARAMS = [
    pytest.param(c, jax.sharding.AxisType.Explicit, id=f"explicit-{c.name}")
    for c in CASES + STRUCTURED
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
_STACKS = ("left_stats", "right_stats", "left_root", "right_root", "left_basis",
           "right_basis", "mu_stacks", "nu_stacks")


def _expected_sharding(path, leaf, mesh):
  """The param's spec for a copy of a param (8-bit moments of small leaves
  included); the owner layout (split over every mesh axis along the stack
  axis) for stacks of matrix statistics; replicated for anything else
  (factored and per-block moments, counts), even where its shape happens to
  match another param."""
  if any(getattr(k, "name", None) in _STACKS for k in path):
    return NamedSharding(mesh, P(tuple(mesh.axis_names), *[None] * (leaf.ndim - 1)))
  keys = [getattr(k, "key", None) for k in path]
  for k, spec in _SPECS.items():
    if k in keys and leaf.shape == _SHARD_PARAMS[k].shape:
      return NamedSharding(mesh, spec)
  return NamedSharding(mesh, P())


def _check_shardings(tree, mesh, what):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    expected = _expected_sharding(path, leaf, mesh)
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (
        what, jax.tree_util.keystr(path), leaf.sharding, expected)


@pytest.mark.parametrize("case", STRUCTURED, ids=[c.name for c in STRUCTURED])
def test_state_shardings_follow_params(case):
  _placed_state(case.make(), _mesh(jax.sharding.AxisType.Explicit))


@pytest.mark.parametrize("case,axis_type", _MESH_PARAMS)
def test_sharded_params_keep_their_sharding(case, axis_type):
  mesh = _mesh(axis_type)
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

  ref_params, ref_state, _ = _steps(tx, _SHARD_PARAMS, [_SHARD_GRADS])
  chex.assert_trees_all_close(new_params, ref_params, rtol=1e-5, atol=1e-6)
  # Stacks are padded to a multiple of the mesh size: compare the real rows.
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
    a = np.asarray(a)
    if a.shape != np.shape(b):
      a = a[:np.shape(b)[0]]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES + STRUCTURED, ids=lambda c: c.name)
def test_jit_init_on_an_explicit_mesh_gives_the_helpers_layout(case):
  """Inside ``jax.set_mesh`` a plain ``jax.jit(tx.init)`` needs no
  ``out_shardings``: every state leaf is typed as ``gt.state_shardings``
  lays it out."""
  tx = case.make()
  mesh = _mesh(jax.sharding.AxisType.Explicit)
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

  mesh = _mesh(jax.sharding.AxisType.Explicit)
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
  row-sharded leaf by rows and replicates the others; the step keeps that
  layout (one compilation) and the update the param's."""
  mesh = _mesh(jax.sharding.AxisType.Explicit)
  shardings = {"w": NamedSharding(mesh, P("x", "y")),
               "b": NamedSharding(mesh, P("x"))}
  params = jax.device_put(
      {"w": jnp.linspace(-1, 1, 128 * 64).reshape(128, 64),
       "b": jnp.linspace(0, 1, 128)}, shardings)
  tx = go.adamw_8bit(1e-2)
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params))(params)
    assert isinstance(state[0].mu["w"], gt.QuantizedArray)
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
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert after.sharding.is_equivalent_to(before.sharding, after.ndim)


class _ShardedLinear(nnx.Module):
  """A Linear whose kernel is P('x', 'y') and bias P('y') (flax metadata)."""

  def __init__(self, rngs, sharded):
    shard = nnx.with_partitioning if sharded else lambda init, _: init
    self.lin = nnx.Linear(
        8, 4, rngs=rngs,
        kernel_init=shard(nnx.initializers.lecun_normal(), ("x", "y")),
        bias_init=shard(nnx.initializers.ones_init(), ("y",)),
    )

  def __call__(self, x):
    return self.lin(x)


def _nnx_train(make_tx, mesh=None):
  rows = jnp.linspace(-1.0, 1.0, 16 * 8, dtype=jnp.float32).reshape(16, 8)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    model = _ShardedLinear(nnx.Rngs(0), sharded=mesh is not None)
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
      loss_fn = lambda m: jnp.mean(jnp.sin(3 * m(rows)) ** 2)
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(train_step(model, optimizer)) for _ in range(3)]
    return model, losses


@pytest.mark.parametrize(
    "case", [CASES_BY_NAME[n] for n in ("adamw", "muon")] + STRUCTURED,
    ids=lambda c: c.name)
def test_flax_nnx_optimizer_with_sharded_params(case):
  """nnx.Optimizer copies each param's sharding metadata onto the state
  leaves built from it: statistics of another shape must not inherit it
  (optax.adafactor's factored moments do, and fail here)."""
  make = lambda: case.make(0.02)
  model, losses = _nnx_train(make, _mesh(jax.sharding.AxisType.Explicit))
  ref_model, ref_losses = _nnx_train(make)
  kernel = model.lin.kernel[...]
  assert kernel.sharding.spec == P("x", "y")
  assert losses[-1] < losses[0]
  if case.name == "soap":
    # Not comparable: the 8x8 factor has rank <= 4, and SOAP's Adam on the
    # eigenbasis of its null space turns rounding noise into O(1) steps (a
    # 1e-6 relative change of the gradients moves the kernel by 0.08 here).
    # test_sharded_params_keep_their_sharding compares sharded SOAP steps.
    return
  # Sharded sums add in another order; inverse roots of the early, badly
  # conditioned Kronecker factors amplify that to ~1e-5 relative.
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-4)
  np.testing.assert_allclose(
      kernel, ref_model.lin.kernel[...], rtol=2e-4, atol=2e-5)


# --- non-finite and zero gradients ------------------------------------------


def _with_nan(grads):
  return {**grads, "w": grads["w"].at[1, 0].set(jnp.nan)}


@every_case
def test_nan_gradient_propagates_into_updates(case):
  scheduled = case in STRUCTURED  # the step compiled for it already
  _, state, _ = _run(case.name, GRADS[:1], scheduled)
  _, state, (updates,) = _run(case.name, [_with_nan(GRADS[1])], scheduled, state)
  if case.name == "adamw_8bit":
    # Documented exception (scale_by_adam with int8 states, as bitsandbytes):
    # a NaN would spoil its whole quantization block, so the coordinate gets
    # a zero Adam step (only the weight decay moves it) and a reset moment.
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
    assert all(bool(jnp.isfinite(x).all()) for x in _floating_leaves(state))
    return
  assert bool(jnp.isnan(updates["w"][1, 0])), updates["w"]
  # Element-wise rules poison only that coordinate; matrix and block rules
  # (orthogonalization, preconditioners, shared scales) may spread it within
  # the leaf. Other leaves are untouched.
  if case.elementwise:
    assert int(jnp.isnan(updates["w"]).sum()) == 1
  assert bool(jnp.all(jnp.isfinite(updates["b"])))
  # Stateful optimizers remember it: later updates stay NaN there.
  if _floating_leaves(state):
    assert any(bool(jnp.isnan(x).any()) for x in _floating_leaves(state))
    _, _, (updates,) = _run(case.name, GRADS[2:3], scheduled, state)
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
  _, ref_state, _ = _run(case.name, GRADS[:1])
  _, _, (ref_updates,) = _run(case.name, GRADS[2:3], state=ref_state)
  updates, state = update(GRADS[2], state, PARAMS)
  chex.assert_trees_all_close(updates, ref_updates, rtol=1e-6, atol=1e-7)
  assert int(state.notfinite_count) == 0

  # More than max_consecutive_errors in a row: the NaN is let through, loudly.
  for _ in range(max_errors + 1):
    updates, state = update(_with_nan(GRADS[3]), state, PARAMS)
  assert bool(jnp.isnan(updates["w"][1, 0]))
  assert update._cache_size() == 1


@every_case
def test_zero_gradients_give_finite_updates(case):
  scheduled = case in STRUCTURED
  tx, step = _shared_step(case.name, scheduled)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)

  _, _, (fresh,) = _run(case.name, [zeros], scheduled)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(fresh))
  if not case.decays_weights:
    chex.assert_trees_all_equal(fresh, zeros)

  # One real step, then many zero ones: moments decay towards 0 (and
  # underflow, for b1 = 0.9, after ~900 steps) without producing 0/0.
  params, state, _ = _run(case.name, GRADS[:1], scheduled)
  for _ in range(1000):
    params, state, updates = step(params, state, zeros)
  for tree in (params, state, updates):
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in _floating_leaves(tree))
  assert step._cache_size() == 1
