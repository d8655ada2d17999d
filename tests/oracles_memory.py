"""Reference oracles for the memory-lean optimizers (merged into oracles.py later).

* ``bnb_dynamic_map``: bitsandbytes' ``create_dynamic_map`` transcribed to
  NumPy (float32 ``linspace`` as torch's), the code map of 8-bit optimizers.
* ``nearest_codes``: brute-force block-wise quantization (argmin over all 256
  codes), to check the fast encoder against.
* ``AdamMiniNumpy``: the official Adam-mini v1.1.1 ``step`` (github.com/
  zyushun/Adam-mini, ``adam_mini/adam_mini.py``), transcribed line by line to
  NumPy on PyTorch-named, PyTorch-layout (out, in) parameters.
* ``quadratic_grads``: a parameter-dependent gradient with noise, so that
  trajectories of different optimizers drift apart.
* ``run``: an optax transformation on that problem, float64, jitted.
"""

import math
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Dict[str, np.ndarray]


def bnb_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
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


class AdamMiniNumpy:
  """Adam-mini v1.1.1's ``step`` for named parameters in PyTorch layout."""

  embd_names = {"embed", "embd", "wte"}
  output_names = {"lm_head", "output", "final_layer"}
  wqk_names = {"k_proj", "q_proj", "wq", "wk", "query", "key"}
  wv_names = {"v_proj", "wv", "value"}
  attn_proj_names = {"o_proj", "wo", "attn.proj"}
  mlp_names = {"feed_forward", "linear", "mlp"}
  adam_block_names = {"bias"}

  def __init__(self, params: Params, lr, betas=(0.9, 0.999), eps=1e-8,
               weight_decay=0.0, dim=2048, n_heads=32):
    self.params = {k: np.array(v, np.float64) for k, v in params.items()}
    self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
    self.head_numel = dim * dim // n_heads
    self.weight_decay = {
        name: 0.0 if ("norm" in name or "ln" in name or "bias" in name)
        else weight_decay
        for name in params
    }
    self.state = {name: {} for name in params}

  def _in(self, names, name):
    return any(n in name for n in names)

  def step(self, grads: Params, t: int) -> Params:
    beta1, beta2, lr, eps = self.beta1, self.beta2, self.lr(t), self.eps
    for name, p in self.params.items():
      grad, state, wd = grads[name], self.state[name], self.weight_decay[name]
      if self._in(self.adam_block_names, name):
        if not state:
          state.update(m=np.zeros_like(p), step=0, v=np.zeros_like(p))
        state["v"] = state["v"] * beta2 + (1 - beta2) * grad * grad
        state["step"] += 1
        if wd > 0.0:
          p *= 1 - lr * wd
        state["m"] += (1 - beta1) * (grad - state["m"])
        bc1 = 1 - beta1 ** state["step"]
        bc2_sqrt = math.sqrt(1 - beta2 ** state["step"])
        h = np.sqrt(state["v"]) / bc2_sqrt + eps
        p -= lr / bc1 * state["m"] / h
      elif self._in(self.wqk_names, name):
        if not state:
          state["m"] = np.zeros_like(p).reshape(-1, self.head_numel)
          state["head_per_gpu"] = state["m"].shape[0]
          state["step"] = 0
          state["vmean"] = np.zeros((state["head_per_gpu"], 1))
        head = state["head_per_gpu"]
        g = grad.reshape(head, self.head_numel)
        tmp_lr = np.mean(g * g, axis=1, keepdims=True)
        state["vmean"] = state["vmean"] * beta2 + (1 - beta2) * tmp_lr
        state["step"] += 1
        if wd > 0.0:
          p *= 1 - lr * wd
        state["m"] += (1 - beta1) * (g - state["m"])
        bc1 = 1 - beta1 ** state["step"]
        bc2_sqrt = math.sqrt(1 - beta2 ** state["step"])
        h = np.sqrt(state["vmean"]) / bc2_sqrt + eps
        stepsize = ((1 / bc1) / h).reshape(head, 1)
        p -= lr * (state["m"] * stepsize).reshape(p.shape)
      elif any(self._in(names, name) for names in (
          self.embd_names, self.output_names, self.wv_names, self.mlp_names,
          self.attn_proj_names)):
        if not state:
          state.update(m=np.zeros_like(grad), step=0)
          state["neuron_per_gpu"] = state["m"].shape[0]
          state["vmean"] = np.zeros((state["neuron_per_gpu"], 1))
        neurons = state["neuron_per_gpu"]
        tmp_lr = np.mean(grad * grad, axis=1, keepdims=True)
        state["vmean"] = state["vmean"] * beta2 + (1 - beta2) * tmp_lr
        state["step"] += 1
        if wd > 0.0:
          p *= 1 - lr * wd
        state["m"] += (1 - beta1) * (grad - state["m"])
        bc1 = 1 - beta1 ** state["step"]
        bc2_sqrt = math.sqrt(1 - beta2 ** state["step"])
        h = np.sqrt(state["vmean"]) / bc2_sqrt + eps
        stepsize = ((1 / bc1) / h).reshape(neurons, 1)
        p -= lr * (state["m"] * stepsize).reshape(p.shape)
      else:  # norms: one v for the whole tensor
        if not state:
          state.update(m=np.zeros_like(p), step=0, vmean=0.0, block_numel=p.size)
        tmp_lr = np.sum(grad * grad) / state["block_numel"]
        if wd > 0.0:
          p *= 1 - lr * wd
        state["step"] += 1
        state["m"] += (1 - beta1) * (grad - state["m"])
        bc1 = 1 - beta1 ** state["step"]
        bc2_sqrt = math.sqrt(1 - beta2 ** state["step"])
        state["vmean"] = state["vmean"] * beta2 + (1 - beta2) * tmp_lr
        h = np.sqrt(state["vmean"]) / bc2_sqrt + eps
        p -= lr * state["m"] * ((1 / bc1) / h)
    return {k: v.copy() for k, v in self.params.items()}


def quadratic_grads(params0: Params, seed: int = 0, noise: float = 0.3):
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


def run(tx: optax.GradientTransformation, params0: Params,
        grad_fn: Callable[[Params, int], Params], steps: int,
        dtype=jnp.float64) -> List[Params]:
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
