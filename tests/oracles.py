"""Independent reference oracles for the gradtx tests, in one place.

* ``LogisticProblem``: a fixed, non-trivial objective (multi-output logistic
  regression, a fresh random mini-batch at every step) whose gradients depend
  on the parameters, so that two optimizers with different semantics drift
  apart instead of merely producing different numbers once.
* ``run_gradtx``: runs an ``optax.GradientTransformation`` on that problem in
  float64, with one jitted step and ``optax.apply_updates``.
* ``run_torch``: the same loop with a ``torch.optim`` optimizer in float64.
* ``lion_numpy``, ``tiger_numpy``, ``adabelief_numpy``, ``signum_numpy``:
  line-by-line NumPy transcriptions of the papers' pseudo-code.
* ``trajectory_errors``: how far two trajectories are apart, relative to the
  parameters and to the per-step updates.

Every runner returns a trajectory: a list of ``{name: np.ndarray}`` parameter
dicts, the initial point first, then one entry per step.
"""

from typing import Callable, Dict, List, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

Params = Dict[str, np.ndarray]
Trajectory = List[Params]
GradFn = Callable[[Params, int], Params]
Rate = Union[float, Callable[[int], float]]


class LogisticProblem:
  """Multi-output logistic regression on fixed random mini-batches.

  ``grad(params, t)`` is the gradient of the mean binary cross-entropy on
  mini-batch ``t`` at ``params``; gradients are O(0.1) and never vanish, since
  the labels are random.
  """

  def __init__(self, seed=0, n_in=5, n_out=3, batch=16, steps=60, scale=1.0):
    rng = np.random.default_rng(seed)
    self.steps = steps
    self.xs = rng.normal(size=(steps, batch, n_in))
    self.ys = (rng.uniform(size=(steps, batch, n_out)) < 0.5).astype(np.float64)
    self.scale = scale
    self.params0 = {
        "w": rng.normal(size=(n_in, n_out)),
        "b": 0.5 * rng.normal(size=(n_out,)),
    }

  def grad(self, params: Params, t: int) -> Params:
    x, y = self.xs[t], self.ys[t]
    logits = x @ params["w"] + params["b"]
    residual = self.scale * (1.0 / (1.0 + np.exp(-logits)) - y) / y.size
    return {"w": x.T @ residual, "b": residual.sum(axis=0)}


def _copy(params) -> Params:
  return {k: np.array(v, dtype=np.float64) for k, v in params.items()}


def _rate(rate: Rate, t: int) -> float:
  return rate(t) if callable(rate) else rate


def run_gradtx(
    tx: optax.GradientTransformation,
    params0: Params,
    grad_fn: GradFn,
    steps: int,
) -> Trajectory:
  """Runs ``tx`` for ``steps`` steps in float64; gradients come from NumPy."""
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v, jnp.float64) for k, v in params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    trajectory = [_copy(params0)]
    for t in range(steps):
      grads = grad_fn(trajectory[-1], t)
      params, state = step(params, state, grads)
      trajectory.append(_copy(params))
  return trajectory


def run_torch(
    make_optimizer: Callable[[Dict[str, torch.Tensor]], torch.optim.Optimizer],
    params0: Params,
    grad_fn: GradFn,
    steps: int,
    *,
    lr_lambda: Optional[Callable[[int], float]] = None,
    before_step: Optional[Callable[[torch.optim.Optimizer, int], None]] = None,
) -> Trajectory:
  """Runs a ``torch.optim`` optimizer for ``steps`` steps in float64.

  Args:
    make_optimizer: builds the optimizer from ``{name: tensor}`` (so that
      tests can form parameter groups).
    params0: the initial point.
    grad_fn: the NumPy gradient, shared with the JAX run.
    steps: number of steps.
    lr_lambda: if given, a ``torch.optim.lr_scheduler.LambdaLR`` factor,
      stepped after every optimizer step (step t uses ``lr_lambda(t)``).
    before_step: if given, called as ``before_step(optimizer, t)`` before step
      ``t`` (to set ``param_groups`` values by hand).
  """
  tensors = {
      k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
      for k, v in params0.items()
  }
  optimizer = make_optimizer(tensors)
  scheduler = (
      torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
      if lr_lambda is not None
      else None
  )
  trajectory = [_copy(params0)]
  for t in range(steps):
    grads = grad_fn(trajectory[-1], t)
    for k, p in tensors.items():
      p.grad = torch.tensor(grads[k], dtype=torch.float64)
    if before_step is not None:
      before_step(optimizer, t)
    optimizer.step()
    if scheduler is not None:
      scheduler.step()
    trajectory.append({k: p.detach().numpy().copy() for k, p in tensors.items()})
  return trajectory


# NumPy transcriptions of the papers' pseudo-code. Each returns the trajectory
# and the smallest |argument| that was passed to sign() (for the sign methods),
# so that a test can check the run had no near-ties, where round-off could
# legitimately flip a sign.


def lion_numpy(params0, grad_fn, steps, lr: Rate, b1, b2, weight_decay=0.0):
  """Lion, Chen et al. 2023, Program 1 / Algorithm 2.

  c_t = β1 m_{t-1} + (1-β1) g_t
  θ_t = θ_{t-1} - η_t (sign(c_t) + λ θ_{t-1})
  m_t = β2 m_{t-1} + (1-β2) g_t
  """
  theta = _copy(params0)
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  trajectory, min_arg = [_copy(theta)], np.inf
  for t in range(steps):
    g = grad_fn(theta, t)
    eta = _rate(lr, t)
    for k in theta:
      c = b1 * m[k] + (1 - b1) * g[k]
      min_arg = min(min_arg, np.abs(c).min())
      theta[k] = theta[k] - eta * (np.sign(c) + weight_decay * theta[k])
      m[k] = b2 * m[k] + (1 - b2) * g[k]
    trajectory.append(_copy(theta))
  return trajectory, min_arg


def tiger_numpy(params0, grad_fn, steps, lr: Rate, beta, weight_decay=0.0):
  """Tiger, Su Jianlin 2023 (bojone/tiger), without the RMS lr scaling.

  m_t = β m_{t-1} + (1-β) g_t
  θ_t = θ_{t-1} - η_t (sign(m_t) + λ θ_{t-1})
  """
  theta = _copy(params0)
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  trajectory, min_arg = [_copy(theta)], np.inf
  for t in range(steps):
    g = grad_fn(theta, t)
    eta = _rate(lr, t)
    for k in theta:
      m[k] = beta * m[k] + (1 - beta) * g[k]
      min_arg = min(min_arg, np.abs(m[k]).min())
      theta[k] = theta[k] - eta * (np.sign(m[k]) + weight_decay * theta[k])
    trajectory.append(_copy(theta))
  return trajectory, min_arg


def signum_numpy(params0, grad_fn, steps, lr: Rate, momentum):
  """signSGD (Algorithm 1) and Signum (Algorithm 3), Bernstein et al. 2018.

  m_k = β m_{k-1} + (1-β) g_k   (m_k = g_k for signSGD, β = 0)
  x_{k+1} = x_k - δ_k sign(m_k)
  """
  x = _copy(params0)
  m = {k: np.zeros_like(v) for k, v in x.items()}
  trajectory, min_arg = [_copy(x)], np.inf
  for t in range(steps):
    g = grad_fn(x, t)
    delta = _rate(lr, t)
    for k in x:
      m[k] = momentum * m[k] + (1 - momentum) * g[k]
      min_arg = min(min_arg, np.abs(m[k]).min())
      x[k] = x[k] - delta * np.sign(m[k])
    trajectory.append(_copy(x))
  return trajectory, min_arg


def adabelief_numpy(
    params0, grad_fn, steps, lr: Rate, b1, b2, eps, weight_decay=0.0
):
  """AdaBelief, Zhuang et al. 2020, Algorithm 2 (no AMSGrad, no rectification).

  m_t = β1 m_{t-1} + (1-β1) g_t
  s_t = β2 s_{t-1} + (1-β2)(g_t - m_t)² + ε
  m̂_t = m_t/(1-β1^t),  ŝ_t = s_t/(1-β2^t)
  θ_t = θ_{t-1} - α m̂_t/(√ŝ_t + ε)

  with the official code's decoupled decay θ ← θ(1 - αλ) (weight_decouple).
  """
  theta = _copy(params0)
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  s = {k: np.zeros_like(v) for k, v in theta.items()}
  trajectory = [_copy(theta)]
  for t in range(1, steps + 1):
    g = grad_fn(theta, t - 1)
    alpha = _rate(lr, t - 1)
    for k in theta:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      s[k] = b2 * s[k] + (1 - b2) * (g[k] - m[k]) ** 2 + eps
      m_hat = m[k] / (1 - b1**t)
      s_hat = s[k] / (1 - b2**t)
      theta[k] = theta[k] * (1 - alpha * weight_decay)
      theta[k] = theta[k] - alpha * m_hat / (np.sqrt(s_hat) + eps)
    trajectory.append(_copy(theta))
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


def newton_schulz_reference(g, steps=5, coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7):
  """Keller Jordan's ``zeropower_via_newtonschulz5`` in float64 numpy."""
  a, b, c = coefficients
  x = g.T if g.shape[-2] > g.shape[-1] else g
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if g.shape[-2] > g.shape[-1] else x


def muon_reference(w0, gradient, *, steps, lr, weight_decay, beta, nesterov=True,
                   ns_steps=5):
  """The published Muon step (github.com/KellerJordan/Muon, ``muon_update``),
  transcribed for a PyTorch-layout (out, in) matrix; returns the trajectory."""
  w, momentum, trajectory = np.array(w0, np.float64), np.zeros_like(w0), []
  for _ in range(steps):
    grad = gradient(w)
    momentum = momentum + (1 - beta) * (grad - momentum)  # lerp_(grad, 1 − β)
    update = grad + beta * (momentum - grad) if nesterov else momentum
    update = newton_schulz_reference(update, ns_steps)
    update = update * max(1, grad.shape[-2] / grad.shape[-1]) ** 0.5
    w = w * (1 - lr * weight_decay) - lr * update
    trajectory.append(w.copy())
  return trajectory
