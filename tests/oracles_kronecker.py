"""NumPy reference oracles for Kronecker preconditioning: Shampoo and SOAP.

* ``inverse_root``: (A + εI)^{-1/p} through an exact float64 eigendecomposition.
* ``shampoo_algorithm1``: Algorithm 1 of Gupta, Koren & Singer 2018 for a
  matrix parameter, line by line.
* ``soap_reference``: a NumPy transcription of ``SOAP.step`` of the reference
  implementation (github.com/nikhilvyas/SOAP, ``soap.py``; Vyas et al. 2024)
  for 1-D and 2-D parameters with its defaults ``merge_dims=False``,
  ``precondition_1d=False``, ``normalize_grads=False``, ``correct_bias=True``.

Both runners take ``grad_fn(params, t)`` and return the trajectory: the initial
point, then one entry per step (dicts of float64 arrays for SOAP, arrays for
Shampoo).
"""

from typing import Callable, Dict, List

import numpy as np

Params = Dict[str, np.ndarray]


def inverse_root(a: np.ndarray, p: float, eps: float = 0.0) -> np.ndarray:
  """(A + εI)^{-1/p} of a symmetric PSD matrix, by ``np.linalg.eigh`` in float64."""
  w, v = np.linalg.eigh(np.asarray(a, np.float64))
  return (v * (w + eps) ** (-1.0 / p)) @ v.T


def shampoo_algorithm1(
    w0: np.ndarray,
    grad_fn: Callable[[np.ndarray, int], np.ndarray],
    steps: int,
    lr: float,
    eps: float,
) -> List[np.ndarray]:
  """Shampoo, Gupta et al. 2018, Algorithm 1 (order-2 tensors).

  L_0 = εI_m, R_0 = εI_n; for t = 1, ..., T:
    G_t = ∇f_t(W_t)
    L_t = L_{t-1} + G_t G_tᵀ,  R_t = R_{t-1} + G_tᵀ G_t
    W_{t+1} = W_t − η L_t^{-1/4} G_t R_t^{-1/4}
  """
  w = np.array(w0, np.float64)
  m, n = w.shape
  left, right = eps * np.eye(m), eps * np.eye(n)
  trajectory = [w.copy()]
  for t in range(steps):
    g = grad_fn(w, t)
    left = left + g @ g.T
    right = right + g.T @ g
    w = w - lr * inverse_root(left, 4) @ g @ inverse_root(right, 4)
    trajectory.append(w.copy())
  return trajectory


def _project(x, basis, back):
  """``SOAP.project`` / ``project_back``: a tensordot per axis, or a roll."""
  for q in basis:
    if q is None:
      x = np.moveaxis(x, 0, -1)
    else:
      x = np.tensordot(x, q, axes=([0], [1 if back else 0]))
  return x


def _eigenbasis(stats):
  """``get_orthogonal_matrix``: eigenvectors by decreasing eigenvalue."""
  bases = []
  for m in stats:
    if m is None:
      bases.append(None)
      continue
    _, q = np.linalg.eigh(m + 1e-30 * np.eye(m.shape[0]))
    bases.append(np.flip(q, 1))
  return bases


def _power_iteration_basis(stats, bases, exp_avg_sq, refresh):
  """``get_orthogonal_matrix_QR`` (``refresh="eigh"``: eigh after the sort)."""
  new = []
  for axis, (m, o) in enumerate(zip(stats, bases)):
    if m is None:
      new.append(None)
      continue
    est_eig = np.diag(o.T @ m @ o)
    sort_idx = np.argsort(-est_eig, kind="stable")
    exp_avg_sq = np.take(exp_avg_sq, sort_idx, axis=axis)
    o = o[:, sort_idx]
    if refresh == "qr":
      new.append(np.linalg.qr(m @ o)[0])
    else:
      new.append(_eigenbasis([m])[0])
  return new, exp_avg_sq


def soap_reference(
    params0: Params,
    grad_fn: Callable[[Params, int], Params],
    steps: int,
    lr: float,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_b2: float = -1,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    precondition_every: int = 10,
    max_precondition_dim: int = 10000,
    refresh: str = "qr",
    decay: str = "reference",
) -> List[Params]:
  """``SOAP.step`` of the reference code, per parameter.

  First call: init L, R (``GG``) at 0, update them, Q = eigh basis, and skip
  the step. Later calls (``step`` counts them from 1):
    G' = project(G);  m ← β1 m + (1−β1) G';  v ← β2 v + (1−β2) G'²
    p ← p − lr·√(1−β2^step)/(1−β1^step) · project_back(m / (√v + ε))
    p ← p − lr·λ·p                              (``decay="reference"``)
    m ← project_back(m); GG ← lerp(GG, outer(G), 1−β_s);
    every ``precondition_every`` steps Q ← QR(GG·Q_sorted) (v permuted);
    m ← project(m)

  ``decay="adamw"`` instead applies p ← p − lr·(u + λ p) with the p from
  before the step, and also at the skipped first call (gradtx's chain
  ``scale_by_soap → decoupled_weight_decay → scale_by_learning_rate``).
  ``refresh="eigh"`` replaces the QR step by an eigendecomposition.
  """
  beta_s = shampoo_b2 if shampoo_b2 >= 0 else b2
  theta = {k: np.array(v, np.float64) for k, v in params0.items()}
  state = {k: {"step": 0} for k in theta}
  trajectory = [{k: v.copy() for k, v in theta.items()}]
  for t in range(steps):
    grads = grad_fn(trajectory[-1], t)
    for k, p in theta.items():
      g, s = np.asarray(grads[k], np.float64), state[k]
      if "Q" not in s:
        s["exp_avg"], s["exp_avg_sq"] = np.zeros_like(g), np.zeros_like(g)
        s["GG"] = [
            np.zeros((d, d)) if g.ndim > 1 and d <= max_precondition_dim
            else None for d in g.shape
        ]
        s["Q"] = None
        _update_preconditioner(g, s, beta_s, precondition_every, refresh)
        if decay == "adamw":
          theta[k] = p - lr * weight_decay * p
        continue
      grad_projected = _project(g, s["Q"], back=False)
      s["step"] += 1
      s["exp_avg"] = b1 * s["exp_avg"] + (1 - b1) * grad_projected
      s["exp_avg_sq"] = b2 * s["exp_avg_sq"] + (1 - b2) * grad_projected**2
      denom = np.sqrt(s["exp_avg_sq"]) + eps
      step_size = lr * np.sqrt(1 - b2 ** s["step"]) / (1 - b1 ** s["step"])
      norm_grad = _project(s["exp_avg"] / denom, s["Q"], back=True)
      if decay == "reference":
        p = p - step_size * norm_grad
        p = p - lr * weight_decay * p if weight_decay > 0 else p
      else:
        p = p - step_size * norm_grad - lr * weight_decay * p
      theta[k] = p
      _update_preconditioner(g, s, beta_s, precondition_every, refresh)
    trajectory.append({k: v.copy() for k, v in theta.items()})
  return trajectory


def _update_preconditioner(g, s, beta_s, precondition_every, refresh):
  """``SOAP.update_preconditioner`` without merge_dims / precondition_1d."""
  if s["Q"] is not None:
    s["exp_avg"] = _project(s["exp_avg"], s["Q"], back=True)
  if g.ndim > 1:
    for axis, m in enumerate(s["GG"]):
      if m is None:
        continue
      others = [i for i in range(g.ndim) if i != axis]
      outer = np.tensordot(g, g, axes=(others, others))
      s["GG"][axis] = m + (1 - beta_s) * (outer - m)
  if s["Q"] is None:
    s["Q"] = _eigenbasis(s["GG"])
  if s["step"] > 0 and s["step"] % precondition_every == 0:
    s["Q"], s["exp_avg_sq"] = _power_iteration_basis(
        s["GG"], s["Q"], s["exp_avg_sq"], refresh
    )
  if s["step"] > 0:
    s["exp_avg"] = _project(s["exp_avg"], s["Q"], back=False)


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
