"""Adam-mini vs AdamW on the main job, in gradtx and in the official PyTorch code.

Is Adam-mini's gap to AdamW on the main job (``examples.char_lm``) the
method's or gradtx's? This script trains the main job's model four ways, from
the same initialisation and on the same batches, in one process:

* gradtx ``adamw`` and ``adam_mini`` (the registry entries), in JAX;
* ``torch.optim.AdamW`` and the official ``adam_mini.Adam_mini`` (PyPI
  ``adam-mini`` 1.1.1, github.com/zyushun/Adam-mini) on a PyTorch copy of the
  model: same architecture, the JAX initial weights copied over, the same
  warm-up-cosine learning rate, betas (0.9, 0.99), weight decay 0.1 on
  matrices (the official code's own rule: all but norms and biases).

The PyTorch model keeps query, key and value as separate ``q_proj``,
``k_proj``, ``v_proj`` layers, so the official name matching gives the
paper's partition exactly: Q/K per head, V, attention output and MLP per
output neuron, embedding and ``lm_head`` per token, biases per element, norm
scales and the learned position table one value per tensor.

    python -m benchmarks.adam_mini_torch --seeds 0,1,2,3 [--steps 400]
    python -m benchmarks.adam_mini_torch --d-model 192 --num-layers 4  # char_lm options

Prints, per seed, the final train loss (mean over the last 10% of steps) and
validation loss of each, and Adam-mini's ratio to AdamW in each framework.
"""

import argparse

import adam_mini
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import harness, registry
from examples import char_lm


class Block(nn.Module):
  """``char_lm.Block`` in PyTorch: pre-norm attention and a GELU MLP."""

  def __init__(self, d_model: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.norm1 = nn.LayerNorm(d_model, eps=1e-6)
    self.q_proj = nn.Linear(d_model, d_model)
    self.k_proj = nn.Linear(d_model, d_model)
    self.v_proj = nn.Linear(d_model, d_model)
    self.o_proj = nn.Linear(d_model, d_model)
    self.norm2 = nn.LayerNorm(d_model, eps=1e-6)
    self.mlp = nn.ModuleDict(
        {"up": nn.Linear(d_model, 4 * d_model), "down": nn.Linear(4 * d_model, d_model)})

  def attention(self, x):
    batch, length, d_model = x.shape
    heads = lambda p: p(x).view(batch, length, self.num_heads, -1).transpose(1, 2)
    q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.o_proj(out.transpose(1, 2).reshape(batch, length, d_model))

  def forward(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.mlp["down"](F.gelu(self.mlp["up"](self.norm2(x)), approximate="tanh"))


class CharTransformer(nn.Module):
  """``char_lm.CharTransformer`` in PyTorch."""

  def __init__(self, vocab_size: int, context: int, d_model: int, num_layers: int,
               num_heads: int):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, d_model)
    self.position = nn.Parameter(torch.zeros(context, d_model))
    self.blocks = nn.ModuleList([Block(d_model, num_heads) for _ in range(num_layers)])
    self.norm = nn.LayerNorm(d_model, eps=1e-6)
    self.lm_head = nn.Linear(d_model, vocab_size)

  def forward(self, tokens):
    x = self.embed(tokens) + self.position[: tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.lm_head(self.norm(x))


def torch_weights(jax_state, d_model: int) -> dict:
  """The JAX model's weights as the PyTorch model's state dict."""
  t = lambda x: torch.tensor(np.ascontiguousarray(x, np.float32))

  def get(*path):
    node = jax_state
    for key in path:
      node = node[key]
    return np.asarray(node.get_value())

  weights = {"embed.weight": t(get("embed", "embedding")), "position": t(get("position")),
             "norm.weight": t(get("norm", "scale")), "norm.bias": t(get("norm", "bias")),
             "lm_head.weight": t(get("head", "kernel").T), "lm_head.bias": t(get("head", "bias"))}
  for i in range(len(jax_state["blocks"])):
    b, p = ("blocks", i), f"blocks.{i}."
    qkv_kernel, qkv_bias = get(*b, "qkv", "kernel"), get(*b, "qkv", "bias")
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
      weights[p + name + ".weight"] = t(qkv_kernel[:, j * d_model:(j + 1) * d_model].T)
      weights[p + name + ".bias"] = t(qkv_bias[j * d_model:(j + 1) * d_model])
    for ours, theirs in (("proj", "o_proj"), ("up", "mlp.up"), ("down", "mlp.down")):
      weights[p + theirs + ".weight"] = t(get(*b, ours, "kernel").T)
      weights[p + theirs + ".bias"] = t(get(*b, ours, "bias"))
    for norm in ("norm1", "norm2"):
      weights[p + norm + ".weight"] = t(get(*b, norm, "scale"))
      weights[p + norm + ".bias"] = t(get(*b, norm, "bias"))
  return weights


def torch_optimizer(name: str, model: nn.Module, config) -> torch.optim.Optimizer:
  if name == "adamw":
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=0.0, betas=(0.9, 0.99), eps=1e-8)
  return adam_mini.Adam_mini(
      model.named_parameters(), lr=0.0, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
      dim=config.d_model, n_heads=config.num_heads, verbose=False)


def train_torch(name, config, jax_state, train_batches, val_batches) -> dict:
  """One PyTorch run of the main job; the losses as ``char_lm.train_one``'s."""
  model = CharTransformer(char_lm.VOCAB_SIZE, config.context, config.d_model,
                          config.num_layers, config.num_heads)
  model.load_state_dict(torch_weights(jax_state, config.d_model))
  optimizer = torch_optimizer(name, model, config)
  schedule = registry.warmup_cosine(6e-3, config.steps)  # adamw's (and adam_mini's)
  loss_fn = lambda x, y: F.cross_entropy(model(x).flatten(0, 1), y.flatten().long())
  train_losses = []
  for step in range(config.steps):
    for group in optimizer.param_groups:
      group["lr"] = float(schedule(step))  # optax evaluates it at the count before
    inputs, targets = (torch.from_numpy(b[step]) for b in train_batches)
    loss = loss_fn(inputs, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    train_losses.append(loss.item())
  with torch.no_grad():
    val = np.mean([loss_fn(torch.from_numpy(x), torch.from_numpy(y)).item()
                   for x, y in zip(*val_batches)])
  return {"train_loss": train_losses, "val_loss": [float(val)]}


def run_seed(seed: int, steps: int, options: list) -> dict:
  config = char_lm.parse_args(
      ["--optimizers", "adamw,adam_mini", "--steps", str(steps), "--seed", str(seed),
       *options])
  train_tokens, val_tokens = char_lm.load_corpus(config.corpus_mb)
  train = char_lm.sample_batches(
      train_tokens, config.steps, config.batch_size, config.context, config.seed)
  val = char_lm.sample_batches(
      val_tokens, config.eval_batches, config.batch_size, config.context, config.seed + 1)
  initial = char_lm.initial_model(config)
  torch.manual_seed(seed)
  results = {f"gradtx {n}": char_lm.train_one(n, config, initial, train, val)
             for n in ("adamw", "adam_mini")}
  results.update({f"torch {n}": train_torch(n, config, initial[1], train, val)
                  for n in ("adamw", "adam_mini")})
  window = char_lm.final_window(steps)
  return {name: (char_lm.smooth(r["train_loss"], window)[-1], r["val_loss"][-1])
          for name, r in results.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2,3")
  parser.add_argument("--steps", type=int, default=400)
  args, options = parser.parse_known_args(argv)  # the rest goes to char_lm
  print(harness.machine_banner(packages=("adam-mini",)))
  rows = []
  for seed in (int(s) for s in args.seeds.split(",")):
    losses = run_seed(seed, args.steps, options)
    ratio = lambda lib, losses=losses: (
        losses[f"{lib} adam_mini"][0] / losses[f"{lib} adamw"][0])
    rows.append((seed, losses, ratio("gradtx"), ratio("torch")))
  names = list(rows[0][1])
  mean = lambda i: np.mean([r[i] for r in rows])
  print("\nfinal train loss (val loss); ratio = adam_mini / adamw, train loss\n")
  print(harness.markdown_table(
      ["seed", *names, "ratio gradtx", "ratio official"],
      [*((seed, *(f"{losses[n][0]:.4f} ({losses[n][1]:.4f})" for n in names),
          f"{ours:.3f}", f"{theirs:.3f}") for seed, losses, ours, theirs in rows),
       ("mean", *("" for _ in names), f"{mean(2):.3f}", f"{mean(3):.3f}")]))
  print()
  print(harness.closing_line())


if __name__ == "__main__":
  main()
