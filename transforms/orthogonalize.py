"""Matrix orthogonalization: Newton–Schulz msign and singular-value clipping.

For a matrix :math:`G = UΣV^H`, ``msign(G) = UV^H`` is the nearest
semi-orthogonal matrix and the steepest-descent direction under the spectral
norm (the "matrix-wise geometry" of Muon, against AdamW's element-wise one).
Newton–Schulz approximates it with matrix products only.
"""

import itertools
import math
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import block_stacks
from gradtx._internal import sharding as _sharding
from gradtx._internal import validate as _validate
from gradtx.linalg.matrix_roots import unbatched_on_cpu
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule

Coefficients = Union[str, Sequence[Sequence[float]]]

_POLAR_EXPRESS_SAFETY = 1.01
# Amsel et al. 2025, Algorithm 1 (degree 5, ℓ = 1e-3): the per-iteration
# minimax polynomials; the last one repeats for any further iteration.
_POLAR_EXPRESS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_COEFFICIENT_SETS = {
    # Jordan's quintic, 5 steps in the reference Muon: a steep slope at 0,
    # singular values end in a band around 1 rather than at 1.
    "jordan": ((3.4445, -4.7750, 2.0315),),
    # The classical cubic Newton–Schulz iteration (Higham 2008, ch. 8).
    "cubic": ((1.5, -0.5, 0.0),),
    # Divided by the paper's safety factor (a/s, b/s³, c/s⁵), all but the last.
    "polar_express": tuple(
        (a / _POLAR_EXPRESS_SAFETY, b / _POLAR_EXPRESS_SAFETY**3,
         c / _POLAR_EXPRESS_SAFETY**5)
        for a, b, c in _POLAR_EXPRESS[:-1]
    ) + _POLAR_EXPRESS[-1:],
}
# Algorithm 1 also divides the input by 1.01·‖X‖_F so that bf16 rounding
# cannot push a singular value above 1.
_NORM_SAFETY = {"polar_express": _POLAR_EXPRESS_SAFETY}


def coefficient_schedule(
    coefficients: Coefficients, ns_steps: int
) -> tuple[tuple[float, float, float], ...]:
  """The (a, b, c) of each of ``ns_steps`` iterations; the last set repeats."""
  message = (f"coefficients must be a name or a non-empty sequence of (a, b, c)"
             f" of finite numbers, got {coefficients!r}")
  # An unknown name raises its own error; anything else must be (a, b, c) triples.
  named = _named_coefficients(coefficients) if isinstance(coefficients, str) else coefficients
  try:
    triples = tuple(tuple(float(v) for v in abc) for abc in named)
  except (TypeError, ValueError) as error:
    raise ValueError(message) from error
  if not triples or any(len(abc) != 3 or not all(map(math.isfinite, abc)) for abc in triples):
    raise ValueError(message)
  repeated = itertools.chain(triples, itertools.repeat(triples[-1]))
  return tuple(itertools.islice(repeated, ns_steps))


def _hermitian(x: jax.Array) -> jax.Array:
  return jnp.conj(jnp.swapaxes(x, -1, -2))


def _standard_iterations(x, schedule):
  for a, b, c in schedule:
    gram = x @ _hermitian(x)
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x


def _traced_iterations(x, coefficients, ns_steps):
  """The standard iteration for a traced ``ns_steps`` (inject_hyperparams).

  One ``lax.fori_loop`` over the coefficient table, the last set repeating;
  the same arithmetic as ``_standard_iterations``.
  """
  table = jnp.asarray(coefficient_schedule(coefficients, len(
      _named_coefficients(coefficients))), x.real.dtype)

  def body(i, x):
    a, b, c = table[jnp.minimum(i, table.shape[0] - 1)]
    gram = x @ _hermitian(x)
    return a * x + (b * gram + c * gram @ gram) @ x

  return jax.lax.fori_loop(0, ns_steps, body, x)


def _gram_iterations(x, schedule, restart_at=2):
  """Iterates on R = XXᴴ and Q (X_k = Q X_0); re-forms X at ``restart_at``.

  With Z = aI + bR + cR², one step is X ← ZX, so Q ← ZQ and R ← ZRZ: only
  m×m products, plus one m×m×n product at each (re)start and at the end. The
  restart bounds the round-off that accumulates in Q (Dao-AILab's
  gram-newton-schulz restarts after iteration 2 by default).
  """
  eye = jnp.eye(x.shape[-2], dtype=x.dtype)
  gram, q = x @ _hermitian(x), None
  for i, (a, b, c) in enumerate(schedule):
    if i == restart_at:
      x = q @ x
      gram, q = x @ _hermitian(x), None
    z = a * eye + b * gram + c * gram @ gram
    q = z if q is None else z @ q
    if i + 1 < len(schedule) and i + 1 != restart_at:
      gram = z @ gram @ z
  return q @ x


def _named_coefficients(coefficients: Coefficients) -> tuple:
  if isinstance(coefficients, str):
    if coefficients not in _COEFFICIENT_SETS:
      raise ValueError(
          f"coefficients must be one of {sorted(_COEFFICIENT_SETS)} or a"
          f" sequence of (a, b, c), got {coefficients!r}"
      )
    return _COEFFICIENT_SETS[coefficients]
  return tuple(coefficients)


@jax.custom_jvp
def _matrix_norms(y: jax.Array) -> jax.Array:
  """Each matrix's Frobenius norm (``jnp.linalg.norm``, the same program),
  with a derivative of 0 at a zero matrix instead of √'s 0·∞ = NaN.

  (Written into the forward program, even as √(Σ|y|² + tiny), the guard
  cost Muon's step 5% and NorMuon's 7-9%, measured: only the JVP has it.)
  """
  return jnp.linalg.norm(y, axis=(-2, -1), keepdims=True)


@_matrix_norms.defjvp
def _matrix_norms_jvp(primals: tuple, tangents: tuple) -> tuple:
  (y,), (t,) = primals, tangents
  norm = _matrix_norms(y)
  nonzero = norm != 0  # NaN too: a NaN stays NaN
  along = jnp.sum(jnp.real(jnp.conj(y) * t), axis=(-2, -1), keepdims=True)
  return norm, jnp.where(nonzero, along / jnp.where(nonzero, norm, 1), 0)


PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")


def _preconditioned(y: jax.Array, preconditioning: str, eps: Any) -> jax.Array:
  """``y`` (rows ≤ cols) scaled to spectral norm ≤ 1 by a bound other than
  the Frobenius norm: σ_max itself (``"spectral"``, an SVD per matrix), the
  Schatten-4 norm ‖YYᴴ‖_F^{1/2} (``"schatten"``) or, per row i,
  (Σ_j |YYᴴ|_ij)^{-1/2} (``"aol"``, Prach & Lampert 2022's almost-orthogonal
  rescaling: a diagonal D, so the iteration tends to msign(DY), not
  msign(Y)); a bound below ε is taken as ε (for schatten and aol a bound on
  σ², as optax's fixed 1e-8), a zero matrix stays zero, with a zero
  derivative (``_matrix_norms``)."""
  if preconditioning == "spectral":
    sigma = unbatched_on_cpu(lambda a: jnp.linalg.svd(a, compute_uv=False), y)
    scale = jnp.max(sigma, axis=-1)[..., None, None] + eps
    return y / jnp.where(scale > 0, scale, 1)
  gram = y @ _hermitian(y)
  if preconditioning == "schatten":
    bound = _matrix_norms(gram)  # √ with a finite derivative at a zero matrix
  else:
    bound = jnp.sum(jnp.abs(gram), axis=-1, keepdims=True)
  bound = jnp.maximum(bound, eps)
  return y * jnp.where(bound > 0, jax.lax.rsqrt(jnp.where(bound > 0, bound, 1)), 0)


def _is_static(ns_steps: Any) -> bool:
  """A Python or NumPy integer; arrays (inject_hyperparams) are traced."""
  return isinstance(ns_steps, (int, np.integer))


def newton_schulz(
    x: jax.Array,
    ns_steps: int = 5,
    coefficients: Coefficients = "jordan",
    *,
    eps: float = 1e-7,
    compute_dtype: Optional[Any] = None,
    method: str = "standard",
    preconditioning: str = "frobenius",
) -> jax.Array:
  r"""Approximates msign(x) = UVᴴ over the last two axes of ``x``.

  :math:`X_0 = x / (s\|x\|_F + ε)`, transposed so rows ≤ cols, then
  :math:`X \leftarrow aX + (bA + cA^2)X` with :math:`A = XX^H` for each
  (a, b, c) of the schedule; s = 1.01 for ``"polar_express"`` (the paper's
  Algorithm 1) and 1 otherwise. Complex input uses the conjugate transpose.
  Zero input gives zero output; an input with :math:`\|x\|_F \lesssim ε` is
  scaled down rather than orthogonalized, which keeps the map continuous at
  0. ``ns_steps`` may be traced (``optax.inject_hyperparams``) with
  ``method="standard"``. ``preconditioning`` other than ``"frobenius"``
  replaces :math:`\|x\|_F` by a tighter bound on σ_max (``_preconditioned``;
  ``optax.contrib.muon``'s options), divided by the same s.
  """
  if method not in ("standard", "gram"):
    raise ValueError(f"method must be 'standard' or 'gram', got {method!r}")
  if preconditioning not in PRECONDITIONINGS:
    raise ValueError(f"preconditioning must be one of {PRECONDITIONINGS}, got {preconditioning!r}")
  if jnp.ndim(x) < 2:
    raise ValueError(f"newton_schulz takes (..., m, n) matrices, got shape {jnp.shape(x)}")
  if _sharding.explicit_sharding(x, (-2, -1)) is not None:
    # On an Explicit mesh a product over a sharded axis is refused; gather the
    # (matrix) axes, iterate, and give the result the input's sharding back.
    y = newton_schulz(_sharding.gather(x, (-2, -1)), ns_steps, coefficients,
                      eps=eps, compute_dtype=compute_dtype, method=method,
                      preconditioning=preconditioning)
    return _sharding.reshard_like(y, x)
  static = _is_static(ns_steps)
  if not isinstance(ns_steps, jax.Array):  # an injected array is traced
    _validate.check_integer("ns_steps", ns_steps)
  _validate.check_non_negative("eps", eps)
  if not static and method == "gram":
    raise ValueError(
        "ns_steps must be a Python integer with method='gram' (with"
        " optax.inject_hyperparams, list ns_steps in static_args)")
  safety = _NORM_SAFETY.get(coefficients, 1.0) if isinstance(coefficients, str) else 1.0
  wide = x.shape[-2] <= x.shape[-1]
  y = x if wide else _hermitian(x)
  y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
  if preconditioning == "frobenius":
    norm = _matrix_norms(y)
    scale = safety * norm + eps
    y = (y / jnp.where(scale > 0, scale, 1)).astype(compute_dtype or y.dtype)  # eps = 0, y = 0
  else:
    y = (_preconditioned(y, preconditioning, eps) / safety).astype(compute_dtype or y.dtype)
  if not static:
    y = _traced_iterations(y, coefficients, ns_steps)
  elif method == "gram" and y.shape[-2] != y.shape[-1]:
    y = _gram_iterations(y, coefficient_schedule(coefficients, int(ns_steps)))
  else:
    y = _standard_iterations(y, coefficient_schedule(coefficients, int(ns_steps)))
  y = y if wide else _hermitian(y)
  return y.astype(x.dtype)


def map_matrices(
    fn, updates: Any, matrix_view: Optional[MatrixViewRule], *, stack: bool = True,
    shared: Any = None,
) -> Any:
  """``fn`` of every matrix of every leaf's view; leaves without one pass through.

  ``fn`` maps a (num_matrices, rows, cols) stack, or one (rows, cols) matrix,
  to the same shape. With ``stack`` (the default) all matrices of one shape
  and dtype form one stack and ``fn`` is traced once per shape, so the
  program does not grow with the number of same-shape leaves; on a mesh
  (``block_stacks``) each stack is split over the devices and every matrix is
  computed whole, once, on its owner, with no collective inside ``fn``.
  Without ``stack``, off a mesh, each leaf is its own call. ``shared``: arrays
  (traced hyperparameters) given to ``fn`` as its second argument,
  ``fn(matrices, shared)``, rather than closed over (which a mesh's
  per-device program refuses on Explicit axes).
  """
  apply = (lambda m, _: fn(m)) if shared is None else fn
  leaves, treedef = jax.tree.flatten(updates)
  layouts = [block_stacks.block_layout(view, x.shape)
             for view, x in zip(_matrix_view.views_of(updates, matrix_view), leaves)]
  if not stack and block_stacks.owner_mesh(leaves) is None:
    out = [x if layout is None else block_stacks.from_blocks(
        block_stacks.map_stack(lambda m: apply(m, shared), block_stacks.to_blocks(x, layout)),
        layout, x.shape).astype(x.dtype) for x, layout in zip(leaves, layouts)]
    return treedef.unflatten(out)
  # An expert stack already split over its axis stays where it is.
  plan = block_stacks.OwnerPlan.build(leaves, layouts, keep_split=True)
  # The owners get ``shared`` as a last argument, where it is given.
  results = plan.map(
      lambda _, s, *h: block_stacks.map_stack(lambda m: apply(m, *(h or (None,))), s),
      plan.stack(), shared=shared)
  out = plan.unstack(results, alike=True)
  return treedef.unflatten([x if o is None else o for x, o in zip(leaves, out)])


@_validate.checks_arguments
def orthogonalize_newton_schulz(
    ns_steps: int = 5,
    coefficients: Coefficients = "jordan",
    *,
    eps: float = 1e-7,
    compute_dtype: Optional[Any] = None,
    method: str = "standard",
    preconditioning: str = "frobenius",
    adaptive: bool = False,
    batch_same_shape: bool = True,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Replaces every matrix leaf by its Newton–Schulz msign approximation.

  .. math::
    X_0 = \frac{U}{s\|U\|_F + ε},\qquad
    X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2) X_k,\ A_k = X_k X_k^H,\qquad
    u = X_{\text{ns\_steps}} \approx \operatorname{msign}(U) = UV^H

  per matrix of each leaf's matrix view (``matrix_view``; by default
  ``gt.flax_matrix_view``: a dense kernel is one matrix, a convolution kernel
  (kh·kw·in, out), a MultiHeadAttention query kernel (in, heads·head_dim);
  biases, norm scales and 1-D leaves pass through), computed with rows ≤ cols
  (the matrix is transposed and back otherwise). The singular vectors are
  those of U; each singular value σ is mapped by the composed scalar
  polynomial. Measured bands of the output singular values after 5 steps
  (tests/transforms/test_orthogonalize.py), for inputs with σ/‖U‖_F in
  [0.01, 1]: ``"jordan"`` [0.68, 1.135], ``"polar_express"`` [0.870, 1.124],
  ``"cubic"`` [0.076, 1.0]; for σ/‖U‖_F in [0.001, 1]: jordan [0.47, 1.20],
  polar_express [0.84, 1.124]. Smaller singular values are only partly
  lifted; exactly zero ones stay zero.

  The API contract (``API.md``) reads a leaf's leading axes as a batch of
  matrices; the default view does so only where names say they are (axis
  names ``layers``/``expert``..., a leaf named ``expert``, a scanned
  attention's kernels): an unnamed 3-D leaf is read as a convolution kernel,
  one matrix, with an ``AmbiguousMatrixViewWarning`` naming the choice, and a
  2-D leaf named ``bias`` or ``scale`` passes through. Flax's layouts make
  either reading the right one for some leaf (a (k, in, out) convolution, a
  stack of layers), so the names decide; ``matrix_view=gt.stacked_matrix_view()``
  gives the contract's reading for every 3-D leaf (its first axis a batch;
  ``num_axes=2``: a 4-D leaf's first two).

  Args:
    ns_steps: number of iterations, >= 1; may be traced (inject_hyperparams)
      with ``method="standard"``, but then has no reverse-mode derivative
      (a loop of traced length): give it in ``static_args`` to differentiate
      through the step.
    coefficients: ``"jordan"`` (3.4445, −4.7750, 2.0315) every step, the
      reference Muon's; ``"polar_express"``: the per-iteration minimax
      coefficients of Amsel et al. 2025 (Algorithm 1, safety factor 1.01,
      input divided by 1.01‖U‖_F); ``"cubic"``: (1.5, −0.5, 0), the classical
      iteration; or a sequence of (a, b, c) triples (the last one repeats).
    eps: added to the Frobenius norm in the normalisation, >= 0.
    compute_dtype: dtype of the iterations (e.g. ``jnp.bfloat16``);
      default: at least float32. The result is cast back to the update's
      dtype.
    method: ``"standard"`` or ``"gram"``: iterate on the m×m Gram matrix
      XXᴴ and apply the accumulated polynomial to X only at a restart
      (after iteration 2) and at the end. About 8m²n + 28m³ FLOPs against
      20m²n + 10m³ (m ≤ n): a win when n ≳ 2m; square matrices use
      ``"standard"``. Same result up to round-off.
    preconditioning: how :math:`X_0` is scaled to spectral norm ≤ 1:
      ``"frobenius"`` (above), ``"spectral"`` (by σ_max, an SVD per matrix:
      exact but costly), ``"schatten"`` (by the Schatten-4 norm
      :math:`\|UU^H\|_F^{1/2}`, one more product) or ``"aol"`` (each row i
      by :math:`(\sum_j |UU^H|_{ij})^{-1/2}`, Prach & Lampert's
      almost-orthogonal rescaling, as Turbo-Muon: a diagonal D, so the
      result tends to msign(DU), 1-8% from msign(U), still semi-orthogonal):
      the tighter bounds leave the small singular values larger, so fewer
      iterations lift them (``optax.contrib.muon``'s ``preconditioning``,
      whose Schatten form takes :math:`UU^T` without the conjugate, wrong
      for complex U). For schatten and aol, ε floors a bound on σ² (optax
      fixes it at 1e-8).
    adaptive: scale each matrix's result O by :math:`\langle U, O\rangle =
      \operatorname{Re}\operatorname{tr}(U^H O)`, ≈ the nuclear norm of U,
      the dual of the spectral norm O steepens in (Bernstein & Newhouse,
      "Old Optimizer, New Norm", arXiv 2409.20325; ``optax.contrib.muon``'s
      ``adaptive``): the step then shrinks with the update's size.
    batch_same_shape: stack the matrices that share a shape and dtype (the
      default): the iteration is traced once per shape, so compile time does
      not grow with the number of same-shape matrices, and runs as one
      batched call (small matrices) or, on CPU, one 2-D call per matrix in a
      loop (large ones, where XLA:CPU threads a 2-D product but not a batched
      one). ``False``: one call per leaf (off a mesh). On a device mesh they
      are always stacked, and each stack is split over the devices (owner
      compute: every matrix is orthogonalized whole, once, on one device).
    matrix_view: the matrix-view rule (see ``gt.flax_matrix_view``).

  Returns:
    A stateless ``optax.GradientTransformation``.

  Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural
  networks", 2024; Amsel et al., "The Polar Express", arXiv 2505.16932.
  """
  if not isinstance(ns_steps, jax.Array):
    ns_steps = _validate.check_integer("ns_steps", ns_steps)
  _validate.check_non_negative("eps", eps)
  _validate.check_floating_dtype("compute_dtype", compute_dtype)
  coefficient_schedule(coefficients, 1)  # validates
  newton_schulz(jnp.zeros((1, 1)), 1, coefficients, method=method,
                preconditioning=preconditioning)  # validates

  # Traced hyperparameters (inject_hyperparams) reach the matrices as arguments.
  traced = {k: v for k, v in (("ns_steps", ns_steps), ("eps", eps)) if isinstance(v, jax.Array)}

  def orthogonalize(matrices, hyper):
    hyper = {"ns_steps": ns_steps, "eps": eps, **(hyper or {})}
    out = newton_schulz(
        matrices, hyper["ns_steps"], coefficients, eps=hyper["eps"],
        compute_dtype=compute_dtype, method=method, preconditioning=preconditioning,
    )
    if adaptive:
      wide = jnp.promote_types(out.dtype, jnp.float32)
      dual_norm = jnp.real(jnp.sum(jnp.conj(matrices.astype(wide)) * out.astype(wide),
                                   axis=(-2, -1), keepdims=True))
      out = (dual_norm * out).astype(out.dtype)
    return out

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "orthogonalize_newton_schulz")
    return map_matrices(orthogonalize, updates, matrix_view, stack=batch_same_shape,
                        shared=traced), state

  return keeps_init_names(optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn))


def clip_singular_values(
    min_value: float = 0.0,
    max_value: float = 1.0,
    *,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Clips the singular values of every matrix leaf: :math:`U\,\mathrm{clip}(Σ)\,V^T`.

  Exact, through ``jnp.linalg.svd`` in at least float32 (QK-clip's idea,
  spectral clipping, applied to an update), per matrix of each leaf's matrix
  view (leaves without one pass through). Cost: one SVD per matrix,
  O(mn·min(m, n)) FLOPs, far slower on accelerators than a Newton–Schulz
  step. ``min_value = max_value = 1`` is
  the exact msign (for full-rank inputs). A matrix with a NaN or ±inf entry
  comes out all NaN (the SVD is not run on it: LAPACK's never returns for
  ±inf on CPU).

  Args:
    min_value: lower bound of the singular values, >= 0.
    max_value: upper bound, >= ``min_value``.
    matrix_view: the matrix-view rule (see ``gt.flax_matrix_view``).

  Returns:
    A stateless ``optax.GradientTransformation``.

  Reference: the project's seed documents (``../shared/seeds``), whose
  "QK-clip" form this is (API.md); Kimi K2's QK-Clip (Kimi Team, arXiv
  2507.20534) rescales the query and key weights instead (``go.qk_clip``).
  """
  _validate.check_non_negative("min_value", min_value)
  _validate.check_non_negative("max_value", max_value, infinite=True)
  _validate.check_ordered("min_value", min_value, "max_value", max_value)

  traced = {k: v for k, v in (("min_value", min_value), ("max_value", max_value))
            if isinstance(v, jax.Array)}  # as arguments on a mesh (inject_hyperparams)

  def clip(matrices, bounds):
    bounds = {"min_value": min_value, "max_value": max_value, **(bounds or {})}
    x = matrices.astype(jnp.promote_types(matrices.dtype, jnp.float32))
    # LAPACK's SVD of a matrix holding ±inf never returns on CPU (jax 0.10):
    # such a matrix is decomposed as zeros and comes out NaN.
    finite = jnp.all(jnp.isfinite(x), axis=(-2, -1), keepdims=True)
    left, sigma, right_h = unbatched_on_cpu(
        lambda a: jnp.linalg.svd(a, full_matrices=False), jnp.where(finite, x, 0))
    sigma = jnp.clip(sigma, bounds["min_value"], bounds["max_value"]).astype(x.dtype)
    clipped = (left * sigma[..., None, :]) @ right_h
    return jnp.where(finite, clipped, jnp.nan).astype(matrices.dtype)

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "clip_singular_values")
    return map_matrices(clip, updates, matrix_view, shared=traced), state

  return keeps_init_names(optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn))
