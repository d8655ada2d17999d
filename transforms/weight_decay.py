"""Weight decay: the coupled (L2) and decoupled (AdamW) forms.

Both add ``weight_decay * params`` to the incoming updates; what makes them
different is *where* they sit in a chain. Before a preconditioner (e.g.
``scale_by_adam``) the decay is part of the gradient and gets rescaled with
it: L2 regularisation ("Adam + L2", torch's Adam), whose shrinkage is anisotropic
and, for a zero data gradient, moves every weight by about lr·sign(w). After
the preconditioner and before the learning-rate scale it is decoupled weight
decay (Loshchilov & Hutter 2019): p ← p − lr·(u + λp), a radial, multiplicative
shrinkage p ← (1 − lr·λ)p when u = 0. This is also ``torch.optim.AdamW``'s
rule, which multiplies by (1 − lr·λ) before the Adam step.
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def weight_decay_mask(mask: MaskOrFn, params: Any) -> Any:
  """``mask`` as a tree of Python booleans shaped like ``params``.

  ``None`` selects every leaf; a callable is called on ``params``; a mask
  that is a prefix of ``params`` (``optax.masked`` takes one) is broadcast
  over each subtree.
  """
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  resolved = mask(params) if callable(mask) else mask
  # Where params are masked out already (optax.masked, multi_transform) the
  # result keeps their MaskedNode, so it is structured like the updates.
  masked = _tree.is_masked_node
  broadcast = lambda m, subtree: jax.tree.map(
      lambda p: p if masked(p) else bool(m), subtree, is_leaf=masked)
  return jax.tree.map(broadcast, resolved, params, is_leaf=masked)


class WeightDecayState(NamedTuple):
  """State of the weight-decay transforms with a scheduled λ: the step count
  (a constant λ keeps ``optax.EmptyState()``, as optax does)."""

  count: jax.Array


def _add_scaled_params(
    weight_decay: Union[float, optax.Schedule], mask: MaskOrFn, cautious: bool = False
) -> optax.GradientTransformation:
  _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_mask("mask", mask)

  counts = callable(weight_decay)

  def init_fn(params):
    del params
    return WeightDecayState(jnp.zeros([], jnp.int32)) if counts else optax.EmptyState()

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "weight decay")
    if _validate.is_static_zero(weight_decay):
      return updates, state
    if params is None:
      raise ValueError(
          "weight decay needs the parameters: call update(updates, state,"
          " params)"
      )
    decay = _tree.resolve_schedule(weight_decay, state.count)

    def leaf(g, p):
      dtype = _tree.compute_dtype(g)
      g_, p_ = g.astype(dtype), p.astype(dtype)
      decayed = decay * p_
      if cautious:  # only where u·p ≥ 0: the step then moves p towards 0
        agrees = jnp.real(jnp.conj(g_) * p_) >= 0 if _tree.is_complex(g_) else g_ * p_ >= 0
        decayed = jnp.where(agrees, decayed, 0)
      return (g_ + decayed).astype(g.dtype)

    updates = jax.tree.map(leaf, updates, params)
    return updates, _tree.counted(state)

  tx = optax.GradientTransformation(init_fn, update_fn)
  return tx if mask is None else optax.masked(tx, mask)


@_validate.checks_arguments
def decoupled_weight_decay(
    weight_decay: Union[float, optax.Schedule],
    mask: MaskOrFn = None,
    *,
    cautious_weight_decay: bool = False,
) -> optax.GradientTransformation:
  r"""Adds decoupled weight decay to an already preconditioned update.

  .. math:: u \leftarrow u + λ_t\, p
    \quad\text{or, cautious,}\quad u \leftarrow u + λ_t\, \mathbb{1}[u \odot p \ge 0]\, p

  Place it after the preconditioner and before the learning-rate scale; the
  chain then applies :math:`p \leftarrow p - η_t (u + λ_t p)`, PyTorch AdamW's
  semantics. Cautious weight decay decays a coordinate only where the
  incoming update u (still the gradient's sign, before the learning rate
  negates it) has the sign of p, i.e. where the step already moves p
  towards zero, and leaves the others to the data: the rule of the
  modded-nanogpt / nanochat Muon step (``mask = (g * p) >= 0``) and of the
  Cautious Weight Decay paper. heavyball compares sign bits, which differs
  only where u or p is zero. A zero update is decayed in full, so
  with zero gradients this is plain decoupled decay. Complex leaves use
  :math:`\operatorname{Re}(\bar u p) \ge 0`.

  Args:
    weight_decay: λ, a non-negative number or a schedule of the step count.
      A literal 0 makes the transform the identity (no ``params`` needed).
    mask: a pytree of booleans shaped like the parameters, or a callable
      returning one from the parameters, selecting the leaves to decay
      (``optax.masked`` semantics). ``None`` decays every leaf.
    cautious_weight_decay: decay only where ``u * p >= 0``.

  Returns:
    An ``optax.GradientTransformation`` with state ``WeightDecayState`` for a
    scheduled λ, else ``optax.EmptyState`` (wrapped in ``optax.MaskedState``
    when a mask is given).

  Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
  ICLR 2019; Chen et al., "Cautious Weight Decay", arXiv 2510.12402,
  2025 (the cautious form).
  """
  return _add_scaled_params(weight_decay, mask, cautious_weight_decay)


def with_coupled_decay(
    updates: Any, params: Any, weight_decay: Any, mask: MaskOrFn, count: jax.Array
) -> Any:
  """``coupled_weight_decay``'s g + λ_t p at step ``count``, as a function: for
  an optimizer whose own statistics read the decayed gradient (DoG's norms,
  COCOB's sums, MADGRAD's), with λ_t its schedule at the optimizer's count."""
  if _validate.is_static_zero(weight_decay):
    return updates
  decay = coupled_weight_decay(_tree.resolve_schedule(weight_decay, count), mask)
  return decay.update(updates, decay.init(params), params)[0]


def coupled_weight_decay(
    weight_decay: Union[float, optax.Schedule], mask: MaskOrFn = None
) -> optax.GradientTransformation:
  r"""Adds the gradient of the L2 penalty :math:`\tfrac{λ}{2}\|p\|^2`.

  .. math:: g \leftarrow g + λ_t\, p

  Place it first in a chain, before any preconditioner: the decay is then
  rescaled with the gradient (``torch.optim.Adam``/``SGD``'s
  ``weight_decay``). The same operation as ``decoupled_weight_decay``; only
  the position in the chain differs, and that changes the optimizer.

  Args:
    weight_decay: λ, a non-negative number or a schedule of the step count.
    mask: which leaves to decay, as in ``decoupled_weight_decay``.

  Returns:
    An ``optax.GradientTransformation`` with state ``WeightDecayState`` for a
    scheduled λ, else ``optax.EmptyState``.
  """
  return _add_scaled_params(weight_decay, mask)
