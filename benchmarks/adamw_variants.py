"""Alternative formulations of AdamW, timed by ``python -m benchmarks.step_time --impls all``.

Each entry of ``VARIANTS`` is an ``optax.GradientTransformation`` equal in
meaning to ``go.adamw(learning_rate, weight_decay=weight_decay)`` (torch's
defaults b1=0.9, b2=0.999, eps=1e-8) whose moments are shaped like the
parameters, so they shard like them; ``STEPS`` holds whole jittable steps for
what does not fit the update/apply split. They only differ in how the per-leaf
arithmetic is written, to see which form XLA:CPU turns into the fewest passes
over memory. None is used by the package; RESULTS.md says what each one gave.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradtx import transforms as gt

B1, B2, EPS = 0.9, 0.999, 1e-8


class AdamWState(NamedTuple):
  """Step count and the two moments, each shaped like its parameter."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _init(params) -> AdamWState:
  zeros = lambda: jax.tree.map(jnp.zeros_like, params)
  return AdamWState(jnp.zeros([], jnp.int32), zeros(), zeros())


def _scalars(count: jax.Array, learning_rate: float):
  """Per-step scalars: reciprocal bias corrections, multiplied rather than divided."""
  t = count.astype(jnp.float32)
  inv_debias1 = 1 / (1 - B1**t)
  inv_sqrt_debias2 = jax.lax.rsqrt(1 - B2**t)
  return inv_debias1, inv_sqrt_debias2, learning_rate


def _map_leaves(leaf_fn: Callable, grads, state: AdamWState, params, count, scalars):
  """Applies ``leaf_fn(g, m, v, p, scalars)`` leaf-wise; returns (out tree, new state)."""
  leaves, treedef = jax.tree.flatten(grads)
  outs = [
      leaf_fn(g, m, v, p, scalars)
      for g, m, v, p in zip(
          leaves,
          treedef.flatten_up_to(state.mu),
          treedef.flatten_up_to(state.nu),
          treedef.flatten_up_to(params),
      )
  ]
  unflat = lambda i: treedef.unflatten([o[i] for o in outs])
  return unflat(0), AdamWState(count, unflat(1), unflat(2))


def _from_leaf_fn(leaf_fn: Callable, learning_rate: float, weight_decay: float):
  """A transformation whose whole chain (adam, decay, -lr) is ``leaf_fn`` per leaf."""

  def update_fn(updates, state, params):
    count = optax.safe_int32_increment(state.count)
    scalars = _scalars(count, learning_rate)
    return _map_leaves(
        lambda *args: leaf_fn(*args, weight_decay), updates, state, params, count, scalars
    )

  return optax.GradientTransformation(_init, update_fn)


def _whole_chain_leaf(g, m, v, p, scalars, weight_decay):
  """The current gradtx arithmetic, with decay and -lr folded into the same function."""
  inv_debias1, inv_sqrt_debias2, lr = scalars
  m = B1 * m + (1 - B1) * g
  v = B2 * v + (1 - B2) * g * g
  u = (m * inv_debias1) / (jnp.sqrt(v) * inv_sqrt_debias2 + EPS)
  return -lr * (u + weight_decay * p), m, v


def _reciprocal_leaf(g, m, v, p, scalars, weight_decay):
  """torch's form: one reciprocal per element, lr/debias1 folded into one scalar."""
  inv_debias1, inv_sqrt_debias2, lr = scalars
  m = B1 * m + (1 - B1) * g
  v = B2 * v + (1 - B2) * g * g
  inv_denom = jnp.reciprocal(jnp.sqrt(v) * inv_sqrt_debias2 + EPS)
  return -(lr * inv_debias1) * m * inv_denom - (lr * weight_decay) * p, m, v


def _recompute_leaf(g, m, v, p, scalars, weight_decay):
  """The step reads the *old* moments, so it shares all its inputs with them.

  Its copy of the moment arithmetic goes through an optimization barrier,
  which keeps XLA's CSE from merging it back into the stored moments; the
  step then depends on (g, m, v, p) only, and multi-output fusion can emit
  the three outputs from one loop. Without that fusion XLA copies m and v to
  keep their old values alive for the step: much slower.
  """
  inv_debias1, inv_sqrt_debias2, lr = scalars
  m_new = B1 * m + (1 - B1) * g
  v_new = B2 * v + (1 - B2) * g * g
  g, m, v = jax.lax.optimization_barrier((g, m, v))
  m_step = B1 * m + (1 - B1) * g
  v_step = B2 * v + (1 - B2) * g * g
  u = (m_step * inv_debias1) / (jnp.sqrt(v_step) * inv_sqrt_debias2 + EPS)
  return -lr * (u + weight_decay * p), m_new, v_new


def scale_by_adam_recompute() -> optax.GradientTransformation:
  """``gt.scale_by_adam()`` with ``_recompute_leaf``'s barrier: the candidate patch.

  Same state (``gt.ScaleByAdamState``) and numbers up to rounding; only the
  update is computed from barrier-separated copies of (g, m, v).
  """
  base = gt.scale_by_adam(B1, B2, EPS)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_int32_increment(state.count)
    t = count.astype(jnp.float32)
    inv_debias1, inv_debias2 = 1 / (1 - B1**t), 1 / (1 - B2**t)

    def leaf(g, m, v):
      m_new = B1 * m + (1 - B1) * g
      v_new = B2 * v + (1 - B2) * g * g
      g, m, v = jax.lax.optimization_barrier((g, m, v))
      m_hat = (B1 * m + (1 - B1) * g) * inv_debias1
      v_hat = (B2 * v + (1 - B2) * g * g) * inv_debias2
      return m_hat / (jnp.sqrt(v_hat) + EPS), m_new, v_new

    outs = jax.tree.map(leaf, updates, state.mu, state.nu)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, outs)
    return pick(0), gt.ScaleByAdamState(count, pick(1), pick(2), None)

  return optax.GradientTransformation(base.init, update_fn)


def gradtx_recompute(learning_rate: float, weight_decay: float):
  """``go.adamw``'s chain with ``scale_by_adam_recompute`` in place of ``scale_by_adam``."""
  return optax.chain(
      scale_by_adam_recompute(),
      gt.decoupled_weight_decay(weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )


def whole_chain(learning_rate: float, weight_decay: float):
  return _from_leaf_fn(_whole_chain_leaf, learning_rate, weight_decay)


def reciprocal(learning_rate: float, weight_decay: float):
  return _from_leaf_fn(_reciprocal_leaf, learning_rate, weight_decay)


def recompute(learning_rate: float, weight_decay: float):
  return _from_leaf_fn(_recompute_leaf, learning_rate, weight_decay)


def chunked_step(learning_rate: float, weight_decay: float, chunk: int = 1 << 16):
  """A whole jittable step (update *and* apply), looped over ``chunk``-element slices.

  Not a transformation: the apply has to sit inside the loop, or the update
  ``u`` would be written out in full and read back by ``apply_updates``. Each
  slice's loops re-read ``g`` and the new moments from cache rather than from
  memory. The updated moments pass an optimization barrier before the step
  reads them back, or XLA would forward the slice and copy the whole moment
  buffers to keep their old values alive. Leaves not a multiple of ``chunk``
  take the unchunked path. Slicing a sharded dimension would make the SPMD
  partitioner gather it, so this is a measurement, not a candidate design.
  """

  def leaf_fn(g, m, v, p, scalars):
    if g.size <= chunk or g.size % chunk:
      u, m, v = _whole_chain_leaf(g, m, v, p, scalars, weight_decay)
      return p + u, m, v
    inv_debias1, inv_sqrt_debias2, lr = scalars
    shape = g.shape
    g, m, v, p = (x.reshape(-1) for x in (g, m, v, p))

    def body(i, carry):
      p, m, v = carry
      start = i * chunk
      cut = lambda x: jax.lax.dynamic_slice_in_dim(x, start, chunk)
      paste = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, start, 0)
      g_c = cut(g)
      m = paste(m, B1 * cut(m) + (1 - B1) * g_c)
      v = paste(v, B2 * cut(v) + (1 - B2) * g_c * g_c)
      m, v = jax.lax.optimization_barrier((m, v))
      u = (cut(m) * inv_debias1) / (jnp.sqrt(cut(v)) * inv_sqrt_debias2 + EPS)
      p_c = cut(p)
      return paste(p, p_c - lr * (u + weight_decay * p_c)), m, v

    p, m, v = jax.lax.fori_loop(0, g.size // chunk, body, (p, m, v))
    return p.reshape(shape), m.reshape(shape), v.reshape(shape)

  def step(params, state, grads):
    count = optax.safe_int32_increment(state.count)
    scalars = _scalars(count, learning_rate)
    return _map_leaves(leaf_fn, grads, state, params, count, scalars)

  return _init, step


VARIANTS = {
    "whole-chain": whole_chain,
    "reciprocal": reciprocal,
    "recompute": recompute,
    "gradtx-recompute": gradtx_recompute,
}

# Whole steps, (init, step(params, state, grads) -> (params, state)), for what
# does not fit the update/apply split.
STEPS = {
    "chunked-step": chunked_step,
}
