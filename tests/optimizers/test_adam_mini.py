"""Adam-mini against the official code (PyPI adam-mini 1.1.1), float64."""

import jax
import numpy as np
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners
from tests.support import helpers

D, HEADS, VOCAB = 8, 2, 11
# (gradtx name in flax layout, official (PyTorch) name, transposed?)
MINI_LAYOUT = [
    ("embed/embedding", "model.embed_tokens.weight", False),
    ("layers_0/q_proj/kernel", "model.layers.0.self_attn.q_proj.weight", True),
    ("layers_0/k_proj/kernel", "model.layers.0.self_attn.k_proj.weight", True),
    ("layers_0/v_proj/kernel", "model.layers.0.self_attn.v_proj.weight", True),
    ("layers_0/o_proj/kernel", "model.layers.0.self_attn.o_proj.weight", True),
    ("layers_0/input_layernorm/scale", "model.layers.0.input_layernorm.weight", False),
    ("layers_0/mlp/up_proj/kernel", "model.layers.0.mlp.up_proj.weight", True),
    ("layers_0/mlp/up_proj/bias", "model.layers.0.mlp.up_proj.bias", False),
    ("layers_0/mlp/down_proj/kernel", "model.layers.0.mlp.down_proj.weight", True),
    ("norm/scale", "model.norm.weight", False),
    ("lm_head/kernel", "lm_head.weight", True),
]
MINI_SHAPES = {
    "embed/embedding": (VOCAB, D), "layers_0/input_layernorm/scale": (D,),
    "layers_0/mlp/up_proj/kernel": (D, 4 * D), "layers_0/mlp/up_proj/bias": (4 * D,),
    "layers_0/mlp/down_proj/kernel": (4 * D, D), "norm/scale": (D,),
    "lm_head/kernel": (D, VOCAB),
}


def _to_torch(params):
  return {torch_name: params[name].T if t else params[name]
          for name, torch_name, t in MINI_LAYOUT}


def _from_torch(params):
  return {name: params[torch_name].T if t else params[torch_name]
          for name, torch_name, t in MINI_LAYOUT}


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_mini_matches_the_official_step(weight_decay):
  rng = np.random.default_rng(0)
  params0 = {name: rng.normal(size=MINI_SHAPES.get(name, (D, D)))
             for name, _, _ in MINI_LAYOUT}
  grad = problems.quadratic_grads(params0, seed=1)
  lr = lambda count: 1e-2 - 4.5e-4 * count  # exact in float64 on both sides
  ours = runners.run_quadratic(
      go.adam_mini(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay, num_heads=HEADS,
                   mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
      params0, grad, 20,
  )
  official = torch_runners.run_adam_mini_official(
      _to_torch(params0), lambda p, t: _to_torch(grad(_from_torch(p), t)), 20,
      lambda t: float(lr(t)), (0.9, 0.95), 1e-8, weight_decay, dim=D, n_heads=HEADS)
  trajectory = [_from_torch(p) for p in official]
  assert runners.max_relative_gap(ours, trajectory) < 1e-10
  # The blocks matter: plain AdamW drifts away.
  adamw = runners.run_quadratic(
      go.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay), params0, grad, 20)
  assert runners.max_relative_gap(adamw, trajectory) > 1e-3


def test_state_memory_on_a_gpt_tree():
  """One second moment per block: about half of AdamW's state."""
  assert helpers.state_ratio(go.adam_mini(1e-3, num_heads=4)) <= 0.52
