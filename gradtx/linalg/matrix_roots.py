"""Matrix inverse p-th roots for Kronecker preconditioners, and their kernels.

``inverse_pth_root`` computes (A + εI)^{-1/p} of a stack of symmetric PSD
matrices by a float32 symmetric eigendecomposition (default) or a matmul-only
coupled Newton iteration; ``matmul``, ``transpose``, ``unbatched_on_cpu`` and
``one_matrix_per_call_on_cpu`` are the kernels the matrix transforms share.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from gradtx._internal import block_stacks
from gradtx._internal import validate as _validate

ROOT_METHODS = ("eigh", "newton")
_HIGHEST = jax.lax.Precision.HIGHEST
_NEWTON_MAX_ITERS = 100
_EIGH_RESOLUTION = 4  # in ulps of the largest eigenvalue


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """A full-precision matmul (no TF32/bf16 passes on accelerators)."""
  return jnp.matmul(a, b, precision=_HIGHEST)


def transpose(a: jax.Array) -> jax.Array:
  """The conjugate transpose of the last two axes (the transpose for reals)."""
  return jnp.conj(jnp.swapaxes(a, -1, -2))


def unbatched_on_cpu(fn: Callable, a: jax.Array) -> Any:
  """``fn`` of a stack of matrices ``a``, one matrix per call on CPU.

  For LAPACK-backed ``fn`` (``jnp.linalg.eigh``, ``qr``): jaxlib 0.10's
  batched CPU kernels hand their batch to the intra-op thread pool and block
  until it is done; when as many batched calls as the pool has threads run at
  once (independent leaves do, and so do the devices of one process), every
  thread waits and the step deadlocks (seen with 2 threads; fixed in jaxlib
  0.11.2). An unbatched call runs inline, so on CPU the stack is walked with
  ``lax.map``; other platforms keep the batched call. A ``jax.vmap`` around
  it (the user's, over a batch of problems) stays one matrix per call
  (``one_matrix_per_call_on_cpu``).
  """
  batch, matrix = a.shape[:-2], a.shape[-2:]
  out = block_stacks.map_stack(
      one_matrix_per_call_on_cpu(fn), a.reshape(-1, *matrix), per_matrix_from=0)
  return jax.tree.map(lambda x: x.reshape(*batch, *x.shape[1:]), out)


def one_matrix_per_call_on_cpu(fn: Callable) -> Callable:
  """``fn`` (a LAPACK-backed function of matrices), whose ``jax.vmap`` is a
  ``lax.map`` of unbatched calls on CPU and ``fn``'s batched call elsewhere.

  Unvmapped it is ``fn``'s own call, so for a step that vmaps ``fn`` itself
  (PSGD Kron's triangular solve over a stack's entries, CholeskyQR's over a
  batch) as for a user's ``jax.vmap`` around a step that walks its stacks
  (``unbatched_on_cpu``): no batched LAPACK call reaches XLA:CPU, whose
  batched kernels deadlock (``unbatched_on_cpu``). Its derivative is
  ``fn``'s (``custom_vmap`` has no reverse mode), so a differentiated step
  (a meta-gradient) may still hold batched calls (9 of 72 in the gradient
  of a Dion step with CholeskyQR; none hung in a review's runs).
  """

  @jax.custom_batching.custom_vmap
  def walked(*xs):
    return fn(*xs)

  @walked.def_vmap
  def rule(axis_size, in_batched, *xs):
    xs = [x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
          for x, batched in zip(xs, in_batched)]
    loop = lambda *xs: jax.lax.map(lambda entry: walked(*entry), xs)
    out = jax.lax.platform_dependent(*xs, cpu=loop, default=jax.vmap(fn))
    return out, jax.tree.map(lambda _: True, out)

  @jax.custom_jvp
  def one(*xs):
    return walked(*xs)

  one.defjvp(lambda primals, tangents: jax.jvp(fn, primals, tangents))
  return one


def _eigh_spectrum(a, p, damping, relative_damping):
  """(V, λ, μ, kept, f) of A = V diag(λ) Vᴴ: μ = max(λ, 0) + δ_abs +
  δ_rel·max(λ_max, 0), f = μ^{-1/p} where kept, else 0."""
  lam, v = unbatched_on_cpu(jnp.linalg.eigh, a)
  w = jnp.maximum(lam, 0)
  mu = w + damping + relative_damping * w[..., -1:]
  # eigh's absolute eigenvalue error is a few ulp·λ_max (measured: <= 2.2e-7
  # λ_max in float32 at n = 32..128): below that an eigenvalue is noise and
  # gets 0 (a pseudo-inverse), never a huge or infinite inverse root.
  floor = _EIGH_RESOLUTION * jnp.finfo(mu.dtype).eps * mu[..., -1:]
  kept = mu > floor
  inv_root = jnp.where(kept, jnp.where(kept, mu, 1) ** (-1.0 / p), 0)
  return v, lam, mu, kept, inv_root


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _eigh_inverse_root(a, p, damping, relative_damping):
  """V diag(f) Vᴴ (``_eigh_spectrum``); its derivative is the Daleckii–Krein
  formula, finite where eigenvalues repeat (``eigh``'s own JVP divides by
  their gaps: NaN at A = δI, ~1% off on rank-deficient statistics)."""
  v, _, _, _, inv_root = _eigh_spectrum(a, p, damping, relative_damping)
  return matmul(v * inv_root[..., None, :].astype(v.dtype), transpose(v))


@_eigh_inverse_root.defjvp
def _eigh_inverse_root_jvp(p, primals, tangents):
  r"""dF = V (K ∘ Vᴴ dA V) Vᴴ, K_ij = (f_i − f_j)/(λ_i − λ_j) off the diagonal
  (f′ at the mean where the gap is below √ε·|λ|: the mean-value limit) and
  K_ii·(Vᴴ dA V)_ii replaced by df_i, which also carries the ridge's
  dependence on λ_max and on the damping arguments. The pseudo-inverse
  cut-off is a jump: it is not differentiated.

  Reference: Daleckii and Krein, "Integration and differentiation of
  functions of Hermitian operators", 1965; Higham, "Functions of Matrices",
  2008, Theorem 3.11.
  """
  a, damping, relative_damping = primals
  da, d_damping, d_relative = tangents
  da = (da + transpose(da)) / 2  # eigh reads the Hermitian part of A only
  v, lam, mu, kept, f = _eigh_spectrum(a, p, damping, relative_damping)
  out = matmul(v * f[..., None, :].astype(v.dtype), transpose(v))
  rotated = matmul(matmul(transpose(v), da), v)
  d_lam = jnp.real(jnp.diagonal(rotated, axis1=-2, axis2=-1))
  positive = lam > 0
  # f(μ) = μ^{-1/p}: f′ = −f/(p μ); as a function of λ, 0 where λ is clipped.
  slope = jnp.where(kept, -f / (p * jnp.where(kept, mu, 1)), 0)
  slope_lam = jnp.where(positive, slope, 0)
  d_w = jnp.where(positive, d_lam, 0)
  d_mu = (d_w + d_damping + d_relative * jnp.maximum(lam[..., -1:], 0)
          + relative_damping * d_w[..., -1:])
  gap = lam[..., :, None] - lam[..., None, :]
  scale = jnp.maximum(jnp.abs(lam[..., :, None]), jnp.abs(lam[..., None, :]))
  close = jnp.abs(gap) <= jnp.sqrt(jnp.finfo(lam.dtype).eps) * scale
  divided = jnp.where(close, (slope_lam[..., :, None] + slope_lam[..., None, :]) / 2,
                      (f[..., :, None] - f[..., None, :]) / jnp.where(close, 1, gap))
  n = a.shape[-1]
  inner = jnp.where(jnp.eye(n, dtype=bool), 0, divided.astype(rotated.dtype) * rotated)
  inner = inner + (jnp.eye(n, dtype=rotated.dtype) * (slope * d_mu)[..., None, :].astype(
      rotated.dtype))
  return out, matmul(matmul(v, inner), transpose(v))


def _matrix_power(x, p):
  result, square = None, x
  while p:
    if p & 1:
      result = square if result is None else matmul(result, square)
    p >>= 1
    if p:
      square = matmul(square, square)
  return result


def _newton_inverse_root(a, p, damping, relative_damping):
  """Coupled Newton iteration (Guo & Higham 2006), batched over blocks.

  With M₀ = zA and H₀ = z^{1/p} I, z = (1+p)/(2·bound), the steps
  X = ((1+1/p) I − M/p), M ← X^p M, H ← H X keep M = H^p A and drive M → I,
  so H → A^{-1/p}; ``bound`` = min(‖A‖_F, ‖A‖_∞) ≥ λ_max puts every
  eigenvalue of M₀ in (0, (1+p)/2], from where each |1 − μ| shrinks. A block
  stops once ‖M − I‖_F is within a few ulp·√n (its round-off floor, measured)
  or grows by 20% (that step is undone); at most 100 steps. An eigenvalue μ
  of M₀ far below 1 takes about log(1/μ)/log(1 + 1/p)^p steps to converge,
  which ``‖M − I‖_F`` cannot see, so a plateau does not stop the iteration.
  """
  n = a.shape[-1]
  eye = jnp.eye(n, dtype=a.dtype)
  bound = jnp.minimum(
      jnp.linalg.norm(a, axis=(-2, -1)), jnp.abs(a).sum(-1).max(-1)
  )
  ridge = damping + relative_damping * bound
  bound = bound + ridge
  nonzero = bound != 0  # a NaN bound (non-finite statistics) gives a NaN root
  z = ((1 + p) / (2 * jnp.where(nonzero, bound, 1)))[..., None, None]
  m = (a + ridge[..., None, None] * eye) * z
  h = eye * z ** (1.0 / p)
  error = jnp.linalg.norm(m - eye, axis=(-2, -1))
  tolerance = 4 * math.sqrt(n) * jnp.finfo(bound.dtype).eps

  def cond(carry):
    step, _, _, _, active = carry
    return (step < _NEWTON_MAX_ITERS) & jnp.any(active)

  def body(carry):
    step, m, h, error, active = carry
    x = (1 + 1.0 / p) * eye - m / p
    m_new, h_new = matmul(_matrix_power(x, p), m), matmul(h, x)
    error_new = jnp.linalg.norm(m_new - eye, axis=(-2, -1))
    accept = active & (error_new < 1.2 * error)
    pick = lambda new, old: jnp.where(accept[..., None, None], new, old)
    return (step + 1, pick(m_new, m), pick(h_new, h),
            jnp.where(accept, error_new, error), accept & (error_new > tolerance))

  carry = (jnp.int32(0), m, h, error, error > tolerance)
  h = jax.lax.while_loop(cond, body, carry)[2]
  return jnp.where(nonzero[..., None, None], h, 0)


def inverse_pth_root(
    matrix: jax.Array,
    p: int,
    *,
    root_method: str = "eigh",
    damping: float = 0.0,
    relative_damping: float = 0.0,
) -> jax.Array:
  r"""The damped inverse p-th root :math:`(A + δI)^{-1/p}` of PSD matrices.

  :math:`δ = δ_{abs} + δ_{rel} λ_{max}(A)` (distributed_shampoo's ridge is
  the relative term); complex Hermitian matrices are accepted. ``"eigh"``:
  eigendecomposition in the input's dtype;
  eigenvalues are clipped at 0 before the ridge, and those that end below
  4·ulp·λ_max are given an inverse root of 0 (a pseudo-inverse), so a zero or
  rank-deficient matrix never yields inf or NaN. ``"newton"``: the coupled
  Newton iteration, matrix products only; λ_max is replaced by the bound
  min(‖A‖_F, ‖A‖_∞), and it needs δ > 0 for a rank-deficient A (it cannot
  truncate). A zero matrix gives a zero root for both when δ = 0
  (:math:`δ^{-1/p} I` otherwise). A NaN entry gives a NaN root; an inf one
  gives NaN with ``"newton"`` and, with ``"eigh"``, a zero root (every
  eigenvalue falls under 4·ulp·inf).

  Args:
    matrix: (..., n, n) symmetric (Hermitian) PSD matrices; leading axes are
      a batch.
    p: the root, an integer >= 1.
    root_method: ``"eigh"`` or ``"newton"``.
    damping: absolute ridge δ_abs, >= 0.
    relative_damping: ridge δ_rel relative to the largest eigenvalue, >= 0.

  Returns:
    The roots, shaped and typed like ``matrix``.
  """
  if root_method not in ROOT_METHODS:
    raise ValueError(
        f"root_method must be one of {ROOT_METHODS}, got {root_method!r}"
    )
  shape = jnp.shape(matrix)
  if len(shape) < 2 or shape[-1] != shape[-2]:
    raise ValueError(f"inverse_pth_root takes (..., n, n) matrices, got shape {shape}")
  _validate.check_in_range("p", p, 0.0, math.inf, low_inclusive=False)
  _validate.check_non_negative("damping", damping)
  _validate.check_non_negative("relative_damping", relative_damping)
  if root_method == "eigh":
    # Integer ridges as floats: the root's custom JVP differentiates them
    # (an integer's tangent is float0, which no arithmetic takes).
    as_float = lambda d: d if jnp.issubdtype(jnp.result_type(d), jnp.inexact) else (
        jnp.asarray(d, jnp.finfo(jnp.result_type(matrix)).dtype))
    return _eigh_inverse_root(matrix, p, as_float(damping), as_float(relative_damping))
  return _newton_inverse_root(matrix, p, damping, relative_damping)
