"""MARS-AdamW: variance-reduced AdamW on the matrices, AdamW elsewhere."""

from typing import Any, Optional

import jax
import optax

from gradtx import transforms as gt
from gradtx._internal import routing as _routing
from gradtx._internal import validate as _validate
from gradtx.routing import matrix_view as _matrix_view


@gt.AdamWSide.document
@_validate.checks_arguments
def mars_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.95,
    b2: float = 0.99,
    eps: float = 1e-8,
    gamma: float = 0.025,
    exact: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: gt.MaskOrFn = None,
    cautious_weight_decay: bool = False,
    is_mars_param: Optional[gt.PathLeafRule] = None,
    matrix_view: Optional[gt.MatrixViewRule] = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.95,
    adam_weight_decay: optax.ScalarOrSchedule = 0.1,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MARS-AdamW: AdamW on a variance-reduced, clipped gradient.

  For each leaf picked by ``is_mars_param`` (by default every leaf with a
  matrix view, one matrix per layer or expert of a stack, embeddings and
  output heads included; the official code's ``optimize_1d=False`` takes
  every 2-D parameter, and sends convolution kernels (4-D) to its AdamW
  branch, where this default takes them as matrices: pass
  ``is_mars_param=lambda path, leaf: leaf.ndim == 2`` for its routing):

  .. math::
    c_t = g_t + γ\frac{β_1}{1-β_1}(g_t - \tilde g_{t-1}),\quad
    c_t \leftarrow c_t / \max(1, \lVert c_t\rVert_F),\quad
    p \leftarrow p - η_t\left(\frac{\hat m_t}{\sqrt{\hat v_t} + ε} + λ p\right)

  with Adam's moments of c (``gt.scale_by_mars``); every other leaf gets
  AdamW (``adam_b1``, ``adam_b2``, ``adam_weight_decay`` at
  ``adam_learning_rate``; ``None``: ``learning_rate``, as the official
  defaults ``lr = lr_1d = 3e-3``). The defaults are the official ones
  (``betas=(0.95, 0.99)``, γ = 0.025, ``weight_decay=0``, ``betas_1d=(0.9,
  0.95)``, ``weight_decay_1d=0.1``); Levanter's ``MarsConfig`` uses λ = 0.1
  and clips the tree's global norm instead. With ``exact=False`` (MARS-approx)
  :math:`\tilde g_{t-1}` is the previous gradient. With ``exact=True``
  (MARS-exact) it is the gradient at the previous step's parameters on this
  step's batch: ``update`` then takes ``params`` and ``grad_fn=``, a traceable
  function params → gradient tree on the current batch, evaluated once per
  step (``gt.gradients_at_previous_point``; see ``go.sam`` for its use with
  flax NNX; under ``optax.MultiSteps``, of the whole accumulated batch). In
  both, :math:`\tilde g_0 = 0` as in the official code.

  Args:
    learning_rate: η, a non-negative number or a schedule.
    b1: β₁ of the MARS leaves, in [0, 1).
    b2: β₂ of the MARS leaves, in [0, 1).
    eps: added to the denominators (both sides, as the official code), >= 0.
    gamma: γ, the strength of the gradient correction, >= 0.
    exact: MARS-exact (``update(..., grad_fn=)``) instead of MARS-approx.
    weight_decay: λ of the MARS leaves, decoupled, >= 0, or a schedule.
    mask: which leaves get the decay, on both sides (``optax.masked``
      semantics); ``None``: every leaf.
    cautious_weight_decay: on the MARS leaves, decay only where the update
      has the sign of the weight (``gt.decoupled_weight_decay``; Chen et al.
      2025); the AdamW side keeps plain decay.
    is_mars_param: the routing rule, a function of ``(path, leaf)``;
      ``None``: the leaves with a matrix view that ``gt.matrix_roles``
      gives a role other than ``"other"`` (kernels, attention projections,
      embedding tables, output heads; not biases, norm scales or stacks of
      them, whatever their names), ``lambda path, leaf: True`` is the
      official ``optimize_1d=True``.
    matrix_view: the matrix-view rule of the routing and of the clip's
      per-matrix norm (``gt.flax_matrix_view`` by default: a stack is seen
      as one matrix per layer or expert where its axis names or an
      ``expert`` name say so; ``gt.stacked_matrix_view()`` for unnamed
      stacks).
    adam_*: the AdamW side (``gt.AdamWSide``; its eps is ``eps``).
    mu_dtype: storage of the first moments.
    nu_dtype: storage of the second moments.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (an ``optax.multi_transform``;
    with ``exact``, inside ``gt.gradients_at_previous_point``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from gradtx import optimizers as go
    >>> loss = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
    >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.ones(2)}
    >>> tx = go.mars_adamw(1e-2, exact=True)
    >>> grad_fn = jax.grad(loss)
    >>> u, state = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
    >>> u["w"].round(3)  # −η sign(c) on the first step
    Array([[0.01, 0.01],
           [0.01, 0.01]], dtype=float32)

  Reference: Yuan et al., "MARS: Unleashing the Power of Variance Reduction
  for Training Large Models", arXiv 2411.10438, 2024; AGI-Arena/MARS
  ``MARS/optimizers/mars.py``.
  """
  mars = optax.chain(
      gt.scale_by_mars(b1=b1, b2=b2, eps=eps, gamma=gamma, exact=exact,
                       mu_dtype=mu_dtype, nu_dtype=nu_dtype, matrix_view=matrix_view),
      gt.decoupled_weight_decay(
          weight_decay, mask, cautious_weight_decay=cautious_weight_decay),
      gt.scale_by_learning_rate(learning_rate),
  )
  # Checked here: side.adamw would name it weight_decay (the side takes None).
  _validate.check_scalar_or_schedule("adam_weight_decay", adam_weight_decay)
  side = gt.AdamWSide(adam_learning_rate, adam_b1, adam_b2, eps, adam_weight_decay,
                      mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  adam = side.adamw(learning_rate, weight_decay=adam_weight_decay, mask=mask)
  def labels(params):
    if is_mars_param is None:
      roles = jax.tree.leaves(gt.matrix_roles(params, matrix_view=matrix_view))
      views = _matrix_view.views_of(params, matrix_view)
      return jax.tree.structure(params).unflatten(
          ["mars" if role != "other" and view is not None else "adam"
           for role, view in zip(roles, views)])
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: "mars" if is_mars_param(_routing.plain_path(path), leaf) else "adam",
        params)

  tx = gt.keeps_init_names(optax.multi_transform({"mars": mars, "adam": adam}, labels,
                                                mask_compatible_extra_args=True))
  return gt.gradients_at_previous_point(tx) if exact else tx
