"""NumPy transcription for tests/optimizers/test_scaling_rules.py.

``adamw_numpy``: Algorithm 2 of Loshchilov & Hutter 2019 in torch.optim.AdamW's
form, p ← p − η_t (m̂_t/(√v̂_t + ε) + λ_t p), line by line in float64, with both
η_t and λ_t functions of the 0-based step t.
"""

import numpy as np


def adamw_numpy(params0, grad_fn, steps, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
  """Returns the trajectory: the initial point, then one dict per step."""
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
