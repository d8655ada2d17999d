"""Objectives for trajectory tests, and the trajectory types.

Every problem draws its data once from a seeded NumPy generator, so a
gradtx run and a reference run see the same mini-batches; gradients depend
on the parameters, so that two optimizers with different semantics drift
apart instead of merely producing different numbers once.
"""

from typing import Callable, Dict, List, Union

import jax
import jax.numpy as jnp
import numpy as np

Params = Dict[str, np.ndarray]
Trajectory = List[Params]
GradFn = Callable[[Params, int], Params]
Rate = Union[float, Callable[[int], float]]


def float64_of(x) -> np.dtype:
  """complex128 for complex values, float64 otherwise."""
  return np.dtype(np.complex128 if np.iscomplexobj(x) else np.float64)


def copy_params(params) -> Params:
  """A float64 (complex128) NumPy copy of a ``{name: array}`` dict."""
  return {k: np.array(v, dtype=float64_of(v)) for k, v in params.items()}


def rate_at(rate: Rate, t: int) -> float:
  """A constant rate, or a schedule evaluated at step ``t``."""
  return rate(t) if callable(rate) else rate


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


class LeastSquaresProblem:
  """Mini-batch least squares, one independent problem per parameter.

  A matrix W (m × n) has loss ½‖A_t W − B_t‖²/batch, a vector b has
  ½‖b − c_t‖², with a fresh random (A_t, B_t, c_t) at every step t: gradients
  depend on the parameters, and their row and column spaces change from step
  to step, so the statistics become full rank and the trajectories are stable
  under round-off (a fixed batch makes Shampoo amplify round-off ~2× a step
  in the directions the gradients never reach).
  """

  def __init__(self, shapes: Dict[str, tuple], steps: int, seed: int = 0, batch: int = 16):
    rng = np.random.default_rng(seed)
    self.batch = batch
    self.data, self.params0 = {}, {}
    for name, shape in shapes.items():
      if len(shape) == 2:
        self.data[name] = (rng.standard_normal((steps, batch, shape[0])),
                           rng.standard_normal((steps, batch, shape[1])))
      else:
        self.data[name] = (rng.standard_normal((steps, *shape)),)
      self.params0[name] = 0.3 * rng.standard_normal(shape)

  def grad(self, params: Params, t: int) -> Params:
    grads = {}
    for name, data in self.data.items():
      if len(data) == 2:
        a, b = data[0][t], data[1][t]
        grads[name] = a.T @ (a @ params[name] - b) / self.batch
      else:
        grads[name] = params[name] - data[0][t]
    return grads


class MlpProblem:
  """A 2-layer tanh MLP regressing sin(x·A), a fresh mini-batch every step.

  ``loss(p, x, y)`` is the mean squared error in JAX (the torch runners have
  the same formula in torch); ``xs[t]``, ``ys[t]`` is mini-batch ``t``.
  """

  def __init__(self, seed=7, steps=25, batch=16, n_in=4, hidden=8, n_out=2):
    rng = np.random.default_rng(seed)
    self.steps = steps
    self.xs = rng.normal(size=(steps, batch, n_in))
    self.ys = np.sin(self.xs @ rng.normal(size=(n_in, n_out)))
    self.params0 = {
        "w1": 0.7 * rng.normal(size=(n_in, hidden)), "b1": 0.1 * rng.normal(size=(hidden,)),
        "w2": 0.5 * rng.normal(size=(hidden, n_out)), "b2": 0.1 * rng.normal(size=(n_out,)),
    }

  @staticmethod
  def loss(p, x, y):
    out = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return jnp.mean((out - y) ** 2)

  def grads(self, params: Params, t: int) -> Params:
    """The float64 gradient of mini-batch ``t`` as NumPy (a ``GradFn``)."""
    with jax.enable_x64(True):
      g = jax.grad(self.loss)({k: jnp.asarray(v) for k, v in params.items()},
                              self.xs[t], self.ys[t])
      return {k: np.asarray(v) for k, v in g.items()}


def quadratic_grads(params0: Params, seed: int = 0, noise: float = 0.3) -> GradFn:
  """g_t(p) = c ⊙ (p − p*) + noise_t, per leaf: curvatures differ by row."""
  rng = np.random.default_rng(seed)
  target = {k: rng.normal(size=v.shape) for k, v in params0.items()}
  curvature = {
      k: np.exp(rng.normal(size=v.shape[:1] + (1,) * (v.ndim - 1)))
      for k, v in params0.items()
  }
  keys = sorted(params0)

  def grad(params: Params, t: int) -> Params:
    step_rng = np.random.default_rng([seed, t])
    return {
        k: curvature[k] * (params[k] - target[k])
        + noise * step_rng.normal(size=params[k].shape)
        for k in keys
    }

  return grad


def complex_quadratic_grads(params0: Params, seed: int = 0, noise: float = 0.3) -> GradFn:
  """g_t(z) = c ⊙ (z − z*) + noise_t for complex leaves: the conjugate
  (Wirtinger) gradient ∂L/∂z̄ of L = Σ c|z − z*|², which is what torch puts in
  ``.grad`` and what README asks of a gradtx user; real and imaginary parts of
  the noise differ in size, so per-part and shared second moments differ."""
  rng = np.random.default_rng(seed)
  target = {k: rng.normal(size=v.shape) + 1j * rng.normal(size=v.shape)
            for k, v in params0.items()}
  curvature = {k: np.exp(rng.normal(size=v.shape)) for k, v in params0.items()}

  def grad(params: Params, t: int) -> Params:
    step_rng = np.random.default_rng([seed, t])
    return {
        k: curvature[k] * (params[k] - target[k])
        + noise * (step_rng.normal(size=params[k].shape)
                   + 3j * step_rng.normal(size=params[k].shape))
        for k in sorted(params0)
    }

  return grad
