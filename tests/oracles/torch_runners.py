"""Every PyTorch reference loop of the suite, in float64.

Each runner takes the NumPy gradients (or the problem) the gradtx run sees
and returns a trajectory (``problems.Trajectory``).
"""

from typing import Callable, Dict, Optional

import adam_mini  # the official Adam-mini package
import numpy as np
import torch

from tests.oracles.problems import (
  GradFn,
  MlpProblem,
  Params,
  Rate,
  Trajectory,
  complex_quadratic_grads,
  copy_params,
  rate_at,
)
from tests.oracles.runners import run_gradtx


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
  dtype = lambda v: torch.complex128 if np.iscomplexobj(v) else torch.float64
  tensors = {
      k: torch.tensor(v, dtype=dtype(v), requires_grad=True)
      for k, v in params0.items()
  }
  optimizer = make_optimizer(tensors)
  scheduler = (
      torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
      if lr_lambda is not None
      else None
  )
  trajectory = [copy_params(params0)]
  for t in range(steps):
    grads = grad_fn(trajectory[-1], t)
    for k, p in tensors.items():
      p.grad = torch.tensor(grads[k], dtype=dtype(grads[k]))
    if before_step is not None:
      before_step(optimizer, t)
    optimizer.step()
    if scheduler is not None:
      scheduler.step()
    trajectory.append({k: p.detach().numpy().copy() for k, p in tensors.items()})
  return trajectory


def run_adam_mini_official(params0: Params, grad_fn: GradFn, steps: int, lr: Rate,
                           betas, eps, weight_decay, *, dim, n_heads) -> Trajectory:
  """The official Adam-mini (PyPI ``adam-mini`` 1.1.1) in float64.

  ``params0`` and the gradients are PyTorch-named, PyTorch-layout (out, in)
  arrays: the official code picks each block by name and averages rows.
  """
  params = {k: torch.nn.Parameter(torch.tensor(np.ascontiguousarray(v, np.float64)))
            for k, v in params0.items()}
  opt = adam_mini.Adam_mini(
      params.items(), lr=rate_at(lr, 0), betas=betas, eps=eps,
      weight_decay=weight_decay, dim=dim, n_heads=n_heads, verbose=False)
  trajectory = [copy_params(params0)]
  for t in range(steps):
    for group in opt.param_groups:
      group["lr"] = rate_at(lr, t)
    grads = grad_fn(trajectory[-1], t)
    for k, p in params.items():
      p.grad = torch.tensor(np.ascontiguousarray(grads[k], np.float64))
    opt.step()
    trajectory.append({k: p.detach().numpy().copy() for k, p in params.items()})
  return trajectory


def _mlp_loss(p, x, y):
  """``MlpProblem.loss`` in torch."""
  out = torch.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  return torch.mean((out - y) ** 2)


def run_torch_sam(make_base, problem: MlpProblem, rho: float, adaptive: bool) -> Trajectory:
  """SAM / ASAM as github.com/davda54/sam writes Algorithm 1 of Foret et al.
  2021, by hand: ``first_step`` adds ε = ρ·s⊙g/(‖√s⊙g‖ + 1e-12) in place
  (s = w² for ``adaptive``, else 1), the gradient is taken again, and
  ``second_step`` restores w and steps the base (``make_base`` builds it from
  a list of tensors)."""
  p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
       for k, v in problem.params0.items()}
  base = make_base(list(p.values()))
  trajectory = [problem.params0]
  for t in range(problem.steps):
    x, y = torch.tensor(problem.xs[t]), torch.tensor(problem.ys[t])
    _mlp_loss(p, x, y).backward()
    with torch.no_grad():
      norm = torch.norm(torch.stack([
          ((v.abs() if adaptive else 1.0) * v.grad).norm(p=2) for v in p.values()
      ]), p=2)
      scale = rho / (norm + 1e-12)
      old = {k: v.clone() for k, v in p.items()}
      for v in p.values():
        v.add_((torch.pow(v, 2) if adaptive else 1.0) * v.grad * scale)
    base.zero_grad()
    _mlp_loss(p, x, y).backward()
    with torch.no_grad():
      for k, v in p.items():
        v.copy_(old[k])
    base.step()
    base.zero_grad()
    trajectory.append({k: v.detach().numpy().copy() for k, v in p.items()})
  return trajectory


def run_torch_lookahead(make_fast, params0: Params, grad_fn: GradFn, steps: int, k: int,
                        alpha: float, reset: bool) -> Trajectory:
  """Lookahead, Zhang et al. 2019, Algorithm 1, around a ``torch.optim``
  optimizer (``make_fast`` builds it from a list of tensors):
  φ ← φ + α(θ − φ), θ ← φ after every k fast steps; with ``reset`` the fast
  optimizer is built afresh at each sync."""
  fast = {n: torch.tensor(v, dtype=torch.float64) for n, v in params0.items()}
  slow = {n: t.clone() for n, t in fast.items()}
  optimizer = make_fast(list(fast.values()))
  trajectory = [{n: np.array(v) for n, v in params0.items()}]
  for t in range(1, steps + 1):
    grads = grad_fn(trajectory[-1], t - 1)
    for n, p in fast.items():
      p.grad = torch.tensor(grads[n], dtype=torch.float64)
    optimizer.step()
    if t % k == 0:
      with torch.no_grad():
        for n, p in fast.items():
          slow[n] += alpha * (p - slow[n])
          p.copy_(slow[n])
      if reset:
        optimizer = make_fast(list(fast.values()))
    trajectory.append({n: p.numpy().copy() for n, p in fast.items()})
  return trajectory


def run_gradtx_and_torch(tx, make_torch, problem, steps: int, **torch_kwargs):
  """(gradtx trajectory, ``run_torch`` trajectory) on ``problem``, float64."""
  ours = run_gradtx(tx, problem.params0, problem.grad, steps)
  return ours, run_torch(make_torch, problem.params0, problem.grad, steps, **torch_kwargs)


def run_complex_gradtx_and_torch(tx, make_torch, steps: int = 30, seed: int = 0):
  """(gradtx, ``run_torch``) trajectories in complex128 on a complex quadratic
  (``problems.complex_quadratic_grads``: a vector and a matrix leaf)."""
  rng = np.random.default_rng(seed)
  params0 = {k: rng.normal(size=shape) + 1j * rng.normal(size=shape)
             for k, shape in (("z", (5,)), ("w", (3, 4)))}
  grad = complex_quadratic_grads(params0, seed)
  return (run_gradtx(tx, params0, grad, steps),
          run_torch(make_torch, params0, grad, steps))
