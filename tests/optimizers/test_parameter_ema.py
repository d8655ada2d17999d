"""go.parameter_ema against closed forms of the average, and go.ema_params.

The average after n steps, from start_step k on, is the explicit weighted sum
β^{n−k} p_k + Σ_{i=k+1}^{n} (1−β) β^{n−i} p_i of the base optimizer's own
float64 trajectory (run without the wrapper), and for a straight-line
trajectory p_i = p_0 + i·c the lagged line p_0 + c·(n − β(1 − βⁿ)/(1 − β)).
The generic battery (tests/support/cases.py: ``parameter_ema``,
``record_recipe``) covers jit, inject_hyperparams, sharding and the rest.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners

STEPS = 20
PROBLEM = problems.LogisticProblem(seed=11, steps=STEPS)


def _run_with_ema(tx, steps=STEPS):
  """The float64 trajectory of ``tx`` (NumPy copies) and the average after each step."""
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v) for k, v in PROBLEM.params0.items()}
    state = tx.init(params)
    step = jax.jit(tx.update)
    trajectory, averages = [PROBLEM.params0], []
    for t in range(steps):
      updates, state = step(PROBLEM.grad(trajectory[-1], t), state, params)
      params = optax.apply_updates(params, updates)
      trajectory.append({k: np.asarray(v) for k, v in params.items()})
      averages.append({k: np.asarray(v) for k, v in go.ema_params(state, params).items()})
  return trajectory, averages


def _weighted_sum(trajectory, n, decay, start):
  """β^{n−k} p_k + Σ_{i=k+1}^{n} (1−β) β^{n−i} p_i (p_n itself before k)."""
  if n <= start:
    return trajectory[n]
  return {key: decay ** (n - start) * trajectory[start][key] + sum(
      (1 - decay) * decay ** (n - i) * trajectory[i][key] for i in range(start + 1, n + 1))
      for key in trajectory[0]}


@pytest.mark.parametrize("start_step", [0, 7])
def test_average_is_the_weighted_sum_of_the_base_trajectory(start_step):
  decay = 0.8
  base = lambda: go.adamw(0.05, weight_decay=0.1)
  plain = runners.run_gradtx(base(), PROBLEM.params0, PROBLEM.grad, STEPS)
  trajectory, averages = _run_with_ema(
      go.parameter_ema(base(), decay=decay, start_step=start_step))
  # Training is the base's, unchanged (to the round-off of another jit program).
  runners.assert_trajectories_close(trajectory, plain, 1e-13)
  for n in range(1, STEPS + 1):
    expected = _weighted_sum(trajectory, n, decay, start_step)
    for key in expected:
      np.testing.assert_allclose(averages[n - 1][key], expected[key], rtol=1e-13, atol=1e-15,
                                 err_msg=f"step {n}, {key}")


@pytest.mark.parametrize("start_step", [0, 5])
def test_straight_line_lags_by_the_closed_form(start_step):
  """SGD on a linear loss moves every weight by c = −η g per step."""
  decay, lr, g = 0.9, 0.1, 0.3
  tx = go.parameter_ema(go.sgd(lr), decay=decay, start_step=start_step)
  with jax.enable_x64(True):
    p0 = jnp.asarray([1.0, -2.0])
    params, state = p0, tx.init(p0)
    for n in range(1, STEPS + 1):
      updates, state = tx.update(jnp.full(2, g), state, params)
      params = optax.apply_updates(params, updates)
      m = max(n - start_step, 0)
      lag = m - decay * (1 - decay**m) / (1 - decay)
      expected = p0 - lr * g * (min(n, start_step) + lag)
      np.testing.assert_allclose(go.ema_params(state, params), expected, rtol=1e-14)


def test_bfloat16_params_are_averaged_in_float32():
  params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
  tx = go.parameter_ema(go.sgd(1e-3), decay=0.99)
  state = tx.init(params)
  assert state.ema["w"].dtype == jnp.float32
  for _ in range(10):
    updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
  # 1e-3 steps round away in bf16 from 1.0 (ulp 2⁻⁷): the float32 average moves.
  assert float(params["w"][0, 0]) == 1.0
  assert float(state.ema["w"][0, 0]) < 1.0
  averaged = go.ema_params(state, params)
  assert averaged["w"].dtype == jnp.bfloat16


def test_ema_params_finds_the_state_inside_other_states():
  params = {"w": jnp.ones(3)}
  wrapped = optax.inject_hyperparams(go.parameter_ema, static_args=("base",))(
      base=go.sgd(0.1), decay=0.5)
  state = wrapped.init(params)
  updates, state = wrapped.update({"w": jnp.ones(3)}, state, params)
  np.testing.assert_allclose(go.ema_params(state, params)["w"], 0.95)
  chained = optax.chain(optax.clip(1.0), go.parameter_ema(go.sgd(0.1), decay=0.5))
  assert go.ema_params(chained.init(params), params)["w"].shape == (3,)
  with pytest.raises(ValueError, match="found 0"):
    go.ema_params(go.sgd(0.1).init(params), params)


def test_start_step_may_be_traced():
  params = jnp.zeros(2)
  injected = optax.inject_hyperparams(go.parameter_ema, static_args=("base",))(
      base=go.sgd(1.0), decay=0.5, start_step=1)
  state = injected.init(params)
  for _ in range(2):
    updates, state = jax.jit(injected.update)(-jnp.ones(2), state, params)
    params = optax.apply_updates(params, updates)
  # Step 1 copies p₁ = 1; step 2 averages: (1 + 2)/2.
  np.testing.assert_allclose(go.ema_params(state, params), 1.5)


def test_arguments_are_checked_at_construction():
  with pytest.raises(ValueError, match=r"^decay must be in \[0, 1\), got 1.0"):
    go.parameter_ema(go.sgd(0.1), decay=1.0)
  with pytest.raises(ValueError, match="^start_step must be an integer >= 0, got -1"):
    go.parameter_ema(go.sgd(0.1), start_step=-1)
  with pytest.raises(ValueError, match="^base must be an optax.GradientTransformation"):
    go.parameter_ema(optax.adam, decay=0.9)
  tx = go.parameter_ema(go.sgd(0.1))
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_state_has_no_zero_size_placeholders():
  """orbax refuses zero-size arrays (FIELD_NOTES): every leaf has elements."""
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  state = go.parameter_ema(go.adamw(0.1)).init(params)
  assert all(x.size for x in jax.tree.leaves(state))


def test_ema_params_of_an_nnx_optimizer():
  """nnx.Optimizer keeps the EMA in OptVariables and the model its Params:
  ema_params reads through both, gives what the plain-pytree run gives, and
  returns Params that nnx.update puts into an evaluation model."""
  from flax import nnx

  model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
  tx = go.parameter_ema(go.sgd(0.1), decay=0.5)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
  loss = lambda m: jnp.mean(m(x) ** 2)
  plain = jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  state = tx.init(plain)
  for _ in range(3):
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)
    updates, state = tx.update(nnx.to_pure_dict(grads), state, plain)
    plain = optax.apply_updates(plain, updates)
  averaged = go.ema_params(optimizer.opt_state, nnx.state(model, nnx.Param))
  expected = go.ema_params(state, plain)
  for got, want in zip(jax.tree.leaves(nnx.to_pure_dict(averaged)), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6)
  evaluation = nnx.clone(model)
  nnx.update(evaluation, averaged)
  np.testing.assert_allclose(evaluation.kernel[...], expected["kernel"], rtol=1e-6)
  with pytest.raises(ValueError, match="opt_state"):
    go.ema_params(nnx.state(optimizer), nnx.state(model, nnx.Param))


@pytest.mark.parametrize("wrap", [
    lambda tx: optax.masked(tx, {"w": True, "rest": {"b": False}}),
    lambda tx: optax.multi_transform({"ema": tx, "sgd": go.sgd(0.1)},
                                     {"w": "ema", "rest": {"b": "sgd"}}),
    # a prefix: one MaskedNode stands for the subtree {"b": ...}
    lambda tx: optax.masked(tx, {"w": True, "rest": False}),
    lambda tx: optax.multi_transform({"ema": tx, "sgd": go.sgd(0.1)}, {"w": "ema", "rest": "sgd"}),
], ids=["masked", "multi_transform", "masked_prefix", "multi_transform_prefix"])
def test_ema_params_of_a_masked_ema_keeps_the_left_out_leaves(wrap):
  """Inside optax.masked or a multi_transform branch the EMA state holds
  MaskedNodes for the leaves it does not see (a pytree error before): those
  come back as the current parameters, the others as the EMA alone gives."""
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "rest": {"b": jnp.ones(2)}}
  grads = jax.tree.map(lambda p: jnp.cos(p), params)
  tx, alone = wrap(go.parameter_ema(go.sgd(0.1), decay=0.5)), go.parameter_ema(go.sgd(0.1),
                                                                                decay=0.5)
  state, alone_state, w = tx.init(params), alone.init(params["w"]), params["w"]
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    w_updates, alone_state = alone.update(grads["w"], alone_state, w)
    w = optax.apply_updates(w, w_updates)
  averaged = go.ema_params(state, params)
  np.testing.assert_array_equal(averaged["rest"]["b"], params["rest"]["b"])
  np.testing.assert_allclose(averaged["w"], go.ema_params(alone_state, w), rtol=1e-6)


def test_ema_params_names_the_filter_when_nnx_optimizer_left_a_module_out():
  """nnx.Optimizer(wrt=...) over a sub-model: the EMA holds its leaves only;
  params of the whole model (nnx.Param) get an error saying to pass the same
  filter, not a pytree structure error."""
  from flax import nnx

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.frozen = nnx.Linear(4, 4, rngs=rngs)
      self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.head(self.frozen(x))

  model = Model(nnx.Rngs(0))
  wrt = nnx.All(nnx.Param, nnx.PathContains("head"))
  optimizer = nnx.Optimizer(model, go.parameter_ema(go.sgd(0.1), decay=0.5), wrt=wrt)
  x = jnp.ones((3, 4))
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2), argnums=nnx.DiffState(0, wrt))(model)
  optimizer.update(model, grads)
  assert len(jax.tree.leaves(go.ema_params(optimizer.opt_state, nnx.state(model, wrt)))) == 2
  with pytest.raises(ValueError, match=r"pass nnx.state\(model, wrt\)"):
    go.ema_params(optimizer.opt_state, nnx.state(model, nnx.Param))
