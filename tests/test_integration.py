"""Integration checks run over every optimizer of the case registry.

Every optimizer is one entry of ``tests/support/cases.py``; the element-wise
ones (``CASES``) get the whole battery below, the structured ones
(``STRUCTURED``) the checks most likely to break in them. What is checked:

* jit: one trace for three steps, with a constant or a scheduled learning rate;
* ``optax.inject_hyperparams``: hyper-parameters changed at run time act like
  the same values given to the factory;
* ``optax.chain`` / ``multi_transform`` / ``MultiSteps``;
* ``flax.nnx.Optimizer`` inside ``nnx.jit``;
* dtypes (bf16 stays bf16, float64 under x64), pytrees with ``None`` and
  ``optax.MaskedNode`` leaves, and ``jax.vmap``.

Sharded parameters and states are in test_sharding.py, non-finite and zero
gradients (and ``optax.apply_if_finite``) in test_non_finite.py, argument
validation in test_validation.py.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import contrib
from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.support.cases import (
    CASES,
    LR,
    STRUCTURED,
    TRACES,
    cases,
    every_case,
    injected,
    is_optimizer,
    run_shared,
    shared_step,
    structured,
)
from tests.support.helpers import (
    GRADS,
    PARAMS,
    all_finite,
    floating_leaves,
    nnx_train,
    run_steps,
)


def test_cases_cover_every_optimizer():
  optimizers = set(filter(is_optimizer, go.__all__)) | set(contrib.__all__)
  covered = {c.factory.__name__ for c in CASES + STRUCTURED}
  wrappers = {"lookahead_adamw", "parameter_ema_adamw", "record_recipe", "schedule_free_adam",
              "mechanize_adamw"}
  assert covered == optimizers | wrappers, optimizers ^ covered


# --- jit --------------------------------------------------------------------


_TRACE_PARAMS = [
    pytest.param(c, scheduled, id=f"{c.name}-{'sched' if scheduled else 'const'}_lr")
    for c in CASES
    for scheduled in (False, True)
] + [pytest.param(c, True, id=f"{c.name}-sched_lr") for c in STRUCTURED]


@pytest.mark.parametrize("case,scheduled", _TRACE_PARAMS)
def test_one_trace_for_three_jitted_steps(case, scheduled):
  tx, step = shared_step(case.name, scheduled)
  params, state, _ = run_shared(case.name, GRADS[:3], scheduled)
  assert TRACES[case.name, scheduled] == 1
  assert step._cache_size() == 1
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(PARAMS))
  if case in CASES:  # eager is cheap for the element-wise rules: compare
    eager_params, _, _ = run_steps(tx, PARAMS, GRADS[:3])
    chex.assert_trees_all_close(params, eager_params, rtol=1e-5, atol=1e-6)


# --- inject_hyperparams -----------------------------------------------------


@every_case
def test_inject_hyperparams_learning_rate(case):
  tx, update = injected(case.name)
  state = tx.init(PARAMS)
  assert set(state.hyperparams) >= {"learning_rate"}
  u_base, s_base = update(GRADS[0], state, PARAMS)
  # (The scheduled step's first learning rate is LR too.)
  _, _, (reference,) = run_shared(case.name, GRADS[:1], scheduled=case in STRUCTURED)
  # Injected hyper-parameters are float32 arrays, so 1 - b is rounded
  # differently from the Python-float arithmetic of the static factory.
  chex.assert_trees_all_close(u_base, reference, rtol=1e-4, atol=1e-6)

  updates = {}
  for factor in (0.0, 2.0):
    state = tx.init(PARAMS)
    state.hyperparams["learning_rate"] = jnp.asarray(LR * factor, jnp.float32)
    updates[factor], s = update(GRADS[0], state, PARAMS)
    assert float(s.hyperparams["learning_rate"]) == pytest.approx(LR * factor)
    if not (case.lr_mid_chain or case.state_depends_on_lr):
      chex.assert_trees_all_close(s.inner_state, s_base.inner_state)
  # The update is affine in η: u(2η) - u(η) = u(η) - u(0) (on a sphere, η
  # is an angle) ...
  if not case.nonlinear_lr:
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


# Fromage's one argument is its learning rate.
@pytest.mark.parametrize("case", [c for c in CASES if c.factory is not go.fromage],
                         ids=lambda c: c.name)
def test_inject_hyperparams_other_than_learning_rate(case):
  tx, update = injected(case.name)
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
    from_state = run(state)
    _, _, static = run_steps(case.make(**{name: _NEW_VALUES[name]}), PARAMS, GRADS[:2])
    chex.assert_trees_all_close(from_state, static, rtol=1e-5, atol=1e-6)
    # A sign is insensitive to a decay's exact value; decay is always visible.
    if name == "weight_decay" or not case.sign_based:
      with pytest.raises(AssertionError):
        chex.assert_trees_all_close(from_state, baseline, rtol=1e-5, atol=1e-6)
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
  params, _, updates_seq = run_steps(tx, PARAMS, GRADS[:2])
  only_w, _, ref_seq = run_steps(
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
  ref_params, ref_state, _ = run_steps(case.make(), PARAMS, means)
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
  losses, _, _ = nnx_train(
      _MLP(nnx.Rngs(0)), case.make(0.02), lambda m: jnp.mean((m(_X) - _Y) ** 2), 15)
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses


class _TinyLM(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(64, 64, rngs=rngs)
    self.qkv = nnx.Linear(64, 192, rngs=rngs)
    self.norm = nnx.LayerNorm(64, rngs=rngs)
    self.head = nnx.Linear(64, 64, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = x + self.qkv(x)[..., :64]
    return self.head(self.norm(x))


@pytest.mark.parametrize(
    "make",
    [lambda: go.adamw_8bit(1e-2), lambda: go.adam_mini(1e-2, num_heads=4),
     lambda: go.adafactor(1e-2, b1=0.9, mu_dtype="int8"),
     lambda: go.adamw(1e-2, nu_dtype=gt.StochasticBfloat16())],
    ids=["adamw_8bit", "adam_mini", "adafactor", "adamw_sr_bf16"],
)
def test_flax_nnx_optimizer_trains_with_compact_states(make):
  """Quantized, block-shared, factored and stochastically rounded states
  behind nnx.Optimizer (the attention-shaped qkv kernel included)."""
  tokens = jnp.arange(32).reshape(4, 8) % 64

  def loss_fn(model):
    logits = model(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  losses, _, _ = nnx_train(_TinyLM(nnx.Rngs(0)), make(), loss_fn, 15)
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


@every_case
def test_functional_nnx_state_steps_like_plain_arrays(case):
  """The functional NNX loop (``nnx.split``, then ``tx.init`` and a jitted
  ``tx.update`` on ``nnx.State`` trees of ``nnx.Param``) steps exactly as on
  the same arrays as a plain dict, with one trace and a state whose structure
  a step does not change (K-FAC reads the pass's records: its dense layers
  then take the diagonal fallback, here on both sides alike)."""
  graphdef, params = nnx.split(_TinyLM(nnx.Rngs(0)), nnx.Param)
  tokens = jnp.arange(32).reshape(4, 8) % 64

  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  tx = case.make(LR)
  traces = []

  @jax.jit
  def step(p, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return optax.apply_updates(p, updates), state

  def run(p):
    state = tx.init(p)
    structure = jax.tree.structure(state)
    for _ in range(3):
      p, state = step(p, state)
      assert jax.tree.structure(state) == structure
    return p

  wrapped = run(params)
  assert len(traces) == 1
  plain = run(params.to_pure_dict())
  chex.assert_trees_all_close(wrapped.to_pure_dict(), plain, rtol=1e-6, atol=1e-7)


# --- dtypes -----------------------------------------------------------------


@cases
def test_bfloat16_params_stay_bfloat16(case):
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  grads = [jax.tree.map(lambda g: g.astype(jnp.bfloat16), g) for g in GRADS[:2]]
  tx = case.make()
  new_params, state, updates_seq = run_steps(tx, params, grads)

  for tree in (new_params, *updates_seq):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.bfloat16)}
  allowed = {jnp.dtype(jnp.bfloat16)} | case.state_dtypes
  assert {x.dtype for x in floating_leaves(tx.init(params))} <= allowed
  assert {x.dtype for x in floating_leaves(state)} <= allowed
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


@structured
def test_bfloat16_params_give_bfloat16_updates_structured(case):
  """The structured rules (two jitted steps): bf16 updates, finite, moving."""
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  grads = [jax.tree.map(lambda g: g.astype(jnp.bfloat16), g) for g in GRADS[:2]]
  tx = case.make()
  state, step = tx.init(params), jax.jit(tx.update)
  for g in grads:
    updates, state = step(g, state, params)
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
    params = optax.apply_updates(params, updates)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert all_finite(params) and any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))


@cases
def test_float64_under_x64(case):
  with jax.enable_x64(True):
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), PARAMS)
    grads = [jax.tree.map(lambda g: jnp.asarray(g, jnp.float64), g) for g in GRADS[:2]]
    tx = case.make()
    new_params, state, updates_seq = run_steps(tx, params, grads)
    float64 = jnp.dtype(jnp.float64)
    for tree in (new_params, *updates_seq):
      assert {x.dtype for x in jax.tree.leaves(tree)} == {float64}
    state_dtypes = {x.dtype for x in floating_leaves(state)}
    assert state_dtypes <= {float64} | case.state_dtypes
    if floating_leaves(state):
      assert float64 in state_dtypes
    f32_params, _, _ = run_steps(tx, PARAMS, GRADS[:2])
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
  new_params, state, updates_seq = run_steps(tx, params, grads)
  for updates in updates_seq:
    assert updates["frozen"] is None
    assert updates["masked"] == optax.MaskedNode()
  assert new_params["frozen"] is None
  ref_params, ref_state, _ = run_steps(tx, PARAMS, GRADS[:2])
  chex.assert_trees_all_close(
      {k: new_params[k] for k in PARAMS}, ref_params, rtol=1e-6
  )
  chex.assert_trees_all_close(jax.tree.leaves(state), jax.tree.leaves(ref_state))


_DECOMPOSING = {
    "shampoo": lambda view: go.shampoo(LR, precondition_every=1, matrix_view=view),
    "soap": lambda view: go.soap(LR, precondition_every=1, matrix_view=view),
    "psgd_kron": lambda view: go.psgd_kron(
        LR, precond_update_probability=1.0, matrix_view=view),
    "dion_qr": lambda view: go.dion(LR, rank=4, matrix_view=view),
    "dion_cholesky_qr": lambda view: go.dion(
        LR, rank=4, orthonormalize="cholesky_qr", matrix_view=view),
    "clip_singular_values": lambda view: gt.clip_singular_values(
        max_value=1.0, matrix_view=view),
    "muon_spectral": lambda view: go.muon(LR, preconditioning="spectral", matrix_view=view),
}


@pytest.mark.parametrize("user_vmap", [False, True], ids=["step", "vmapped_step"])
@pytest.mark.parametrize("name", sorted(_DECOMPOSING))
def test_no_batched_lapack_call_on_cpu(name, user_vmap):
  """jaxlib 0.10's batched LAPACK kernels deadlock XLA:CPU's thread pool
  when as many run at once as it has threads (two devices of one process, or
  two independent leaves: ``matrix_roots.unbatched_on_cpu``): every
  decomposition and triangular solve of a compiled step, on a stack read as
  a batch, on same-shape leaves and under a user's ``jax.vmap``, is one
  matrix per call. PSGD Kron's solve over a stack (it hung two processes of
  two devices) and CholeskyQR's Cholesky and solve on a stack were batched."""
  params = {"layers": jnp.ones((3, 16, 16)), "a": jnp.eye(16), "b": 2 * jnp.eye(16),
            "c": jnp.ones((24, 16)), "bias": jnp.ones(16)}
  tx = _DECOMPOSING[name](gt.stacked_matrix_view())
  state = tx.init(params)
  step, args = tx.update, (params, state, params)
  if user_vmap:
    step, args = jax.vmap(step), jax.tree.map(lambda x: jnp.stack([x, x]), args)
  hlo = jax.jit(step).lower(*args).compile().as_text()
  calls = [line for line in hlo.splitlines() if 'custom_call_target="lapack_' in line]
  assert calls, "no LAPACK call: the test no longer sees the decompositions"
  batch_dims = {re.search(r'num_batch_dims="(\d+)"', line).group(1) for line in calls}
  assert batch_dims == {"0"}, [line.split("custom_call_target=")[1][:30] for line in calls]


@every_case
def test_vmap_over_independent_problems(case):
  """A batch of problems in one program (a seed or model sweep): the vmapped
  steps equal each problem's own. Shampoo and SOAP deadlocked here on CPU
  (their one-matrix-at-a-time LAPACK calls batched again by the vmap)."""
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
    ref_params, ref_state, _ = run_steps(tx, take(params_b), [take(g) for g in grads_b])
    chex.assert_trees_all_close(take(params), ref_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(take(state), ref_state, rtol=1e-5, atol=1e-6)
