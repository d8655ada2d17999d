"""Low-rank orthogonalization: msign(G) ≈ U_k V_kᵀ by power iteration (Dion).

Newton–Schulz (``orthogonalize``) costs O(m n min(m, n)) per iteration. A
rank-k approximation of the orthogonalized update costs O(m n k): one
product with a basis Q (n × k) carried over from the previous step, a QR of
the m × k result P, one product back (Ahn et al., "Dion: Distributed
Orthonormalized Updates", arXiv 2504.05295, Algorithm 1). What the rank-k
update leaves out is fed back into the next step's input (error feedback),
so nothing is lost, only delayed.

The per-matrix work is ``low_rank_orthogonalize``, a function of a stack of
same-shape matrices (leading axes are a batch) and their stacked bases, so
that an owner-compute layout (stacks spread over devices, each running the
function on its own slice) can call it as it is.
"""

import functools
import math
import numbers
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import block_stacks
from gradtx._internal import names as _names
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.linalg.matrix_roots import (
  matmul,
  one_matrix_per_call_on_cpu,
  transpose,
  unbatched_on_cpu,
)
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule
from gradtx.storage import quantize, state_format

ORTHONORMALIZE_METHODS = ("qr", "cholesky_qr")


def _qr(p: jax.Array) -> jax.Array:
  return unbatched_on_cpu(lambda x: jnp.linalg.qr(x)[0], p)


# L⁻¹ B for lower-triangular L over any leading axes, one matrix per LAPACK
# call on CPU (``one_matrix_per_call_on_cpu``; a stack, or a user's vmap,
# made it one batched call).
_solve_lower = jnp.vectorize(
    one_matrix_per_call_on_cpu(
        functools.partial(jax.scipy.linalg.solve_triangular, lower=True)),
    signature="(k,k),(k,m)->(k,m)")


def _cholesky_qr(p: jax.Array) -> jax.Array:
  """Shifted CholeskyQR3 (Fukaya et al. 2020): P ← P·chol(PᵀP + sI)⁻ᵀ, thrice.

  Matrix products and k × k Cholesky factors only. The first pass's shift
  s = 11(mk + k(k+1))·u·‖P‖²_F makes it safe for any condition number (plain
  CholeskyQR2 fails, NaN, once cond(P) ≳ u^{-1/2}, ~3e3 in float32: seen on
  full-rank Dion steps); the two plain passes then restore orthogonality. The
  later passes keep a ridge of a few ulp of the trace, so an exactly
  rank-deficient P gives arbitrary small columns rather than NaN.
  """
  m, k = p.shape[-2:]
  u = jnp.finfo(p.dtype).eps

  def one_pass(p, ridge):
    gram = matmul(transpose(p), p)
    eye = jnp.eye(k, dtype=p.dtype)
    shift = ridge * jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
    lower = unbatched_on_cpu(jnp.linalg.cholesky, gram + shift * eye)
    return transpose(_solve_lower(lower, transpose(p)))

  p = one_pass(p, 11 * (m * k + k * (k + 1)) * u)
  return one_pass(one_pass(p, 4 * u), 4 * u)


def low_rank_orthogonalize(
    b: jax.Array,
    basis: jax.Array,
    *,
    power_iters: int = 1,
    orthonormalize: str = "qr",
    eps: float = 1e-8,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Rank-k approximations of msign(B) for a stack of matrices B (..., m, n).

  With B tall (rows ≥ cols; a wide B is transposed and back) and the basis
  Q (..., n, k) from the previous step, each power iteration computes

  .. math:: P = \operatorname{orth}(B Q),\qquad R = B^T P

  (Q ← R between iterations); then :math:`Q' = R / (\|R\|_{col} + ε)` and
  the result is :math:`P Q'^T`. When Q's columns are B's top-k right
  singular vectors one by one (the fixed point the power iteration
  converges to), P = U_k, R = V_k Σ_k, Q' = V_k and the result is U_k V_kᵀ
  (up to the ε of the normalisation). A Q that only spans that subspace
  (V_k times a rotation) is not enough: the column normalisation then
  mixes the singular values in, and one call gives a matrix whose singular
  values are not all 1. A B of rank below k in float32 gives k − rank
  spurious directions on the first calls: R's round-off columns
  (~1e-7‖B‖) are normalised to unit length, so the result's spectral norm
  can exceed 1 (2.4 seen on a batch-of-4 gradient at k = 16) until the
  basis settles; the reference (``dion_simple.py``) normalises the same way.
  A zero matrix gives a zero result and keeps its basis (column-normalised),
  as Dion's reference does.

  Args:
    b: (..., m, n) matrices; leading axes are a batch.
    basis: (..., min(m, n), k) bases, one per matrix (k <= min(m, n)).
    power_iters: iterations per call, >= 1.
    orthonormalize: ``"qr"`` (Householder QR, exact) or ``"cholesky_qr"``
      (shifted CholeskyQR3: products and k × k Cholesky factors only; the
      same P up to round-off when BQ has full rank).
    eps: ε of the column normalisation.

  Returns:
    ``(approximation, new_basis, low_rank)``: P Q'ᵀ and Q', and P Rᵀ (the
    rank-k part of B that the approximation represents, for error
    feedback), in B's orientation and dtype (the arithmetic in at least
    float32).
  """
  if orthonormalize not in ORTHONORMALIZE_METHODS:
    raise ValueError(
        f"orthonormalize must be one of {ORTHONORMALIZE_METHODS}, got"
        f" {orthonormalize!r}")
  orth = _qr if orthonormalize == "qr" else _cholesky_qr
  wide = b.shape[-2] < b.shape[-1]
  x = b.astype(jnp.promote_types(b.dtype, jnp.float32))
  x = transpose(x) if wide else x
  q = basis.astype(x.dtype)
  zero = jnp.all(x == 0, axis=(-2, -1), keepdims=True)
  # A zero matrix is iterated as I instead (its results are replaced below):
  # QR's derivative at a zero matrix is NaN, even where discarded.
  x_iterated = jnp.where(zero, jnp.eye(x.shape[-2], x.shape[-1], dtype=x.dtype), x)

  def power_iteration(_, carry):
    p = orth(matmul(x_iterated, carry[1]))
    return p, matmul(transpose(x_iterated), p)

  p0 = jnp.zeros((*x.shape[:-1], q.shape[-1]), x.dtype)
  p, r = jax.lax.fori_loop(0, power_iters, power_iteration, (p0, q))
  p = jnp.where(zero, 0, p)
  r = jnp.where(zero, basis.astype(x.dtype), r)
  new_basis = r / (jnp.linalg.norm(r, axis=-2, keepdims=True) + eps)
  approximation = matmul(p, transpose(new_basis))
  low_rank = matmul(p, transpose(r))
  back = (lambda y: transpose(y)) if wide else (lambda y: y)
  return (back(approximation).astype(b.dtype), new_basis.astype(basis.dtype),
          back(low_rank).astype(b.dtype))


class OrthogonalizeLowRankState(NamedTuple):
  """State of ``orthogonalize_low_rank``; fields structured like the params.

  Attributes:
    count: steps taken (the stochastic rounding's seed of a
      ``StochasticBfloat16`` buffer).
    basis: per leaf with a matrix view, the carried bases Q of its
      (num_matrices, m, n) view, (num_matrices, min(m, n), k) in at least
      float32; ``optax.MaskedNode()`` on leaves without a view.
    residual: per leaf with a matrix view, the error-feedback buffer M
      (shaped like the leaf, stored as ``mu_dtype`` says);
      ``optax.MaskedNode()`` elsewhere and everywhere without error feedback.
  """

  count: jax.Array
  basis: optax.Updates
  residual: optax.Updates


def check_rank(rank: Any) -> Union[int, float]:
  """``rank`` validated: an integer >= 1, or a fraction in (0, 1]."""
  integral = isinstance(rank, numbers.Integral) and not isinstance(rank, bool)
  fraction = isinstance(rank, numbers.Real) and not integral and 0 < rank <= 1
  if not ((integral and rank >= 1) or fraction):
    raise ValueError(
        "rank must be an integer >= 1 or a fraction in (0, 1] (it sets"
        f" shapes: with optax.inject_hyperparams, list it in static_args), got"
        f" {rank!r}")
  return int(rank) if integral else float(rank)


def leaf_rank(rank: Union[int, float], m: int, n: int) -> int:
  """k for an m × n matrix: ``rank`` (an int), or ⌈rank·min(m, n)⌉ (a float)."""
  k = rank if isinstance(rank, int) else math.ceil(rank * min(m, n))
  return max(1, min(k, m, n))


def basis_shape(view: Any, shape: tuple, rank: Union[int, float]) -> tuple:
  """(matrices, min(m, n), k): the bases of a leaf of ``shape`` seen as ``view``."""
  num, m, n = view.matrix_shape(tuple(shape))
  return (num, min(m, n), leaf_rank(rank, m, n))


@_validate.checks_arguments
def orthogonalize_low_rank(
    rank: Union[int, float],
    *,
    momentum: float = 0.0,
    error_feedback: bool = True,
    power_iters: int = 1,
    orthonormalize: str = "qr",
    eps: float = 1e-8,
    seed: int = 0,
    batch_same_shape: bool = False,
    matrix_view: Optional[MatrixViewRule] = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Replaces every matrix leaf by a rank-k approximation of its msign (Dion).

  Per matrix of each leaf's matrix view (``matrix_view``; by default
  ``gt.flax_matrix_view``: a dense kernel is one matrix, a convolution
  kernel (kh·kw·in, out); leaves without a view, biases and norm scales,
  pass through), with g the incoming update:

  .. math::
    B_t = M_{t-1} + g_t,\quad
    (P, R) = \text{power iteration on } B_t \text{ from } Q_{t-1},\quad
    Q_t = R / \|R\|_{col},\\
    u_t = P Q_t^T \approx U_k V_k^T,\qquad
    M_t = B_t - (1 - μ) P R^T

  (``low_rank_orthogonalize``). With μ = ``momentum`` = 0, M holds what the
  rank-k update left out (pure error feedback); with μ > 0 the represented
  part also decays like heavy-ball momentum: Dion's momentum, μ = 0.95 in
  its paper. ``error_feedback=False`` keeps no M (B_t = g_t) and is only the
  power iteration, whose carried basis converges to the top-k singular
  subspace when g changes slowly. Q₀ is Gaussian, from ``seed`` and the
  leaf's position.

  On an Explicit mesh a sharded matrix is gathered, orthogonalized whole,
  and its update and buffer resharded like it; the bases are replicated.
  The per-matrix function takes stacks, for an owner-compute layout.

  Args:
    rank: k, an int >= 1, or a float in (0, 1]: that fraction of min(m, n),
      rounded up; always capped at min(m, n).
    momentum: μ in [0, 1), the decay of the represented part of M.
    error_feedback: keep the buffer M.
    power_iters: power iterations per step, >= 1 (may be traced).
    orthonormalize: ``"qr"`` (exact Householder QR, as Dion's
      ``dion_simple.py``) or ``"cholesky_qr"`` (shifted CholeskyQR3, Dion's
      Cholesky-QR family; matmul-bound).
    eps: ε of the column normalisation, >= 0.
    seed: seed of the initial bases, >= 0.
    batch_same_shape: off a mesh, step the leaves whose matrices share a shape
      as one vmapped stack (the QR and Cholesky calls stay one matrix per
      LAPACK call): compile time grows far less with their number (48 -> 192
      matrices 1.94x against 3.43x; 1.95 against 4.37 s at 192; at a dozen it
      can be slower), but the stack and the slices back are
      copies (step 6-9% slower, twice the temporaries; benchmarks/RESULTS.md,
      Compile time, stop 56), hence off by default; the same updates to
      round-off. An int8 buffer steps per leaf either way.
    matrix_view: the matrix-view rule (see ``gt.flax_matrix_view``).
    mu_dtype: storage of the buffer M, as in ``gt.ema`` (``None``: the
      parameter's dtype, float16 too; pass ``jnp.float32`` to keep M wider
      than float16 parameters). B is formed
      in the wider of M's and g's dtypes (float32 from int8 blocks). One NaN
      gradient makes the whole matrix's P Rᵀ and basis NaN, so this and every
      later step of the leaf are NaN (wrap in ``optax.apply_if_finite`` to
      skip such steps); int8 blocks then store M as 0, valid codes. Without
      error feedback there is no M and ``mu_dtype`` is unused.

  Returns:
    An ``optax.GradientTransformation`` with state
    ``OrthogonalizeLowRankState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> g = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
    >>> tx = gt.orthogonalize_low_rank(2, error_feedback=False, power_iters=10)
    >>> u, _ = tx.update(g, tx.init(g))
    >>> jnp.round(jnp.diag(u), 4)  # U_2 V_2ᵀ: the top two directions
    Array([1., 1., 0.], dtype=float32)

  Reference: Ahn, Xu, Abreu, Langford et al., "Dion: Distributed
  Orthonormalized Updates", arXiv 2504.05295, Algorithm 1;
  github.com/microsoft/dion (``dion_simple.py``; the tests follow its
  update step in NumPy). Departure: the transposition rule for wide matrices
  is that of Dion's reference implementation (the basis sits on the short
  side).
  """
  _validate.check_decay("momentum", momentum)
  _validate.check_non_negative("eps", eps)
  power_iters = _validate.check_integer("power_iters", power_iters, traced=True)
  seed = _validate.check_integer("seed", seed, low=0, traced=True)
  rank = check_rank(rank)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  if orthonormalize not in ORTHONORMALIZE_METHODS:
    raise ValueError(
        f"orthonormalize must be one of {ORTHONORMALIZE_METHODS}, got"
        f" {orthonormalize!r}")

  def init_fn(params):
    _validate.check_real_leaves(params, "orthogonalize_low_rank")
    key = jax.random.key(seed)
    views = _matrix_view.views_of(params, matrix_view)
    basis_views = iter(views)  # map_statistics visits the leaves in views' order

    def basis(path, p):
      view = next(basis_views)
      if view is None:
        return (optax.MaskedNode(),)
      shape = basis_shape(view, tuple(p.shape), rank)
      leaf_key = jax.random.fold_in(key, _path_hash(path))
      return (jax.random.normal(leaf_key, shape, _tree.compute_dtype(p)),)

    (bases,) = _tree.map_statistics(basis, 1, params, with_path=True)
    if not error_feedback:
      residual = jax.tree.map(lambda _: optax.MaskedNode(), params)
    else:
      # NNX variables and Linen boxes whole: an 8-bit buffer is a
      # QuantizedArray, not a wrapper's value (nnx.Optimizer would write it
      # back as an nnx.State; a box's names do not fit its codes).
      leaves, treedef = jax.tree.flatten(params, is_leaf=_tree.is_wrapped)
      leaf_views = iter(views)  # one per array: none for a masked-out leaf

      def residual_of(p):
        if not jax.tree.leaves(p):  # masked out (optax.masked): kept as it is
          return p
        if next(leaf_views) is None:
          return jax.tree.map(lambda _: optax.MaskedNode(), p)
        return state_format.zeros_like_tree(p, mu_format, signed=True)

      residual = treedef.unflatten([residual_of(p) for p in leaves])
    return OrthogonalizeLowRankState(jnp.zeros([], jnp.int32), bases, residual)

  def leaf(g, view, basis, residual, seed):
    if view is None:
      return g, basis, residual
    # Traced hyperparameters enter as arguments: Explicit-typed closures are refused.
    traced = _tree.traced_hyperparameters(power_iters=power_iters, eps=eps, momentum=momentum)
    return _sharding.in_auto_axes(
        lambda *a: on_matrices(*a, view), g, basis, residual, seed, traced,
        like=(g, basis, residual))

  def on_matrices(g, basis, residual, seed, hyper, view):
    hyper = {"power_iters": power_iters, "eps": eps, "momentum": momentum, **hyper}
    if error_feedback:
      quantized = isinstance(residual, quantize.QuantizedArray)
      dtype = jnp.promote_types(jnp.float32 if quantized else residual.dtype, g.dtype)
      b = state_format.load(residual, dtype) + g.astype(dtype)
    else:
      b = g
    matrices = _sharding.gather(view.to_matrices(b))
    u, basis, low_rank = low_rank_orthogonalize(
        matrices, basis, power_iters=hyper["power_iters"], orthonormalize=orthonormalize,
        eps=hyper["eps"])
    u = _sharding.reshard_like(view.from_matrices(u, g.shape).astype(g.dtype), g)
    if error_feedback:
      low_rank = view.from_matrices(low_rank, b.shape)
      new = b - (1 - hyper["momentum"]) * low_rank
      if state_format.is_quantized(mu_format):  # blocks hold finite values
        new = jnp.where(jnp.isfinite(new), new, 0)
      residual = state_format.store(new, residual, mu_format, seed)
    return u, basis, residual

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "orthogonalize_low_rank")
    for path, residual in jax.tree_util.tree_flatten_with_path(
        state.residual, is_leaf=lambda x: isinstance(x, quantize.QuantizedArray))[0]:
      if isinstance(residual, quantize.QuantizedArray):
        _validate.check_blocks_fit(
            residual, f"orthogonalize_low_rank: the 8-bit buffer of {jax.tree_util.keystr(path)}")
    leaves, treedef = jax.tree.flatten(updates)
    views = _matrix_view.views_of(updates, matrix_view)
    statistics = _tree.statistics_structure(updates)
    bases = statistics.flatten_up_to(state.basis)
    for (path, g), view, basis in zip(
        jax.tree_util.tree_flatten_with_path(updates)[0], views, bases):
      if view is not None:
        _validate.check_state_shape(
            jnp.shape(basis), basis_shape(view, g.shape, rank),
            f"orthogonalize_low_rank: the basis of {jax.tree_util.keystr(path)}",
            f"rank={rank!r} and the matrix view")
    residuals = treedef.flatten_up_to(state.residual)
    count = optax.safe_increment(state.count)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format)
    seeds = [None] * len(leaves) if seeds is None else treedef.flatten_up_to(seeds)
    if batch_same_shape and not state_format.is_quantized(mu_format):
      out = [(g, basis, residual) for g, basis, residual in zip(leaves, bases, residuals)]
      on = [i for i, view in enumerate(views) if view is not None]
      stepped = block_stacks.map_alike(
          lambda view: lambda g, *rest: leaf(g, view, *rest), [views[i] for i in on],
          *([column[i] for i in on] for column in (leaves, bases, residuals, seeds)))
      for i, result in zip(on, stepped):
        out[i] = result
    else:
      out = [leaf(*args) for args in zip(leaves, views, bases, residuals, seeds)]
    u, residual = (treedef.unflatten([o[i] for o in out]) for i in (0, 2))
    bases = statistics.unflatten([o[1] for o in out])
    if not error_feedback:
      residual = state.residual
    return u, OrthogonalizeLowRankState(count, bases, residual)

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))


def _path_hash(path: tuple) -> int:
  """A stable 31-bit integer of a leaf's path (names only), for its seed."""
  text = "/".join(_names.path_names(path))
  value = 0
  for char in text.encode():
    value = (value * 131 + char) % (2**31 - 1)
  return value
