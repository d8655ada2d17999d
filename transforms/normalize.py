"""Second-moment normalization of matrix updates: NorMuon's and AdaMuon's step.

An orthogonalized update O ≈ UVᵀ has every singular value ≈ 1 but rows and
columns of very different sizes; dividing it by a running second moment of
its own entries, per element or per neuron, gives it back Adam's per-
coordinate adaptivity, and rescaling its Frobenius norm keeps the step size
Muon's.
"""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule
from gradtx.storage import state_format

GRANULARITIES = ("element", "fan_out", "fan_in")
RENORMALIZATIONS = ("input", "orthogonal")


class NormalizeBySecondMomentState(NamedTuple):
  """State of ``normalize_by_second_moment``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    nu: per matrix leaf, the EMA of u²: parameter-shaped (``"element"``), or
      one value per column (``"fan_out"``, shape (matrices, 1, cols)) or per
      row (``"fan_in"``, (matrices, rows, 1)) of its matrix view; ``None``
      for leaves without a view.
  """

  count: jax.Array
  nu: optax.Updates


def _statistic(sq: jax.Array, granularity: str) -> jax.Array:
  """u² averaged to the granularity, from a (matrices, rows, cols) stack."""
  if granularity == "fan_out":
    return jnp.mean(sq, axis=-2, keepdims=True)
  if granularity == "fan_in":
    return jnp.mean(sq, axis=-1, keepdims=True)
  return sq


def statistics_dtype(p) -> jnp.dtype:
  """Per-neuron statistics: float32, or float64 for float64 parameters."""
  return jnp.promote_types(_tree.real_dtype(p.dtype), jnp.float32)


def frobenius_norms(matrices: jax.Array) -> jax.Array:
  """‖M‖_F of each matrix of a (matrices, rows, cols) stack, shape (matrices, 1, 1)."""
  return _tree.norms(matrices, (-2, -1))


@_validate.checks_arguments
def normalize_by_second_moment(
    *,
    b2: float = 0.95,
    eps: float = 1e-8,
    granularity: str = "element",
    debias: bool = True,
    renormalize: Optional[str] = None,
    matrix_view: Optional[MatrixViewRule] = None,
    nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Divides each matrix update by the root of a running second moment of itself.

  For each matrix U of a leaf's matrix view (rows = fan-in, cols = fan-out):

  .. math::
    v_t = b_2 v_{t-1} + (1-b_2)\, \overline{U_t^{2}},\qquad
    \hat U = \frac{U_t}{\sqrt{v_t / (1-b_2^t)} + ε},\qquad
    u = \hat U \cdot \frac{r}{\|\hat U\|_F + ε}

  where the bar averages U⊙U over nothing (``"element"``, AdaMuon), over the
  rows, one value per output neuron (``"fan_out"``, NorMuon's per-neuron
  statistic: a row of PyTorch's (out, in) weight), or over the columns
  (``"fan_in"``); ``debias=False`` drops the 1/(1−b₂ᵗ). ``renormalize`` sets
  r: ``None`` leaves Û as it is, ``"input"`` restores U's own Frobenius norm
  (NorMuon), ``"orthogonal"`` gives r = sqrt(min(rows, cols)), the norm of a
  semi-orthogonal matrix (AdaMuon's RMS alignment). With either, the scalar
  factors of v (e.g. the bias correction) cancel. Leaves without a matrix view
  pass through, with no state.

  Args:
    b2: EMA decay of the second moment, in [0, 1).
    eps: added to √v and to the norm in the rescaling, >= 0.
    granularity: ``"element"``, ``"fan_out"`` or ``"fan_in"``.
    debias: divide v by its total weight 1 − b₂ᵗ.
    renormalize: ``None``, ``"input"`` or ``"orthogonal"``.
    matrix_view: the matrix-view rule (``gt.flax_matrix_view`` by default).
    nu_dtype: storage of an ``"element"`` second moment (any state format);
      the per-neuron statistics are float32 (float64 for float64 leaves).

  Returns:
    An ``optax.GradientTransformation`` with state
    ``NormalizeBySecondMomentState``.

  Reference: Si et al., "AdaMuon: Adaptive Muon Optimizer", arXiv 2507.11005
  (``"element"``, ``"orthogonal"``); Li et al., "NorMuon: Making Muon more
  efficient and scalable", arXiv 2510.05491 (``"fan_out"``, ``"input"``).
  """
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)
  if granularity not in GRANULARITIES:
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
  if renormalize is not None and renormalize not in RENORMALIZATIONS:
    raise ValueError(
        f"renormalize must be one of {RENORMALIZATIONS} or None, got {renormalize!r}")
  nu_format = state_format.state_format("nu_dtype", nu_dtype)
  elementwise = granularity == "element"

  def init_fn(params):
    def statistic(p, view):
      if elementwise:
        return (state_format.zeros_like_tree(p, nu_format, signed=False, real=True),)
      num, rows, cols = view.matrix_shape(tuple(p.shape))
      shape = (num, 1, cols) if granularity == "fan_out" else (num, rows, 1)
      return (jnp.zeros(shape, statistics_dtype(p)),)

    if elementwise and _tree.is_params_placeholder(params):
      # Element-wise v is a parameter copy: optax.tree.map_params maps it
      # (it shards it like its parameter) where it maps the first moment.
      return NormalizeBySecondMomentState(jnp.zeros([], jnp.int32), state_format.zeros_like_tree(
          params, nu_format, signed=False, real=True))
    (nu,) = _matrix_view.map_view_statistics(statistic, 1, params, matrix_view)
    return NormalizeBySecondMomentState(jnp.zeros([], jnp.int32), nu)

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "normalize_by_second_moment")
    count = optax.safe_increment(state.count)
    views = jax.tree.structure(_tree.unwrap_metadata(updates)).unflatten(
        _matrix_view.views_of(updates, matrix_view))
    seeds = state_format.maybe_rounding_seeds(updates, count, nu_format)
    traced = _tree.traced_hyperparameters(b2=b2, eps=eps)

    def leaf(u, nu, seed, view):
      if view is None:
        return u, nu
      # Traced values enter as arguments: Explicit-typed closures are refused.
      return _sharding.in_auto_axes(
          lambda *a: on_matrices(*a, view), u, nu, seed, count, traced, like=(u, nu))

    def on_matrices(u, nu, seed, count, hyper, view):
      decay, floor = hyper.get("b2", b2), hyper.get("eps", eps)
      dtype = _tree.compute_dtype(u)
      m = view.to_matrices(u.astype(dtype))
      previous = (view.to_matrices(state_format.load(nu, _tree.real_dtype(dtype)))
                  if elementwise else nu)
      nu_new = decay * previous + (1 - decay) * _statistic(_tree.abs_sq(m), granularity)
      nu_hat = nu_new / _tree.bias_correction(decay, count, dtype) if debias else nu_new
      out = m / (_tree.root(nu_hat) + floor)
      if renormalize is not None:
        target = (frobenius_norms(m) if renormalize == "input"
                  else math.sqrt(min(m.shape[-2:])))
        out = out * (target / (frobenius_norms(out) + floor))
      out = view.from_matrices(out, u.shape).astype(u.dtype)
      if elementwise:
        nu_new = state_format.store(view.from_matrices(nu_new, u.shape), nu, nu_format, seed)
      else:
        nu_new = _sharding.reshard_like(nu_new.astype(nu.dtype), nu)
      return out, nu_new

    u, nu = _tree.map_leaves(leaf, 2, updates, state.nu, seeds, views, once_per_shape=True)
    return u, NormalizeBySecondMomentState(count, nu)

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))
