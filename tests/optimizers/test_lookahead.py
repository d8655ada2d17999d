"""lookahead against Algorithm 1 of Zhang et al. 2019 written by hand in torch.

The torch side (``torch_runners.run_torch_lookahead``) runs
``torch.optim.Adam`` / ``SGD(momentum=0.9)`` as the fast optimizer, keeps its
own slow weights and, every k steps, does slow += α(fast − slow),
fast ← slow (re-creating the optimizer for ``reset_state``). Trajectories are
float64, 32 steps (several syncs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners
from tests.support import helpers

STEPS = 32
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=5, steps=STEPS)

BASES = {  # name: (gradtx base, torch fast optimizer on a list of tensors)
    "adam": (lambda: go.adam(0.05), lambda ps: torch.optim.Adam(ps, lr=0.05)),
    "sgd_momentum": (
        lambda: go.sgd(0.5, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9),
    ),
}


@pytest.mark.parametrize("reset", [False, True], ids=["keep", "reset_state"])
@pytest.mark.parametrize("base", list(BASES))
def test_matches_torch_algorithm_1(base, reset):
  make_ours, make_torch = BASES[base]
  k, alpha = 5, 0.6
  ours = runners.run_gradtx(
      go.lookahead(make_ours(), sync_period=k, slow_step_size=alpha, reset_state=reset),
      PROBLEM.params0, PROBLEM.grad, STEPS,
  )
  ref = torch_runners.run_torch_lookahead(
      make_torch, PROBLEM.params0, PROBLEM.grad, STEPS, k, alpha, reset
  )
  runners.assert_trajectories_close(ours, ref, TOLERANCE)
  # The reference tells lookahead from its base, and a reset from none.
  plain = runners.run_gradtx(make_ours(), PROBLEM.params0, PROBLEM.grad, STEPS)
  other = torch_runners.run_torch_lookahead(
      make_torch, PROBLEM.params0, PROBLEM.grad, STEPS, k, alpha, not reset
  )
  assert runners.trajectory_errors(plain, ref)["updates"] > 1e-3
  assert runners.trajectory_errors(ours, other)["updates"] > 1e-3


@pytest.mark.parametrize("reset", [False, True], ids=["keep", "reset_state"])
def test_same_trajectory_as_optax_lookahead(reset):
  make = BASES["adam"][0]
  ours = runners.run_gradtx(
      go.lookahead(make(), sync_period=4, slow_step_size=0.3, reset_state=reset),
      PROBLEM.params0, PROBLEM.grad, STEPS,
  )
  theirs = runners.run_optax_lookahead(
      optax.lookahead(make(), 4, 0.3, reset_state=reset),
      PROBLEM.params0, PROBLEM.grad, STEPS,
  )
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)
  other = runners.run_optax_lookahead(
      optax.lookahead(make(), 4, 0.5, reset_state=reset),
      PROBLEM.params0, PROBLEM.grad, STEPS,
  )
  assert runners.trajectory_errors(ours, other)["updates"] > 1e-3


@pytest.mark.parametrize("base,k", [("adam", 1), ("sgd_momentum", 3)])
def test_slow_step_size_one_is_the_base(base, k):
  make = BASES[base][0]
  ours = runners.run_gradtx(
      go.lookahead(make(), sync_period=k, slow_step_size=1.0), PROBLEM.params0, PROBLEM.grad, STEPS
  )
  plain = runners.run_gradtx(make(), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, plain, 1e-12)


def test_sync_every_step_scales_plain_sgd():
  """k = 1 turns SGD with rate η into SGD with rate αη."""
  ours = runners.run_gradtx(
      go.lookahead(go.sgd(0.4), sync_period=1, slow_step_size=0.25), PROBLEM.params0,
      PROBLEM.grad, STEPS
  )
  plain = runners.run_gradtx(go.sgd(0.1), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, plain, 1e-12)


def _steps(tx, params, grads, n):
  """n eager steps with the same gradients; (params, state, last update)."""
  params, state, updates = helpers.run_steps(tx, params, [grads] * n)
  return params, state, updates[-1]


def test_reset_initialises_the_base_at_the_synced_weights():
  """A base whose init reads the values (here a nested lookahead) restarts
  from where the sync put the parameters, not from the step before."""
  tx = go.lookahead(go.lookahead(go.sgd(0.1), sync_period=2), sync_period=4,
                    slow_step_size=0.5, reset_state=True)
  params = jnp.array([1.0, -2.0])
  grads = jnp.array([0.3, -0.7])
  params, state, _ = _steps(tx, params, grads, 4)
  np.testing.assert_allclose(state.inner_state.slow, params, rtol=1e-6)
  assert int(state.inner_state.count) == 0


def test_bf16_params_stay_bf16_and_slow_weights_keep_sub_ulp_moves():
  # Each fast step moves a weight by one bf16 ulp at 1.0 (2⁻⁷), each sync
  # (k = 1) the slow weight by half of it: a bf16 φ would round that away and
  # stay at 1.0 for ever; a float32 φ advances half an ulp a step on average,
  # like SGD with rate αη in exact arithmetic (θ = bf16(φ) makes it wobble).
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  grads = {"w": -jnp.ones(3, jnp.bfloat16)}
  tx = go.lookahead(go.sgd(2.0**-7), sync_period=1, slow_step_size=0.5)
  params, state, updates = _steps(tx, params, grads, 12)
  assert params["w"].dtype == updates["w"].dtype == jnp.bfloat16
  assert state.slow["w"].dtype == jnp.float32
  ulp, exact = 2.0**-7, 1 + 12 * 0.5 * 2.0**-7  # a bf16 φ stays at 1.0
  np.testing.assert_allclose(state.slow["w"], exact, atol=ulp / 2)
  np.testing.assert_allclose(params["w"].astype(jnp.float32), exact, atol=ulp)


def test_one_trace_across_syncs():
  tx = go.lookahead(go.adam(0.1), sync_period=3, reset_state=True)
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.tree.map(lambda p: p - 0.5, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for t in range(1, 8):
    params, state = step(params, state)
    synced = jax.tree.map(lambda p, s: bool(jnp.allclose(p, s)), params, state.slow)
    assert all(jax.tree.leaves(synced)) == (t % 3 == 0), t
  assert len(traces) == 1
  assert int(state.count) == 7 and int(state.inner_state[1].count) == 1


def test_vmap_over_independent_problems():
  tx = go.lookahead(go.sgd(0.3, momentum=0.9), sync_period=2, slow_step_size=0.4)
  scales = jnp.array([0.5, 1.0, 2.0])
  params_b = {"w": scales[:, None] * jnp.arange(1.0, 5.0)}
  grads = lambda p: jax.tree.map(lambda x: x**2 - 1.0, p)

  def run(params):
    state = tx.init(params)
    for _ in range(5):
      updates, state = tx.update(grads(params), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  batched = jax.vmap(run)(params_b)
  for i in range(3):
    single = run({"w": params_b["w"][i]})
    np.testing.assert_allclose(batched[0]["w"][i], single[0]["w"], rtol=1e-6)
    np.testing.assert_allclose(batched[1].slow["w"][i], single[1].slow["w"],
                               rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(sync_period=0), "sync_period must be an integer >= 1, got 0"),
        (dict(sync_period=2.0), "sync_period must be an integer >= 1, got 2.0"),
        (dict(sync_period=True), "sync_period must be an integer >= 1"),
        (dict(slow_step_size=1.5), r"slow_step_size must be in \[0, 1\], got 1.5"),
        (dict(slow_step_size=-0.1), r"slow_step_size must be in \[0, 1\]"),
        (dict(slow_step_size=float("nan")), r"slow_step_size must be in \[0, 1\]"),
    ],
)
def test_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    go.lookahead(go.sgd(0.1), **kwargs)


def test_update_needs_params():
  tx = go.lookahead(go.sgd(0.1))
  with pytest.raises(ValueError, match="lookahead needs the parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_non_finite_gradient_reaches_slow_weights_at_the_next_sync():
  """Between syncs φ is untouched; the sync after a NaN takes it in for good.

  optax.lookahead's arithmetic blend (0 · NaN) poisons φ on the NaN step
  itself; ``optax.apply_if_finite`` around ours skips the step instead.
  """
  tx = go.lookahead(go.sgd(0.1), sync_period=3)
  params = jnp.ones(2)
  grads = [jnp.ones(2), jnp.array([jnp.nan, 1.0]), jnp.ones(2), jnp.ones(2)]
  state = tx.init(params)
  slow_finite = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    slow_finite.append(bool(jnp.isfinite(state.slow).all()))
  assert slow_finite == [True, True, False, False]
  assert np.isnan(params[0]) and np.isfinite(params[1])

  theirs = optax.lookahead(go.sgd(0.1), 3, 0.5)
  pair = optax.LookaheadParams.init_synced(jnp.ones(2))
  state = theirs.init(pair)
  for g in grads[:2]:
    updates, state = theirs.update(g, state, pair)
    pair = optax.apply_updates(pair, updates)
  assert np.isnan(pair.slow[0])

  guarded = optax.apply_if_finite(tx, max_consecutive_errors=5)
  params, state, _ = _steps(guarded, jnp.ones(2), grads[1], 1)
  np.testing.assert_array_equal(params, jnp.ones(2))
  assert int(state.inner_state.count) == 0


class _Net(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.head = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(self.hidden(x)))


def test_flax_nnx_optimizer_trains_with_slow_weights_in_its_state():
  model = _Net(nnx.Rngs(0))
  x = jnp.linspace(-1, 1, 32).reshape(8, 4)
  y = jnp.sin(3 * x).sum(axis=1, keepdims=True)
  losses, traces, optimizer = helpers.nnx_train(
      model, go.lookahead(go.adam(0.05), sync_period=4),
      lambda m: jnp.mean((m(x) - y) ** 2), 24)
  assert traces == 1
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
  slow = optimizer.opt_state.slow["head"]["kernel"]
  np.testing.assert_allclose(slow.get_value(), model.head.kernel.get_value(),
                             rtol=1e-6)  # 24 steps: just synced


def test_keyword_arguments_reach_the_base_so_sam_composes():
  """lookahead(sam(...)) forwards grad_fn; with α = 1 it is sam itself."""
  loss = lambda w: jnp.sum(w ** 4)
  grad = jax.grad(loss)
  w0 = jnp.array([1.0, -0.5])
  runs = {}
  for name, tx in {"sam": go.sam(go.sgd(0.05), rho=0.1),
                   "lookahead": go.lookahead(go.sam(go.sgd(0.05), rho=0.1), sync_period=2,
                                             slow_step_size=1.0)}.items():
    w, state = w0, tx.init(w0)
    for _ in range(4):
      updates, state = tx.update(grad(w), state, w, grad_fn=grad)
      w = optax.apply_updates(w, updates)
    runs[name] = w
  np.testing.assert_allclose(runs["lookahead"], runs["sam"], rtol=1e-6)
  assert float(jnp.abs(runs["sam"] - w0).max()) > 1e-2


@pytest.mark.parametrize("base", [None, optax.adam])
def test_base_must_be_a_transformation(base):
  with pytest.raises(ValueError, match="base must be an optax.GradientTransformation"):
    go.lookahead(base)
