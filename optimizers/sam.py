"""Sharpness-Aware Minimization (SAM, ASAM) around any base optimizer."""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate


class SamState(NamedTuple):
  """State of ``sam``: the base optimizer's state (SAM itself keeps none)."""

  inner_state: optax.OptState


def _perturbed_params(grads, params, rho, adaptive: bool, eta, eps) -> Any:
  """w + ε, ε = ρ·T²g/(‖Tg‖₂ + eps), T = |w| + η or 1, in float32 or wider."""
  upcast = lambda x: jnp.asarray(x).astype(_tree.compute_dtype(x))
  g, w = jax.tree.map(upcast, grads), jax.tree.map(upcast, params)
  t = jax.tree.map(lambda w_: jnp.abs(w_) + eta if adaptive else 1.0, w)
  scaled = jax.tree.map(lambda t_, g_: t_ * g_, t, g)
  norm = optax.tree.norm(scaled)
  # A zero norm means a zero numerator (T²g = T·Tg): ε = 0, even at eps = 0.
  # A NaN norm (a NaN gradient) stays NaN: every coordinate's ε is NaN.
  denominator = norm + eps
  scale = rho / jnp.where(denominator == 0, 1, denominator)
  return jax.tree.map(
      lambda p, w_, t_, g_: (w_ + scale * t_ * t_ * g_).astype(jnp.asarray(p).dtype),
      params, w, t, g,
  )


@_validate.checks_arguments
def sam(
    base: optax.GradientTransformation,
    *,
    rho: float = 0.05,
    adaptive: bool = False,
    eta: float = 0.0,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Sharpness-Aware Minimization: the base step taken with the gradient at w + ε.

  .. math::
    ε = ρ\,\frac{g}{\lVert g\rVert_2 + ϵ}
    \quad\text{or, adaptive,}\quad
    ε = ρ\,\frac{T^2 g}{\lVert T g\rVert_2 + ϵ},\; T = |w| + η,\qquad
    g^{\text{SAM}} = ∇L(w + ε),\qquad
    u = \operatorname{base}(g^{\text{SAM}}; w)

  with g = ∇L(w) the incoming ``updates`` and norms over the whole tree
  (Algorithm 1). ``adaptive`` is ASAM: η = 0 is davda54/sam's form (a leaf at
  zero is never perturbed); Kwon et al.'s code uses η = 0.01, on weights
  only (T = 1 for biases), where here η applies to every leaf. ``update`` takes
  ``params`` and ``grad_fn=``, a traceable function params → gradient tree,
  called once per step inside ``update``; further keyword arguments go to
  ``base``. The base sees the original ``params``. A static ``rho = 0`` skips
  ``grad_fn``: exactly the base optimizer. ε is formed in float32 (or the
  leaf's wider dtype) and w + ε cast back, so bf16 params stay bf16.

  ``sam`` replaces the gradient by ``grad_fn``'s, so it must be the outermost
  gradient transform: whatever is done to g before it (a clip in a chain, the
  accumulation of ``optax.MultiSteps``, ``optax.masked``) is lost or wrong.
  Put such transforms inside, ``sam(optax.chain(clip, base))``; ``grad_fn``
  must see the whole batch (with MultiSteps, the accumulated one). Wrapping
  ``sam`` in ``lookahead`` or ``apply_if_finite`` is fine.

  Non-finite gradients are not filtered: a NaN or ±inf in g makes ‖g‖
  non-finite and ε NaN (at the ±inf entries, or everywhere for a NaN), so
  ``grad_fn`` sees NaN parameters and the update and base state come out
  non-finite as they would with the base fed that gradient. To skip such
  steps, guard the gradient the base receives,
  ``sam(optax.apply_if_finite(base, k))``: that catches a non-finite
  ∇L(w + ε) too, which ``optax.apply_if_finite(sam(...), k)`` (testing g
  only) lets through.

  ``optax.contrib.sam(base, chain(normalize(), sgd(ρ)), sync_period=2,
  opaque_mode=True)`` gives the same trajectory at ``eps=0`` (its
  ``grad_fn(params, i)`` takes a second argument; it has no adaptive rule, and
  a zero g gives NaN). Its default ``opaque_mode=False`` differs: each call
  to ``update`` is one half-step, the adversarial ones included.

  Args:
    base: the optimizer that takes the SAM gradient; any optax transformation.
    rho: ρ, the neighbourhood radius, >= 0.
    adaptive: ASAM's scale-invariant neighbourhood (wants a larger ρ).
    eta: η, ASAM's offset of T = |w| + η, >= 0 (used with ``adaptive``).
    eps: ϵ, added to the norm, >= 0.

  Returns:
    A ``GradientTransformationExtraArgs`` with state ``SamState``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> loss = lambda w: jnp.sum(w ** 4)
    >>> tx = go.sam(go.sgd(0.25), rho=0.5)
    >>> w = jnp.array([1.0, 0.0])
    >>> u, _ = tx.update(jax.grad(loss)(w), tx.init(w), w, grad_fn=jax.grad(loss))
    >>> optax.apply_updates(w, u)  # w - 0.25 ∇L(w + ε), ε = (0.5, 0)
    Array([-2.375,  0.   ], dtype=float32)

  With ``flax.nnx`` (``Optimizer.update`` forwards keyword arguments; params
  arrive as an ``nnx.State`` of arrays)::

    optimizer = nnx.Optimizer(model, go.sam(go.sgd(0.1)), wrt=nnx.Param)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grad_fn = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest)))
    optimizer.update(model, nnx.grad(loss_fn)(model), grad_fn=grad_fn)

  References: Foret et al., "Sharpness-Aware Minimization for Efficiently
  Improving Generalization", ICLR 2021; Kwon et al., "ASAM: Adaptive
  Sharpness-Aware Minimization", ICML 2021.
  """
  _validate.check_transformation("base", base)
  _validate.check_non_negative("rho", rho)
  _validate.check_non_negative("eta", eta)
  _validate.check_non_negative("eps", eps)
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    return SamState(base.init(params))

  def update_fn(updates, state: SamState, params=None, *,
                grad_fn: Optional[Callable[[Any], Any]] = None, **extra_args):
    if params is None or grad_fn is None:
      raise ValueError(
          "sam's update needs params and grad_fn (params -> gradients), as in"
          " tx.update(grads, state, params, grad_fn=...); got params="
          f"{'None' if params is None else 'given'}, grad_fn={grad_fn!r}")
    _validate.check_matching_shapes(updates, params, "sam")
    if _validate.is_static_zero(rho):
      sam_grads = updates
    else:
      perturbed = _perturbed_params(updates, params, rho, adaptive, eta, eps)
      sam_grads = grad_fn(perturbed)
    new_updates, inner_state = base.update(
        sam_grads, state.inner_state, params, **extra_args)
    return new_updates, SamState(inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
