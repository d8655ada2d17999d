"""The parameter trees the step benchmarks time: a long vector or a GPT-2-style tree.

  parse_workload("16M")        # one float32 vector of 16,777,216 parameters
  parse_workload("gpt")        # 12 blocks at width 256, 16K vocab: 13.93M in 148 leaves
  parse_workload("gpt:2x128")  # 2 blocks at width 128 (vocab 8x, context 4x the width)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Workload(NamedTuple):
  name: str
  shapes: dict[str, tuple[int, ...]]

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(s)) for s in self.shapes.values())


def gpt_shapes(
    layers: int = 12, width: int = 256, vocab: int = 16384, context: int = 1024
) -> dict[str, tuple[int, ...]]:
  """Parameter shapes of a GPT-2-style decoder (12 leaves per block)."""
  shapes = {"tok_embed": (vocab, width), "pos_embed": (context, width)}
  for i in range(layers):
    block = {
        "ln1_scale": (width,), "ln1_bias": (width,),
        "qkv_kernel": (width, 3 * width), "qkv_bias": (3 * width,),
        "proj_kernel": (width, width), "proj_bias": (width,),
        "ln2_scale": (width,), "ln2_bias": (width,),
        "fc1_kernel": (width, 4 * width), "fc1_bias": (4 * width,),
        "fc2_kernel": (4 * width, width), "fc2_bias": (width,),
    }
    shapes.update({f"block{i:02d}/{k}": v for k, v in block.items()})
  shapes.update({"ln_f_scale": (width,), "ln_f_bias": (width,)})
  return shapes


def parse_workload(token: str) -> Workload:
  """``gpt``, ``gpt:LAYERSxWIDTH``, or a vector length such as ``16M``/``256K``."""
  if token.startswith("gpt"):
    if ":" not in token:
      return Workload("gpt", gpt_shapes())
    layers, width = (int(x) for x in token.split(":")[1].split("x"))
    return Workload(token, gpt_shapes(layers, width, vocab=8 * width, context=4 * width))
  scale = {"K": 2**10, "M": 2**20}.get(token[-1].upper(), 1)
  digits = token[:-1] if scale > 1 else token
  return Workload(f"vector {token}", {"vector": (int(digits) * scale,)})


def random_tree(shapes: dict, seed: int, scale: float) -> dict:
  """Float32 normal arrays of these shapes, times ``scale``."""
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return {
      name: scale * jax.random.normal(key, shape, jnp.float32)
      for key, (name, shape) in zip(keys, shapes.items())
  }


def params_and_grads(workload: Workload) -> tuple[dict, dict]:
  """The parameters (about 0.02 in size) and the gradients (about 1) every step uses."""
  return random_tree(workload.shapes, 0, 0.02), random_tree(workload.shapes, 1, 1.0)
