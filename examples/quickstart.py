"""The README's example as a script: AdamW by hand, nnx.Optimizer, and
lookahead(sam(adamw)) on a tiny linear model; prints the six losses.

  python examples/quickstart.py

The code below is README.md's "Example" block (tests/test_examples.py checks
that the two say the same); only the imports are split into lines and the
last line prints.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gradtx import optimizers as go
from gradtx import transforms as gt

# AdamW by hand: precondition, add decoupled decay, scale by -lr (a float or a schedule).
# With a constant 3e-3 it is go.adamw(3e-3, weight_decay=1e-2), step for step.
adamw_by_hand = optax.chain(
    gt.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
    gt.decoupled_weight_decay(1e-2),
    gt.scale_by_learning_rate(optax.warmup_cosine_decay_schedule(1e-3, 3e-3, 2, 200)),
)

model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, adamw_by_hand, wrt=nnx.Param)
x, y = jnp.ones((8, 4)), jnp.zeros((8, 1))

@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
  optimizer.update(model, grads)
  return loss

losses = [float(train_step(model, optimizer, x, y)) for _ in range(3)]

# Wrappers take any optimizer. SAM also needs the gradient function, which
# nnx.Optimizer.update passes on to it.
loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
sam = nnx.Optimizer(model, go.lookahead(go.sam(go.adamw(3e-3), rho=0.05)), wrt=nnx.Param)

@nnx.jit
def sam_step(model, optimizer):
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  grad_fn = jax.grad(lambda params: loss_fn(nnx.merge(graphdef, params, rest)))
  optimizer.update(model, grads, grad_fn=grad_fn)
  return loss

losses += [float(sam_step(model, sam)) for _ in range(3)]

print("losses:", " ".join(f"{loss:.4f}" for loss in losses))
