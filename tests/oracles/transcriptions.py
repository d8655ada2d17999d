"""NumPy transcriptions of papers' pseudo-code and of reference implementations.

Each follows its source line by line, in float64, so that a gradtx
trajectory can be compared with it to round-off. The sign methods also return
the smallest |argument| that was passed to sign(), so that a test can check
the run had no near-ties, where round-off could legitimately flip a sign.

* ``lion_numpy``, ``tiger_numpy``, ``signum_numpy``, ``adabelief_numpy``:
  the papers' pseudo-code (Lion, Tiger, signSGD/Signum, AdaBelief).
* ``lars_numpy``, ``lamb_numpy``: the large-batch papers' algorithms.
* ``newton_schulz_reference``, ``muon_reference``: Keller Jordan's Muon.
* ``inverse_root``: (A + εI)^{-1/p} through an exact float64 eigendecomposition.
* ``shampoo_algorithm1``: Algorithm 1 of Gupta, Koren & Singer 2018 for a
  matrix parameter, line by line.
* ``soap_reference``: a NumPy transcription of ``SOAP.step`` of the reference
  implementation (github.com/nikhilvyas/SOAP, ``soap.py``; Vyas et al. 2024)
  for 1-D and 2-D parameters with its defaults ``merge_dims=False``,
  ``precondition_1d=False``, ``normalize_grads=False``, ``correct_bias=True``.
* ``bnb_dynamic_map``: bitsandbytes' ``create_dynamic_map`` transcribed to
  NumPy (float32 ``linspace`` as torch's), the code map of 8-bit optimizers.
* ``nearest_codes``: brute-force block-wise quantization (argmin over all 256
  codes), to check the fast encoder against.
* ``dion_step``: Dion's update step (github.com/microsoft/dion,
  ``dion_simple.py``) for one matrix; ``matrix_with_spectrum`` builds its
  test matrices.
* ``max_logits``, ``qk_clip``: Kimi K2's QK-Clip (Algorithm 1 of the K2
  report) for multi-head attention.
* ``mars_official``: ``MARS.step`` of AGI-Arena/MARS (MARS-AdamW, approx and
  exact).
* ``hyperball_marin``: Marin's ``scale_by_adamh`` / ``scale_with_muonh``
  (AdamH, MuonH) with their routing, for 2-D matrices.
* ``caution_c_optim``, ``c_adamw_numpy``: the cautious mask and C-AdamW's
  step of the Cautious Optimizers reference code (github.com/kyleliang919/
  C-Optim, ``c_adamw.py``); ``caution_levanter`` (Levanter's
  ``scale_by_cautious``), ``caution_heavyball`` and ``heavyball_update``
  (heavyball's ``_compilable_cautioning`` and ``_compilable_update_``, with
  its cautious weight decay; ``adamw_heavyball_numpy``: AdamW with those
  flags); ``nanogpt_cautious_step`` (the modded-nanogpt / nanochat Muon
  step's cautious weight decay).
* ``psgd_kron_reference``: psgd-jax's ``scale_by_kron`` (PSGD Kron; its
  einsum expressions, ``psgd_init_q_exprs``, and ``psgd_norm_lower_bound``)
  with the random probes passed in.
* ``novograd_numpy``: NovoGrad, Algorithm 1 of Ginsburg et al. 2019;
  ``fromage_official``: ``Fromage.step`` of github.com/jxbz/fromage.
* ``adan_official``: ``_single_tensor_adan`` of github.com/sail-sg/Adan;
  ``sm3_official``: ``SM3Optimizer._apply_dense`` of google-research's
  ``sm3/sm3.py`` (TensorFlow), in NumPy.
* ``acprop_official``: ``ACProp.step`` of github.com/juntang-zhuang/
  ACProp-Optimizer (``rectify=False``).
"""

from typing import Callable, List, Optional

import numpy as np

from tests.oracles.problems import Params, Rate, copy_params, rate_at


def lion_numpy(params0, grad_fn, steps, lr: Rate, b1, b2, weight_decay=0.0):
  """Lion, Chen et al. 2023, Program 1 / Algorithm 2.

  c_t = β1 m_{t-1} + (1-β1) g_t
  θ_t = θ_{t-1} - η_t (sign(c_t) + λ θ_{t-1})
  m_t = β2 m_{t-1} + (1-β2) g_t
  """
  theta = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  trajectory, min_arg = [copy_params(theta)], np.inf
  for t in range(steps):
    g = grad_fn(theta, t)
    eta = rate_at(lr, t)
    for k in theta:
      c = b1 * m[k] + (1 - b1) * g[k]
      min_arg = min(min_arg, np.abs(c).min())
      theta[k] = theta[k] - eta * (np.sign(c) + weight_decay * theta[k])
      m[k] = b2 * m[k] + (1 - b2) * g[k]
    trajectory.append(copy_params(theta))
  return trajectory, min_arg


def tiger_numpy(params0, grad_fn, steps, lr: Rate, beta, weight_decay=0.0):
  """Tiger, Su Jianlin 2023 (bojone/tiger), without the RMS lr scaling.

  m_t = β m_{t-1} + (1-β) g_t
  θ_t = θ_{t-1} - η_t (sign(m_t) + λ θ_{t-1})
  """
  theta = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  trajectory, min_arg = [copy_params(theta)], np.inf
  for t in range(steps):
    g = grad_fn(theta, t)
    eta = rate_at(lr, t)
    for k in theta:
      m[k] = beta * m[k] + (1 - beta) * g[k]
      min_arg = min(min_arg, np.abs(m[k]).min())
      theta[k] = theta[k] - eta * (np.sign(m[k]) + weight_decay * theta[k])
    trajectory.append(copy_params(theta))
  return trajectory, min_arg


def signum_numpy(params0, grad_fn, steps, lr: Rate, momentum):
  """signSGD (Algorithm 1) and Signum (Algorithm 3), Bernstein et al. 2018.

  m_k = β m_{k-1} + (1-β) g_k   (m_k = g_k for signSGD, β = 0)
  x_{k+1} = x_k - δ_k sign(m_k)
  """
  x = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in x.items()}
  trajectory, min_arg = [copy_params(x)], np.inf
  for t in range(steps):
    g = grad_fn(x, t)
    delta = rate_at(lr, t)
    for k in x:
      m[k] = momentum * m[k] + (1 - momentum) * g[k]
      min_arg = min(min_arg, np.abs(m[k]).min())
      x[k] = x[k] - delta * np.sign(m[k])
    trajectory.append(copy_params(x))
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
  theta = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  s = {k: np.zeros_like(v) for k, v in theta.items()}
  trajectory = [copy_params(theta)]
  for t in range(1, steps + 1):
    g = grad_fn(theta, t - 1)
    alpha = rate_at(lr, t - 1)
    for k in theta:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      s[k] = b2 * s[k] + (1 - b2) * (g[k] - m[k]) ** 2 + eps
      m_hat = m[k] / (1 - b1**t)
      s_hat = s[k] / (1 - b2**t)
      theta[k] = theta[k] * (1 - alpha * weight_decay)
      theta[k] = theta[k] - alpha * m_hat / (np.sqrt(s_hat) + eps)
    trajectory.append(copy_params(theta))
  return trajectory


def _trust_ratio(w, denominator, trust_coefficient=1.0):
  """‖w‖-relative step size; 1 where ‖w‖ or the denominator is 0."""
  w_norm = np.linalg.norm(w)
  if w_norm == 0 or denominator == 0:
    return 1.0
  return trust_coefficient * w_norm / denominator


def lars_numpy(params0, grad_fn, steps, lr: Rate, momentum, weight_decay,
               trust_coefficient, *, eps=0.0, nesterov=False, adapted=None):
  """LARS, You, Gitman & Ginsburg 2017, Algorithm 1 (eq. 6 with ε).

  λ = η‖w‖/(‖g‖ + β‖w‖ + ε); v ← m v + γ_t λ (g + βw); w ← w − v. Leaves not
  in ``adapted`` (default: all) take v ← m v + γ_t g. With ``nesterov`` the
  step is γ_t λ (g + βw) + m v (torch's look-ahead, not in the paper).
  """
  w = copy_params(params0)
  adapted = set(w) if adapted is None else set(adapted)
  v = {k: np.zeros_like(x) for k, x in w.items()}
  trajectory = [copy_params(w)]
  for t in range(steps):
    g, gamma = grad_fn(w, t), rate_at(lr, t)
    for k in w:
      if k in adapted:
        denominator = np.linalg.norm(g[k]) + weight_decay * np.linalg.norm(w[k]) + eps
        local = _trust_ratio(w[k], denominator, trust_coefficient)
        step = gamma * local * (g[k] + weight_decay * w[k])
      else:
        step = gamma * g[k]
      v[k] = momentum * v[k] + step
      w[k] = w[k] - (step + momentum * v[k] if nesterov else v[k])
    trajectory.append(copy_params(w))
  return trajectory


def lamb_numpy(params0, grad_fn, steps, lr: Rate, b1, b2, eps, weight_decay,
               *, decayed=None):
  """LAMB, You et al. 2020, Algorithm 2 with φ(z) = z.

  r = m̂/(√v̂ + ε); w ← w − η ‖w‖/‖r + λw‖ (r + λw); the decay only on the
  ``decayed`` leaves (default: all), the ratio on every leaf.
  """
  w = copy_params(params0)
  decayed = set(w) if decayed is None else set(decayed)
  m = {k: np.zeros_like(x) for k, x in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  trajectory = [copy_params(w)]
  for t in range(steps):
    g, eta = grad_fn(w, t), rate_at(lr, t)
    for k in w:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      r = (m[k] / (1 - b1 ** (t + 1))) / (np.sqrt(v[k] / (1 - b2 ** (t + 1))) + eps)
      u = r + (weight_decay * w[k] if k in decayed else 0.0)
      w[k] = w[k] - eta * _trust_ratio(w[k], np.linalg.norm(u)) * u
    trajectory.append(copy_params(w))
  return trajectory


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
                   ns_steps=5, cautious_weight_decay=False):
  """The published Muon step (github.com/KellerJordan/Muon, ``muon_update``),
  transcribed for a PyTorch-layout (out, in) matrix; returns the trajectory.
  ``cautious_weight_decay``: the parameter step of modded-nanogpt's record
  instead (``nanogpt_cautious_step``)."""
  w, momentum, trajectory = np.array(w0, np.float64), np.zeros_like(w0), []
  for _ in range(steps):
    grad = gradient(w)
    momentum = momentum + (1 - beta) * (grad - momentum)  # lerp_(grad, 1 − β)
    update = grad + beta * (momentum - grad) if nesterov else momentum
    update = newton_schulz_reference(update, ns_steps)
    update = update * max(1, grad.shape[-2] / grad.shape[-1]) ** 0.5
    if cautious_weight_decay:
      w = nanogpt_cautious_step(w, update, lr, weight_decay)
    else:
      w = w * (1 - lr * weight_decay) - lr * update
    trajectory.append(w.copy())
  return trajectory



# --- The fourth quadrant: NorMuon, AdaMuon, V-Muon ---------------------------


def _muon_momentum(grad, momentum, beta, nesterov):
  momentum = momentum + (1 - beta) * (grad - momentum)  # lerp_(grad, 1 − β)
  return momentum, (grad + beta * (momentum - grad) if nesterov else momentum)


def normuon_reference(w0, gradient, *, steps, lr, weight_decay=0.0, beta=0.95,
                      beta2=0.95, nesterov=True):
  """``normuon_update`` and ``SingleDeviceNorMuon.step`` (github.com/zichongli5/
  NorMuon) for a PyTorch-layout (out, in) matrix, float64; the trajectory."""
  w = np.array(w0, np.float64)
  momentum, second, trajectory = np.zeros_like(w), np.zeros((w.shape[0], 1)), []
  for _ in range(steps):
    grad = gradient(w)
    momentum, update = _muon_momentum(grad, momentum, beta, nesterov)
    update = newton_schulz_reference(update)
    vnorm = np.linalg.norm(update)
    second = second + (1 - beta2) * (np.mean(update * update, axis=-1, keepdims=True) - second)
    update = update / (np.sqrt(second) + 1e-10)
    update = update * vnorm / (np.linalg.norm(update) + 1e-10)
    update = update * max(1, grad.shape[-2] / grad.shape[-1]) ** 0.5
    w = w * (1 - lr * weight_decay) - lr * update
    trajectory.append(w.copy())
  return trajectory


def adamuon_reference(w0, gradient, *, steps, lr, weight_decay=0.01, beta=0.95,
                      beta2=0.999, eps=1e-8, nesterov=True, sign=False, later=False):
  """``AdaMuon.step`` (github.com/Chongjie-Si/AdaMuon, ``adamuon.py`` at
  3b84e03, the first release) for an (out, in) matrix, float64 (the
  reference's bf16 iterations aside). ``sign``: Algorithm 1 of the paper's
  v2/v3, O_t = NewtonSchulz(Sign(M_t)). ``later``: the repository's later
  ``gpt2/models/optimizers/adamuon.py``: sign, v decayed by ``beta``
  (``v.mul_(momentum)``), no bias correction."""
  if later:
    sign, beta2 = True, beta
  w = np.array(w0, np.float64)
  momentum, v, trajectory = np.zeros_like(w), np.zeros_like(w), []
  for step in range(1, steps + 1):
    grad = gradient(w)
    momentum, g = _muon_momentum(grad, momentum, beta, nesterov)
    g = newton_schulz_reference(np.sign(g) if sign else g)
    v = v * beta2 + (1 - beta2) * g * g
    g = g / (np.sqrt(v if later else v / (1 - beta2**step)) + eps)
    g = g * min(w.shape) ** 0.5 / (np.linalg.norm(g) + eps)
    w = w * (1 - lr * weight_decay) - lr * 0.2 * max(w.shape) ** 0.5 * g
    trajectory.append(w.copy())
  return trajectory


def vmuon_reference(w0, gradient, *, steps, lr, beta=0.95, b2=0.95, eps=1e-3):
  """V-Muon's equations (``go.vmuon``'s docstring) in float64 numpy, flax
  (in, out) layout: momentum, factored metrics, msign in their geometry by
  Keller Jordan's iteration, the msign's norm restored, the Jordan scale."""
  w = np.array(w0, np.float64)
  momentum, r, c = np.zeros_like(w), np.zeros((w.shape[0], 1)), np.zeros((1, w.shape[1]))
  trajectory = []
  for _ in range(steps):
    grad = gradient(w)
    momentum, m = _muon_momentum(grad, momentum, beta, True)
    r = b2 * r + (1 - b2) * np.mean(m * m, axis=1, keepdims=True)
    c = b2 * c + (1 - b2) * np.mean(m * m, axis=0, keepdims=True)
    d_left = np.sqrt(r / np.mean(r)) + eps  # the bias corrections cancel in the ratio
    d_right = np.sqrt(c / np.mean(c)) + eps
    whiten = 1 / np.sqrt(d_left * d_right)
    o = newton_schulz_reference(m * whiten)
    phi = o * whiten
    phi = phi * np.linalg.norm(o) / np.linalg.norm(phi)
    w = w - lr * max(1, w.shape[1] / w.shape[0]) ** 0.5 * phi
    trajectory.append(w.copy())
  return trajectory

# --- Kronecker preconditioning: Shampoo and SOAP -----------------------------


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
    momentum: float = 0.0,
    nesterov: bool = False,
) -> List[np.ndarray]:
  """Shampoo, Gupta et al. 2018, Algorithm 1 (order-2 tensors).

  L_0 = εI_m, R_0 = εI_n; for t = 1, ..., T:
    G_t = ∇f_t(W_t)
    L_t = L_{t-1} + G_t G_tᵀ,  R_t = R_{t-1} + G_tᵀ G_t
    W_{t+1} = W_t − η L_t^{-1/4} G_t R_t^{-1/4}

  With ``momentum`` β the direction D_t = L_t^{-1/4} G_t R_t^{-1/4} is
  averaged first (momentum after preconditioning, as in Anil et al. 2020):
  m_t = β m_{t-1} + (1 − β) D_t, m̂_t = m_t / (1 − βᵗ), and the step is
  η m̂_t, or η (β m̂_t + (1 − β) D_t) with ``nesterov``.
  """
  w = np.array(w0, np.float64)
  m, n = w.shape
  left, right = eps * np.eye(m), eps * np.eye(n)
  average = np.zeros_like(w)
  trajectory = [w.copy()]
  for t in range(1, steps + 1):
    g = grad_fn(w, t - 1)
    left = left + g @ g.T
    right = right + g.T @ g
    direction = inverse_root(left, 4) @ g @ inverse_root(right, 4)
    step = direction
    if momentum:
      average = momentum * average + (1 - momentum) * direction
      step = average / (1 - momentum**t)
      if nesterov:
        step = momentum * step + (1 - momentum) * direction
    w = w - lr * step
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
    then: Optional[Callable[[np.ndarray], np.ndarray]] = None,
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
  ``then`` maps each step's direction (before lr) of a matrix, e.g. by
  Newton–Schulz for SOAP-then-orthogonalize (with ``decay="adamw"``).
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
      if then is not None and g.ndim > 1:
        norm_grad, step_size = then(step_size / lr * norm_grad), lr
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


# --- 8-bit states ------------------------------------------------------------


def bnb_dynamic_map(
    signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
  """bitsandbytes' ``create_dynamic_map``: the sorted 256-entry code map."""
  data = []
  non_sign_bits = total_bits - 1
  additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
  for i in range(max_exponent_bits):
    fraction_items = int(
        2 ** (i + non_sign_bits - max_exponent_bits) + 1
        if signed
        else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
    )
    boundaries = np.linspace(0.1, 1, fraction_items, dtype=np.float32)
    means = (boundaries[:-1] + boundaries[1:]) / 2.0
    data += (10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
    if signed:
      data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
  assert additional_items == 0
  data.append(0)
  data.append(1.0)
  assert len(data) == 2**total_bits
  return np.sort(np.asarray(data, np.float32))


def nearest_codes(x: np.ndarray, table: np.ndarray, block_size: int):
  """(indices, scales) of brute-force block-wise absmax quantization."""
  flat = np.ravel(x).astype(np.float32)
  pad = -flat.size % block_size
  blocks = np.pad(flat, (0, pad)).reshape(-1, block_size)
  scales = np.abs(blocks).max(axis=1)
  normalized = blocks / np.where(scales > 0, scales, 1)[:, None]
  index = np.abs(normalized[..., None] - table).argmin(-1)
  return index, scales


# --- AdamW with a scheduled weight decay (tests/optimizers/test_scaling_rules.py)

def adamw_numpy(params0, grad_fn, steps, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
  """Algorithm 2 of Loshchilov & Hutter 2019 in torch.optim.AdamW's form,
  p ← p − η_t (m̂_t/(√v̂_t + ε) + λ_t p), line by line in float64, with η_t and
  λ_t functions of the 0-based step t. Returns the trajectory: the initial
  point, then one dict per step."""
  params = {k: np.array(v, np.float64) for k, v in params0.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  trajectory = [{k: p.copy() for k, p in params.items()}]
  for t in range(steps):
    grads = grad_fn(trajectory[-1], t)
    for k in params:
      g = grads[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1 ** (t + 1))
      v_hat = v[k] / (1 - b2 ** (t + 1))
      params[k] = params[k] - lr(t) * (
          m_hat / (np.sqrt(v_hat) + eps) + weight_decay(t) * params[k])
    trajectory.append({k: p.copy() for k, p in params.items()})
  return trajectory


# -------- Dion (low-rank orthogonalization)
#
# Dion's update step (github.com/microsoft/dion), transcribed to NumPy.
#
# ``dion_step`` is ``dion_update`` of ``dion/dion_simple.py`` without the
# parameter update (it returns the orthogonalized direction P Qᵀ instead), with
# the transposition of the reference implementation
# (``dion_reference_optax.py``: a wide matrix, m < n, is worked on as its
# transpose so that Q sits on the short side) and its all-zero guard
# (``fix_all_zero_or_nan``: P = 0, R = Q):
#
#     M ← M + G;  P = QR(M Q).Q;  R = Mᵀ P;  M ← M − (1 − μ) P Rᵀ;
#     Q ← R / (‖R‖_col + ε);  direction = P Qᵀ


def dion_step(g, m, q, mu, eps=1e-8):
  """One step for one matrix: returns (direction, new M, new Q), float64."""
  m = m + g
  wide = m.shape[0] < m.shape[1]
  b = m.T if wide else m
  p, _ = np.linalg.qr(b @ q)
  r = b.T @ p
  if not np.any(b):
    p, r = np.zeros_like(p), q
  low_rank = p @ r.T
  m = m - (1 - mu) * (low_rank.T if wide else low_rank)
  q = r / (np.linalg.norm(r, axis=0, keepdims=True) + eps)
  direction = p @ q.T
  return (direction.T if wide else direction), m, q


def matrix_with_spectrum(m, n, singular_values, seed=0):
  """U diag(s) Vᵀ with random orthonormal U (m × r), V (n × r)."""
  rng = np.random.default_rng(seed)
  r = len(singular_values)
  u, _ = np.linalg.qr(rng.normal(size=(m, r)))
  v, _ = np.linalg.qr(rng.normal(size=(n, r)))
  return (u * singular_values) @ v.T, u, v


# -------- QK-clip
#
# Kimi K2's QK-Clip (MuonClip), transcribed to NumPy for multi-head attention.
#
# Kimi Team, "Kimi K2: Open Agentic Intelligence", arXiv 2507.20534,
# Algorithm 1 (MuonClip), the QK-Clip part, after the optimizer step::
#
#     for each attention head h in every attention layer:
#         obtain S_max^h already computed during the forward pass
#         if S_max^h > τ:
#             γ ← τ / S_max^h
#             W_qc^h ← W_qc^h · √γ;  W_kc^h ← W_kc^h · √γ
#             W_qr^h ← W_qr^h · γ          (MLA's rotary query; absent in MHA)
#
# with S_max^h = max over the batch of max_{i,j} q_i^h · k_j^h / √d (§2.1).
# Plain multi-head attention has only the q^C, k^C parts. K2's projections
# have no biases; the test models do, and they are scaled with their kernels
# (q = x W_q + b_q then scales by √γ as a whole, which keeps the logits'
# scaling exact).


def max_logits(q, k, causal=True):
  """S_max^h for q, k of shape (batch, length, heads, depth)."""
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if causal:
    length = q.shape[1]
    logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
  return logits.max(axis=(0, 2, 3))


def qk_clip(w_q, w_k, s_max, tau, b_q=None, b_k=None):
  """Algorithm 1's clip of per-head (…, heads, depth) query/key weights."""
  w_q, w_k = w_q.copy(), w_k.copy()
  b_q = None if b_q is None else b_q.copy()
  b_k = None if b_k is None else b_k.copy()
  for h in range(len(s_max)):
    if s_max[h] > tau:
      gamma = tau / s_max[h]
      w_q[..., h, :] *= np.sqrt(gamma)
      w_k[..., h, :] *= np.sqrt(gamma)
      if b_q is not None:
        b_q[h] *= np.sqrt(gamma)
        b_k[h] *= np.sqrt(gamma)
  return w_q, w_k, b_q, b_k


# -------- MARS (AGI-Arena/MARS, ``MARS/optimizers/mars.py``)
#
# ``MARS.step`` and ``update_fn`` with ``mars_type="mars-adamw"``, no AMSGrad,
# line by line in NumPy: 2-D parameters (or all, ``optimize_1d``) take the
# clipped variance-reduced c into Adam's moments; the others AdamW with
# ``betas_1d`` at lr·(lr_1d/lr) and ``weight_decay_1d``. ``last_grad`` starts
# at zero. Approx: last_grad ← grad after each step. Exact (``train_mars.py``
# with ``is_approx=False``): before step t the gradient at x_t on batch t+1 is
# stored (``update_previous_grad``) and becomes last_grad after the step
# (``update_last_grad``): at step t, last_grad = ∇f(x_{t−1}, ξ_t).


def mars_official(params0, grad_fn, steps, *, lr=3e-3, betas=(0.95, 0.99), eps=1e-8,
                  weight_decay=0.0, gamma=0.025, is_approx=True, optimize_1d=False,
                  lr_1d=3e-3, betas_1d=(0.9, 0.95), weight_decay_1d=0.1):
  """Returns the trajectory (initial point, then one dict per step)."""
  p = copy_params(params0)
  exp_avg = {k: np.zeros_like(v) for k, v in p.items()}
  exp_avg_sq = {k: np.zeros_like(v) for k, v in p.items()}
  last_grad = {k: np.zeros_like(v) for k, v in p.items()}
  beta1, beta2 = betas
  trajectory = [copy_params(p)]
  for t in range(steps):
    step = t + 1
    if not is_approx and t > 0:
      last_grad = grad_fn(trajectory[-2], t)
    grads = grad_fn(p, t)
    for k in p:
      grad = grads[k]
      if optimize_1d or grad.ndim == 2:
        c_t = (grad - last_grad[k]) * (gamma * (beta1 / (1.0 - beta1))) + grad
        c_t_norm = np.linalg.norm(c_t)
        if c_t_norm > 1.0:
          c_t = c_t / c_t_norm
        exp_avg[k] = exp_avg[k] * beta1 + c_t * (1.0 - beta1)
        exp_avg_sq[k] = exp_avg_sq[k] * beta2 + c_t * c_t * (1.0 - beta2)
        bias_correction1 = 1.0 - beta1**step
        bias_correction2 = 1.0 - beta2**step
        denom = (np.sqrt(exp_avg_sq[k]) * (1 / np.sqrt(bias_correction2)) + eps) * bias_correction1
        p[k] = p[k] + -lr * (p[k] * weight_decay + exp_avg[k] / denom)
      else:
        b1_1d, b2_1d = betas_1d
        exp_avg[k] = exp_avg[k] * b1_1d + grad * (1.0 - b1_1d)
        exp_avg_sq[k] = exp_avg_sq[k] * b2_1d + grad * grad * (1.0 - b2_1d)
        bias_correction1 = 1.0 - b1_1d**step
        bias_correction2 = 1.0 - b2_1d**step
        denom = (np.sqrt(exp_avg_sq[k]) * (1 / np.sqrt(bias_correction2)) + eps) * bias_correction1
        wd_1d = weight_decay if optimize_1d else weight_decay_1d
        p[k] = p[k] + -lr * (lr_1d / lr) * (p[k] * wd_1d + exp_avg[k] / denom)
      if is_approx:
        last_grad[k] = grad
    trajectory.append(copy_params(p))
  return trajectory


# -------- Hyperball (marin-community/marin, ``levanter/optim/adamh.py``, ``muonh.py``)
#
# ``scale_by_adamh`` / ``scale_with_muonh`` and their configs' routing, for
# plain 2-D matrices: the matrices in ``hyperball`` (AdamH) and ``muon``
# (MuonH, heavy-ball momentum m ← μm + g, Nesterov g + μm, Levanter's
# ``zeropower_via_newtonschulz5`` with the given cyclic coefficients) take
#   new_p = p − η u ‖p‖/max(‖u‖, 1e−10);  p ← new_p/‖new_p‖ · ‖p‖,
# the others ``optax.scale_by_adam`` then −adam_lr (no decay).


def _adam_direction(g, m, v, b1, b2, eps, step):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  return m, v, (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + eps)


def _levanter_newton_schulz(x, steps, eps, coefficients):
  x = x / (np.linalg.norm(x) + eps)
  transpose = x.shape[0] > x.shape[1]
  if transpose:
    x = x.T
  for i in range(steps):
    a, b, c = coefficients[i % len(coefficients)]
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if transpose else x


def hyperball_marin(params0, grad_fn, steps, *, lr, adam_lr, hyperball=(), muon=(),
                    b1=0.9, b2=0.95, eps=1e-8, momentum=0.95, nesterov=True,
                    ns_steps=5, muon_eps=1e-8,
                    coefficients=((3.4445, -4.7750, 2.0315),)):
  """AdamH (``hyperball``) and MuonH (``muon``) leaves, Adam elsewhere; the trajectory."""
  p = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  trajectory = [copy_params(p)]
  for t in range(steps):
    grads = grad_fn(p, t)
    for k in p:
      g = grads[k]
      if k in muon:
        m[k] = momentum * m[k] + g
        u = momentum * m[k] + g if nesterov else m[k]
        u = _levanter_newton_schulz(u, ns_steps, muon_eps, coefficients)
      else:
        m[k], v[k], u = _adam_direction(g, m[k], v[k], b1, b2, eps, t + 1)
      if k in muon or k in hyperball:
        new_p = p[k] - lr * u * np.linalg.norm(p[k]) / max(np.linalg.norm(u), 1e-10)
        p[k] = new_p / np.linalg.norm(new_p) * np.linalg.norm(p[k])
      else:
        p[k] = p[k] - adam_lr * u
    trajectory.append(copy_params(p))
  return trajectory

# --- Cautious updates and cautious weight decay ------------------------------


def caution_c_optim(u, g):
  """C-Optim ``c_adamw.py``: ``mask = (exp_avg * grad > 0)``,
  ``mask.div_(mask.mean().clamp_(min=1e-3))``, applied to the update."""
  mask = (u * g > 0).astype(u.dtype)
  mask = mask / max(mask.mean(), 1e-3)
  return u * mask


def caution_levanter(u, g, eps=1e-8):
  """Levanter ``scale_by_cautious``: ``m = (g * u) > 0``, ``u * m / (m.mean() + eps)``."""
  m = (g * u) > 0
  return u * m / (m.mean() + eps)


def caution_heavyball(g, u):
  """heavyball ``_compilable_cautioning(g, update)``."""
  mask = np.signbit(g) ^ np.signbit(u)  # "mask if they point in different directions"
  u = np.where(mask, 0.0, u)
  scale = mask.size / max(mask.size - mask.sum(), 1)
  return u * scale


def heavyball_update(p, u, decay, lr, caution, cautious_decay, g):
  """heavyball ``_compilable_update_`` for one parameter: the caution of the
  update, then p ← p(1 − d·lr) − lr·u with d the decay where the sign bits
  of p and u agree (cautious weight decay) or everywhere."""
  if caution:
    u = caution_heavyball(g, u)
  d = decay * (1 - (np.signbit(p) ^ np.signbit(u))) if cautious_decay else decay
  return p * (1 - d * lr) + u * -lr


def nanogpt_cautious_step(p, g, lr, wd):
  """The last lines of modded-nanogpt's / nanochat's fused Muon step:
  ``mask = (g * p) >= 0``; ``p.sub_(lr * g + lr * wd * p * mask)``."""
  mask = (g * p) >= 0
  return p - (lr * g + lr * wd * p * mask)


def c_adamw_numpy(params0, grad_fn, steps, lr, b1, b2, eps, weight_decay):
  """C-Optim's ``AdamW.step`` (``c_adamw.py``, ``correct_bias=True``) line by
  line in float64: decay first, then the cautiously masked Adam step with
  step size lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ) and denominator √v + ε. Returns the
  trajectory (the initial point, then one dict per step)."""
  params = copy_params(params0)
  exp_avg = {k: np.zeros_like(v) for k, v in params.items()}
  exp_avg_sq = {k: np.zeros_like(v) for k, v in params.items()}
  trajectory = [copy_params(params)]
  for t in range(1, steps + 1):
    grads = grad_fn(trajectory[-1], t - 1)
    for k, p in params.items():
      grad = grads[k]
      p = p + p * (-lr * weight_decay)
      exp_avg[k] = exp_avg[k] * b1 + grad * (1.0 - b1)
      exp_avg_sq[k] = exp_avg_sq[k] * b2 + grad * grad * (1.0 - b2)
      denom = np.sqrt(exp_avg_sq[k]) + eps
      step_size = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
      mask = (exp_avg[k] * grad > 0).astype(grad.dtype)
      mask = mask / max(mask.mean(), 1e-3)
      params[k] = p + (exp_avg[k] * mask) / denom * -step_size
    trajectory.append(copy_params(params))
  return trajectory


def adamw_heavyball_numpy(params0, grad_fn, steps, lr, weight_decay, caution, cautious_decay,
                          b1=0.9, b2=0.999, eps=1e-8):
  """torch AdamW's direction m̂/(√v̂ + ε) stepped by heavyball's
  ``_compilable_update_`` (``heavyball_update``): heavyball's ``caution`` and
  ``cautious_weight_decay`` flags on AdamW. Returns the trajectory."""
  params = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  trajectory = [copy_params(params)]
  for t in range(1, steps + 1):
    grads = grad_fn(trajectory[-1], t - 1)
    for k in params:
      g = grads[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
      params[k] = heavyball_update(params[k], u, weight_decay, lr, caution, cautious_decay, g)
    trajectory.append(copy_params(params))
  return trajectory


# -------- PSGD Kron (evanatyourservice/psgd_jax, ``psgd_jax/kron.py``)
#
# ``scale_by_kron``'s update with update probability 1 (the preconditioner is
# fitted every step), real leaves, no scanned layers, in float64: the einsum
# expressions of ``_init_Q_exprs``, ``_conjB``, ``_update_precond``,
# ``_precond_grad`` and ``_norm_lower_bound`` as written there. The random
# draws (the probes V and whether to balance) are passed in.

_PSGD_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def psgd_init_q_exprs(shape, scale, max_size, min_ndim_triangular, memory_save_mode):
  """``_init_Q_exprs``: the initial factors Q and the (exprA, exprGs, exprP)."""
  letters = _PSGD_LETTERS
  if len(shape) == 0:
    return [scale * np.ones(())], (",->", [",->"], ",,->")
  scale = scale ** (1 / len(shape))
  dim_diag = [memory_save_mode == "all_diag"] * len(shape)
  if memory_save_mode == "one_diag":
    dim_diag[np.argsort(shape)[::-1][0]] = True
  q, piece1a, piece2a, piece3a, expr_gs = [], [], "", "", []
  piece1p, piece2p, piece3p, piece4p = [], [], "", ""
  for i, (size, dim_d) in enumerate(zip(shape, dim_diag)):
    piece1 = "".join(letters[i + 13] if j == i else letters[j] for j in range(len(shape)))
    if size == 1 or size > max_size or len(shape) < min_ndim_triangular or dim_d:
      q.append(scale * np.ones(size))
      piece1a.append(letters[i])
      piece2a += letters[i]
      piece3a += letters[i]
      expr_gs.append(piece1 + "," + piece1 + "->" + letters[i + 13])
      piece1p.append(letters[i + 13])
      piece2p.append(letters[i + 13])
      piece3p += letters[i + 13]
      piece4p += letters[i + 13]
    else:
      q.append(scale * np.eye(size))
      piece1a.append(letters[i] + letters[i + 13])
      piece2a += letters[i + 13]
      piece3a += letters[i]
      piece2 = "".join(letters[i + 26] if j == i else letters[j] for j in range(len(shape)))
      expr_gs.append(piece1 + "," + piece2 + "->" + letters[i + 13] + letters[i + 26])
      a, b, c = letters[i], letters[i + 13], letters[i + 26]
      piece1p.append(a + b)
      piece2p.append(a + c)
      piece3p += c
      piece4p += b
  expr_a = ",".join(piece1a) + "," + piece2a + "->" + piece3a
  expr_p = ",".join(piece1p) + "," + ",".join(piece2p) + "," + piece3p + "->" + piece4p
  return q, (expr_a, expr_gs, expr_p)


def psgd_norm_lower_bound(a):
  """``_norm_lower_bound`` for a real matrix."""
  max_abs = np.max(np.abs(a))
  if not max_abs > 0:
    return max_abs
  a = a / max_abs
  aa = a * a
  sum0, sum1 = aa.sum(axis=0), aa.sum(axis=1)
  i, j = np.argmax(sum0), np.argmax(sum1)
  if sum0[i] > sum1[j]:
    x = a[:, i] @ a
    return max_abs * np.linalg.norm((x / np.linalg.norm(x)) @ a.T)
  x = a @ a[j]
  return max_abs * np.linalg.norm(a.T @ (x / np.linalg.norm(x)))


def _psgd_solve_triangular_right(x, a):
  """X @ inv(A) over the last axis of X."""
  flat = x.reshape(-1, x.shape[-1])
  return np.linalg.solve(a.T, flat.T).T.reshape(x.shape)


def _psgd_conj_b(qs, g, v):
  order = g.ndim
  p = list(range(order))
  conj_b = np.transpose(v, p[1:] + p[:1])
  for i, q in enumerate(qs):
    conj_b = conj_b / q if q.ndim < 2 else _psgd_solve_triangular_right(conj_b, q)
    if i < order - 1:
      conj_b = np.swapaxes(conj_b, i, order - 1)
  return conj_b


def _psgd_update_precond(qs, g, conj_b, exprs, precond_lr):
  expr_a, expr_gs, _ = exprs
  a = np.einsum(expr_a, *qs, g)
  out = []
  for i, q in enumerate(qs):
    term1 = np.einsum(expr_gs[i], a, a)
    term2 = np.einsum(expr_gs[i], conj_b, conj_b)
    tmp = (term1 - term2) * precond_lr
    tiny = np.finfo(np.float64).tiny
    if q.ndim < 2:
      out.append(q - tmp * q / (tiny + np.max(np.abs(term1 + term2))))
    else:
      tmp = np.triu(tmp) / (tiny + psgd_norm_lower_bound(term1 + term2))
      out.append(q - tmp @ q)
  return out


def _psgd_balance(qs):
  norms = np.array([np.max(np.abs(q)) for q in qs])
  gmean = np.prod(norms) ** (1 / len(norms))
  return [q * x for q, x in zip(qs, gmean / norms)]


def _psgd_step(qs, h, v, m, balance, exprs, precond_lr):
  """One leaf's (or one scanned layer's) factors balanced, fitted on (h, v),
  and its preconditioned m."""
  if balance and len(qs) > 1:
    qs = _psgd_balance(qs)
  qs = _psgd_update_precond(qs, h, _psgd_conj_b(qs, h, v), exprs, precond_lr)
  return qs, np.einsum(exprs[2], *qs, *qs, m)


def psgd_kron_reference(grads, probes, balances, *, b1=0.9, precond_lr=0.1,
                        precond_init_scale=1.0, max_size_triangular=8192,
                        min_ndim_triangular=2, memory_save_mode=None,
                        momentum_into_precond_update=True, scanned=()):
  """``scale_by_kron`` with update probability 1, step by step.

  ``grads``, ``probes``: per step a ``{name: array}`` dict; ``balances``: per
  step whether the factors are balanced first. ``scanned``: the names whose
  leading axis is a stack of layers (``scanned_layers``: the factors of each
  layer balanced, fitted and applied on the layer alone, as its ``vmap``
  does; the damping and the RMS cap over the whole leaf). Returns per step
  (updates, {name: list of factors}, a scanned leaf's stacked over layers).
  """
  qs, exprs = {}, {}
  for k, g in grads[0].items():
    shape = np.shape(g)[1:] if k in scanned else np.shape(g)
    qs[k], exprs[k] = psgd_init_q_exprs(shape, precond_init_scale, max_size_triangular,
                                        min_ndim_triangular, memory_save_mode)
    if k in scanned:
      qs[k] = [[q.copy() for q in qs[k]] for _ in range(np.shape(g)[0])]
  mu = {k: np.zeros_like(g, dtype=np.float64) for k, g in grads[0].items()}
  damp_eps = np.sqrt(np.finfo(np.float32).eps)
  out = []
  for t, (step_grads, step_probes, balance) in enumerate(zip(grads, probes, balances), 1):
    updates = {}
    for k, g in step_grads.items():
      g = np.asarray(g, np.float64)
      if b1 > 0:
        mu[k] = b1 * mu[k] + (1 - b1) * g
        m = mu[k] / (1 - b1**t)
      else:
        m = g
      h = m if momentum_into_precond_update else g
      v = np.asarray(step_probes[k], np.float64)
      h = h + damp_eps * np.mean(np.abs(h)) * v
      if k in scanned:
        stepped = [_psgd_step(q, h[j], v[j], m[j], balance, exprs[k], precond_lr)
                   for j, q in enumerate(qs[k])]
        qs[k], u = [q for q, _ in stepped], np.stack([u for _, u in stepped])
      else:
        qs[k], u = _psgd_step(qs[k], h, v, m, balance, exprs[k], precond_lr)
      updates[k] = u / max(1.0, np.sqrt(np.mean(u * u)) / 1.1)
    out.append((updates, {
        k: ([np.stack(q) for q in zip(*v)] if k in scanned else [q.copy() for q in v])
        for k, v in qs.items()}))
  return out


def novograd_numpy(params0, grad_fn, steps, lr: Rate, b1, b2, eps, weight_decay=0.0):
  """NovoGrad, Ginsburg et al. 2019 (arXiv:1905.11286), Algorithm 1, per layer l
  (here: per parameter array):

  v_1 = ‖g_1‖²,  v_t = β2 v_{t-1} + (1-β2)‖g_t‖²
  m_t = β1 m_{t-1} + (g_t/(√v_t + ε) + d w_t)   (m_0 = 0)
  w_{t+1} = w_t - λ_t m_t
  """
  w = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v = {}
  trajectory = [copy_params(w)]
  for t in range(1, steps + 1):
    g = grad_fn(w, t - 1)
    for k in w:
      norm_sq = float(np.sum(g[k] * g[k]))
      v[k] = norm_sq if t == 1 else b2 * v[k] + (1 - b2) * norm_sq
      m[k] = b1 * m[k] + (g[k] / (np.sqrt(v[k]) + eps) + weight_decay * w[k])
      w[k] = w[k] - rate_at(lr, t - 1) * m[k]
    trajectory.append(copy_params(w))
  return trajectory


def fromage_official(params0, grad_fn, steps, lr: Rate, p_bound=None):
  """``Fromage.step`` of the official code (github.com/jxbz/fromage,
  ``fromage.py``), per parameter tensor:

  if ‖p‖ > 0 and ‖g‖ > 0:  p ← p − lr·(‖p‖/‖g‖)·g   else:  p ← p − lr·g
  p ← p/√(1 + lr²);  with p_bound: p ← p·max/‖p‖ where ‖p‖ > max = p_bound·‖p_0‖
  """
  p = copy_params(params0)
  bound = {k: p_bound * np.linalg.norm(v) for k, v in p.items()} if p_bound else {}
  trajectory = [copy_params(p)]
  for t in range(steps):
    g = grad_fn(p, t)
    rate = rate_at(lr, t)
    for k in p:
      d_p_norm, p_norm = np.linalg.norm(g[k]), np.linalg.norm(p[k])
      if p_norm > 0.0 and d_p_norm > 0.0:
        p[k] = p[k] - rate * (g[k] * (p_norm / d_p_norm))
      else:
        p[k] = p[k] - rate * g[k]
      p[k] = p[k] / np.sqrt(1 + rate**2)
      if p_bound is not None and np.linalg.norm(p[k]) > bound[k]:
        p[k] = p[k] * (bound[k] / np.linalg.norm(p[k]))
    trajectory.append(copy_params(p))
  return trajectory


def adan_official(params0, grad_fn, steps, lr: Rate, betas=(0.98, 0.92, 0.99), eps=1e-8,
                  weight_decay=0.0, no_prox=False):
  """``_single_tensor_adan`` of the official code (github.com/sail-sg/Adan,
  ``adan.py``) with ``max_grad_norm=0``, line by line: ``neg_pre_grad`` is
  −g on the first step, so the first difference is 0.

  d = g − g_prev;  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) d
  n ← β3 n + (1−β3)(g + β2 d)²;  denom = √n/√(1−β3ᵗ) + ε
  p ← p − lr/(1−β1ᵗ)·m/denom − lr·β2/(1−β2ᵗ)·v/denom, then p ← p/(1 + lr·λ)
  (``no_prox``: p ← (1 − lr·λ)p before the step instead)
  """
  beta1, beta2, beta3 = betas
  p = copy_params(params0)
  exp_avg = {k: np.zeros_like(v) for k, v in p.items()}
  exp_avg_sq = {k: np.zeros_like(v) for k, v in p.items()}
  exp_avg_diff = {k: np.zeros_like(v) for k, v in p.items()}
  neg_pre_grad = {}
  trajectory = [copy_params(p)]
  for t in range(steps):
    g = grad_fn(p, t)
    step = t + 1
    lr_t = rate_at(lr, t)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    bias_correction3_sqrt = np.sqrt(1.0 - beta3**step)
    for k in p:
      if step == 1:
        neg_pre_grad[k] = -g[k].copy()
      neg_grad_or_diff = neg_pre_grad[k] + g[k]
      exp_avg[k] = exp_avg[k] * beta1 + (1 - beta1) * g[k]
      exp_avg_diff[k] = exp_avg_diff[k] * beta2 + (1 - beta2) * neg_grad_or_diff
      neg_grad_or_diff = neg_grad_or_diff * beta2 + g[k]
      exp_avg_sq[k] = exp_avg_sq[k] * beta3 + (1 - beta3) * neg_grad_or_diff**2
      denom = np.sqrt(exp_avg_sq[k]) / bias_correction3_sqrt + eps
      step_size_diff = lr_t * beta2 / bias_correction2
      step_size = lr_t / bias_correction1
      if no_prox:
        p[k] = p[k] * (1 - lr_t * weight_decay)
        p[k] = p[k] - step_size * exp_avg[k] / denom
        p[k] = p[k] - step_size_diff * exp_avg_diff[k] / denom
      else:
        p[k] = p[k] - step_size * exp_avg[k] / denom
        p[k] = p[k] - step_size_diff * exp_avg_diff[k] / denom
        p[k] = p[k] / (1 + lr_t * weight_decay)
      neg_pre_grad[k] = -g[k]
    trajectory.append(copy_params(p))
  return trajectory


def sm3_official(params0, grad_fn, steps, lr: Rate, momentum):
  """``SM3Optimizer._apply_dense`` of the official code (github.com/
  google-research/google-research, ``sm3/sm3.py``; TensorFlow), in NumPy.

  rank > 1: A = min_k A_k (broadcast) + g²; else A = (A += g²)
  scaled_g = (1 − μ)·g·rsqrt(A + 1e-30);  A_k ← max of A over the other axes
  gbar ← gbar + gbar·(μ − 1) + scaled_g (if μ > 0, else gbar = scaled_g);  p ← p − lr·gbar
  """
  p = copy_params(params0)
  accumulators = {k: ([np.zeros(n) for n in v.shape] if v.ndim > 1 else np.zeros_like(v))
                  for k, v in p.items()}
  gbar = {k: np.zeros_like(v) for k, v in p.items()}
  trajectory = [copy_params(p)]
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      shape, rank = p[k].shape, p[k].ndim
      if rank > 1:
        broadcast = [a.reshape([1] * i + [shape[i]] + [1] * (rank - i - 1))
                     for i, a in enumerate(accumulators[k])]
        accumulator = broadcast[0]
        for b in broadcast[1:]:
          accumulator = np.minimum(accumulator, b)
        accumulator = accumulator + g[k] * g[k]
      else:
        accumulators[k] = accumulators[k] + g[k] * g[k]
        accumulator = accumulators[k]
      scaled_g = (1.0 - momentum) * (g[k] / np.sqrt(accumulator + 1e-30))
      if rank > 1:
        accumulators[k] = [
            accumulator.max(axis=tuple(a for a in range(rank) if a != i)) for i in range(rank)]
      if momentum > 0:
        gbar[k] = gbar[k] + gbar[k] * (momentum - 1.0) + scaled_g
        update = gbar[k]
      else:
        update = scaled_g
      p[k] = p[k] - rate_at(lr, t) * update
    trajectory.append(copy_params(p))
  return trajectory


def adopt_official(params0, grad_fn, steps, lr: Rate, b1=0.9, b2=0.9999, eps=1e-6,
                   weight_decay: Rate = 0.0, decouple=False, clip_lambda=lambda step: step**0.25):
  """``_single_tensor_adopt`` of the official ADOPT (github.com/iShohei220/adopt,
  ``src/adopt/adopt.py``; Taniguchi et al. 2024), real parameters, in NumPy;
  ``lr`` and ``weight_decay`` may be schedules (a param group's values at step t).

  step (the count before this step) = 0: v = g² (after the coupled decay), nothing else;
  else: p ← p − lr·λ·p (decouple); n = clip(g / max(√v, ε), clip_lambda(step));
  m ← lerp(m, n, 1 − β1); p ← p − lr·m; v ← β2·v + (1 − β2)·g²
  """
  p = copy_params(params0)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  trajectory = [copy_params(p)]
  for step in range(steps):
    g = grad_fn(p, step)
    eta, wd = rate_at(lr, step), rate_at(weight_decay, step)
    for k in p:
      grad = g[k] + wd * p[k] if wd != 0 and not decouple else g[k]
      if step == 0:
        v[k] = v[k] + grad * grad
        continue
      if wd != 0 and decouple:
        p[k] = p[k] + (-eta * wd) * p[k]
      normed = grad / np.maximum(np.sqrt(v[k]), eps)
      if clip_lambda is not None:
        clip = clip_lambda(step)
        normed = np.clip(normed, -clip, clip)
      m[k] = m[k] + (1 - b1) * (normed - m[k])
      p[k] = p[k] - eta * m[k]
      v[k] = b2 * v[k] + (1 - b2) * grad * grad
    trajectory.append(copy_params(p))
  return trajectory


def acprop_official(params0, grad_fn, steps, lr: Rate, betas=(0.9, 0.999), eps=1e-16,
                    weight_decay=0.0, amsgrad=False, weight_decouple=True,
                    momentum_update=False):
  """``ACProp.step`` of the official code (github.com/juntang-zhuang/
  ACProp-Optimizer, ``optimizers/ACProp.py``) with ``rectify=False`` (its
  ``main.py``), line by line; ``exp_avg_var.add_(eps)`` adds ε to the stored
  s in place (at t ≥ 2, or at every step in the AMSGrad branch):

  decay: p ← p(1 − lr·λ) (weight_decouple) or g ← g + λp
  m ← β1 m + (1−β1) g
  amsgrad: s ← s + ε, s_max ← max(s_max, s), denom = √s_max/√(1−β2^(t−1)) + ε
  else (t > 1): s ← s + ε, denom = √s/√(1−β2^(t−1)) + ε
  t = 1: p ← p − lr·m/(1−β1);  t > 1: p ← p − lr/(1−β1^t)·n/denom with
  n = m (momentum_update) or g·(1−β1^t)
  s ← β2 s + (1−β2)(g − m)²
  """
  beta1, beta2 = betas
  p = copy_params(params0)
  exp_avg = {k: np.zeros_like(v) for k, v in p.items()}
  exp_avg_var = {k: np.zeros_like(v) for k, v in p.items()}
  max_exp_avg_var = {k: np.zeros_like(v) for k, v in p.items()}
  trajectory = [copy_params(p)]
  for t in range(steps):
    grads = grad_fn(p, t)
    step = t + 1
    lr_t = rate_at(lr, t)
    for k in p:
      grad = grads[k].copy()
      if weight_decouple:
        p[k] = p[k] * (1.0 - lr_t * weight_decay)
      elif weight_decay != 0:
        grad = grad + weight_decay * p[k]
      bias_correction1 = 1 - beta1**step
      bias_correction2 = 1 - beta2**(step - 1)
      exp_avg[k] = exp_avg[k] * beta1 + (1 - beta1) * grad
      denom = None
      if amsgrad:
        exp_avg_var[k] = exp_avg_var[k] + eps
        max_exp_avg_var[k] = np.maximum(max_exp_avg_var[k], exp_avg_var[k])
        if step > 1:  # the code divides by √0 at t = 1, and does not use it
          denom = np.sqrt(max_exp_avg_var[k]) / np.sqrt(bias_correction2) + eps
      elif step > 1:
        exp_avg_var[k] = exp_avg_var[k] + eps
        denom = np.sqrt(exp_avg_var[k]) / np.sqrt(bias_correction2) + eps
      if step <= 1:
        p[k] = p[k] - lr_t * (exp_avg[k] / bias_correction1)
      else:
        numerator = exp_avg[k] if momentum_update else grad * bias_correction1
        p[k] = p[k] - (lr_t / bias_correction1) * (numerator / denom)
      grad_residual = grad - exp_avg[k]
      exp_avg_var[k] = exp_avg_var[k] * beta2 + (1 - beta2) * grad_residual * grad_residual
    trajectory.append(copy_params(p))
  return trajectory
