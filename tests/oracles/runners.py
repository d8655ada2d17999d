"""The gradtx side of a trajectory test, and how trajectories are compared.

The runners take NumPy gradients (``problems``), step an optax transformation
with one jitted step and ``optax.apply_updates``, and return a trajectory.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.oracles.problems import GradFn, MlpProblem, Params, Trajectory, copy_params, float64_of


def at_int64_counts(schedule: Callable) -> Callable:
  """``schedule`` read at an int64 step count, as gradtx reads schedules under
  ``jax_enable_x64``: optax reads them at its int32 count, where its
  schedules give float32 values (1e-8 from the float64 rates)."""
  return lambda count: schedule(jnp.asarray(count).astype(jnp.int64))


def run_gradtx(
    tx: optax.GradientTransformation,
    params0: Params,
    grad_fn: GradFn,
    steps: int,
) -> Trajectory:
  """Runs ``tx`` for ``steps`` steps in float64 (complex128 for complex
  leaves); gradients come from NumPy."""
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v, float64_of(v)) for k, v in params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    trajectory = [copy_params(params0)]
    for t in range(steps):
      grads = grad_fn(trajectory[-1], t)
      params, state = step(params, state, grads)
      trajectory.append(copy_params(params))
  return trajectory


def run_quadratic(tx: optax.GradientTransformation, params0: Params, grad_fn: GradFn,
                  steps: int, dtype=jnp.float64) -> Trajectory:
  """``tx`` for ``steps`` steps (jitted, ``dtype``); the trajectory."""
  with jax.enable_x64(dtype == jnp.float64):
    params = {k: jnp.asarray(v, dtype) for k, v in params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    trajectory = [{k: np.asarray(v, np.float64) for k, v in params.items()}]
    for t in range(steps):
      grads = grad_fn(trajectory[-1], t)
      params, state = step(
          params, state, {k: jnp.asarray(v, dtype) for k, v in grads.items()}
      )
      trajectory.append({k: np.asarray(v, np.float64) for k, v in params.items()})
  return trajectory


def run_with_grad_fn(
    tx: optax.GradientTransformationExtraArgs,
    problem: MlpProblem,
    wrap_grad_fn: Callable = lambda f: f,
) -> Trajectory:
  """``tx`` on ``problem``, float64, one jitted step that passes
  ``grad_fn`` = ∇ of the loss on mini-batch t (through ``wrap_grad_fn``)."""
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v) for k, v in problem.params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
      grad_fn = jax.grad(lambda p: problem.loss(p, x, y))
      updates, state = tx.update(
          grad_fn(params), state, params, grad_fn=wrap_grad_fn(grad_fn))
      return optax.apply_updates(params, updates), state

    trajectory = [problem.params0]
    for t in range(problem.steps):
      params, state = step(params, state, problem.xs[t], problem.ys[t])
      trajectory.append({k: np.asarray(v) for k, v in params.items()})
  return trajectory


def run_optax_lookahead(tx, params0: Params, grad_fn: GradFn, steps: int) -> Trajectory:
  """optax.lookahead carries LookaheadParams; gradients at the fast weights."""
  with jax.enable_x64(True):
    params = optax.LookaheadParams.init_synced(
        {n: jnp.asarray(v, jnp.float64) for n, v in params0.items()}
    )
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    trajectory = [params0]
    for t in range(steps):
      params, state = step(params, state, grad_fn(trajectory[-1], t))
      trajectory.append({n: np.asarray(v) for n, v in params.fast.items()})
  return trajectory


def trajectory_errors(trajectory: Trajectory, reference: Trajectory) -> dict:
  """Largest relative distance between two trajectories.

  Returns a dict with
    ``params``: max over steps and leaves of ‖θ_t − θ*_t‖∞ / ‖θ*_t‖∞;
    ``updates``: max over steps and leaves of ‖Δ_t − Δ*_t‖∞ / ‖Δ*_t‖∞ with
      Δ_t = θ_t − θ_{t−1}, the stricter measure (an error in the step is not
      hidden by the size of the parameters).
  """
  if len(trajectory) != len(reference):
    raise ValueError(f"lengths differ: {len(trajectory)} vs {len(reference)}")
  params_err, updates_err = 0.0, 0.0
  for t in range(1, len(reference)):
    for k in reference[t]:
      a, r = trajectory[t][k], reference[t][k]
      params_err = max(params_err, np.abs(a - r).max() / np.abs(r).max())
      da, dr = a - trajectory[t - 1][k], r - reference[t - 1][k]
      updates_err = max(
          updates_err, np.abs(da - dr).max() / max(np.abs(dr).max(), 1e-300)
      )
  return {"params": params_err, "updates": updates_err}


def assert_trajectories_close(
    trajectory: Trajectory, reference: Trajectory, tolerance: float
) -> dict:
  """Asserts both ``trajectory_errors`` are within ``tolerance``; returns them.

  The errors are printed, so ``pytest -s`` shows the measured margins.
  """
  errors = trajectory_errors(trajectory, reference)
  print(f"max relative error: params {errors['params']:.2e}, "
        f"updates {errors['updates']:.2e}")
  assert errors["params"] <= tolerance, errors
  assert errors["updates"] <= tolerance, errors
  return errors


def max_relative_gap(a: Trajectory, b: Trajectory) -> float:
  """Largest parameter difference over the run, relative to the parameters."""
  scale = max(np.abs(v).max() for y in b for v in y.values())
  return max(np.abs(x[k] - y[k]).max() for x, y in zip(a, b) for k in y) / scale


def relative_error(x, reference) -> float:
  """‖x − reference‖_F / ‖reference‖_F, in float64."""
  x = np.asarray(x, np.float64)
  return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))
