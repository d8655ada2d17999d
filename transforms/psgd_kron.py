"""PSGD Kron: a Kronecker-factored whitening preconditioner fitted online.

Each leaf of shape (d_1, ..., d_k) keeps one factor Q_i per axis: an upper
triangular d_i × d_i matrix, or a diagonal (a vector) for axes of size 1,
axes longer than ``max_size_triangular``, leaves with fewer than
``min_ndim_triangular`` axes and the axes ``memory_save_mode`` picks. The
preconditioner is P = Qᵀ Q with Q = Q_1 ⊗ ... ⊗ Q_k; Q is fitted online, one
relative-gradient step at a time on Li's whitening criterion, from a gradient
and a random probe V (psgd-jax's ``kron``).

Axes that index separate arrays (a view's ``batch``: scanned layers,
stacked experts; by default read from Flax axis names, see
``scale_by_psgd_kron``'s ``matrix_view``) are not preconditioned: each index
along them has its own factors and probe, fitted and applied on its own; the
probe's damping and the RMS cap are taken over the whole leaf (psgd-jax's
``scanned_layers``, generalised from the leading axis to any batch axes).

On a device mesh the leaves of two axes are stepped in stacks of equal
shapes, each leaf whole on one owner device (``block_stacks``, as Shampoo),
and every factor is stored split over the devices
(``block_stacks.state_spec``); the numbers are those of the per-leaf step.
"""

import functools
import zlib
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import block_stacks, threefry
from gradtx._internal import names as _names
from gradtx._internal import routing as _routing
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.linalg.matrix_roots import one_matrix_per_call_on_cpu
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixView, MatrixViewRule
from gradtx.storage import state_format

# On a mesh a 2-D leaf is stepped whole, as one block of the owner plan.
WHOLE_MATRIX = MatrixView(rows=(0,), cols=(1,))

MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")
# psgd-jax balances the factors' magnitudes at about 1 in 100 updates.
BALANCE_PROBABILITY = 0.01
# The probe's weight relative to mean |g| in the fitted input (psgd-jax's damping).
PROBE_WEIGHT = float(np.sqrt(np.finfo(np.float32).eps))


def precond_update_prob_schedule(
    max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001,
    flat_start: float = 500,
) -> Callable[[jax.Array], jax.Array]:
  """psgd-jax's schedule of the preconditioner update probability.

  ``p(t) = clip(max_prob · exp(−decay · (t − flat_start)), min_prob, max_prob)``:
  every step for the first ``flat_start`` steps, then an exponential anneal
  to ``min_prob``.

  Reference: github.com/evanatyourservice/psgd_jax, ``kron.py``
  (``precond_update_prob_schedule``); Li, "Preconditioned Stochastic
  Gradient Descent", IEEE TNNLS 2018.
  """
  _validate.check_in_range("max_prob", max_prob, 0.0, 1.0, low_inclusive=False,
                           high_inclusive=True)
  _validate.check_in_range("min_prob", min_prob, 0.0, 1.0, low_inclusive=False,
                           high_inclusive=True)
  _validate.check_ordered("min_prob", min_prob, "max_prob", max_prob)
  _validate.check_non_negative("decay", decay)
  _validate.check_non_negative("flat_start", flat_start, infinite=True)  # inf: never anneal

  def schedule(count):
    return jnp.minimum(
        jnp.maximum(max_prob * jnp.exp(-decay * (count - flat_start)), min_prob), max_prob)

  return schedule


def triangular_axes(
    shape: Sequence[int], max_size_triangular: int, min_ndim_triangular: int,
    memory_save_mode: Optional[str],
) -> tuple[bool, ...]:
  """Per axis of a leaf (a scalar counts as shape (1,)): a triangular factor?"""
  shape = tuple(shape) or (1,)
  diagonal = [memory_save_mode == "all_diag"] * len(shape)
  if memory_save_mode == "one_diag":
    diagonal[np.argsort(shape)[::-1][0]] = True
  return tuple(
      not (size == 1 or size > max_size_triangular or len(shape) < min_ndim_triangular or d)
      for size, d in zip(shape, diagonal))


def _along(x: jax.Array, axis: int, factor: jax.Array, transpose: bool = False) -> jax.Array:
  """Factor applied along ``axis`` of ``x``: Σ_n Q[a, n] x[..., n, ...] (or Qᵀ)."""
  if factor.ndim == 1:
    return x * factor.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
  q = factor.T if transpose else factor
  return jnp.moveaxis(jnp.tensordot(q, x, axes=(1, axis)), 0, axis)


# Q⁻ᵀ Y for an upper triangular Q. The step is vmapped over a stack's entries
# and a group's leaves: on CPU each vmapped solve is a loop of one-matrix
# LAPACK calls (``one_matrix_per_call_on_cpu``; batched, it hung a process
# of two devices), elsewhere one batched solve.
_solve_transposed = one_matrix_per_call_on_cpu(functools.partial(
    jax.lax.linalg.triangular_solve, left_side=True, lower=False, transpose_a=True))


def _solve_along(x: jax.Array, axis: int, factor: jax.Array) -> jax.Array:
  """Q⁻ᵀ applied along ``axis`` of ``x`` (a triangular solve, or a division)."""
  if factor.ndim == 1:
    return x / factor.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
  y = jnp.moveaxis(x, axis, 0)
  solved = _solve_transposed(factor, y.reshape(y.shape[0], -1))
  return jnp.moveaxis(solved.reshape(y.shape), 0, axis)


def _gram_along(x: jax.Array, axis: int, diagonal: bool) -> jax.Array:
  """Σ over every other axis of x xᵀ along ``axis``: (d, d), or its diagonal."""
  others = [a for a in range(x.ndim) if a != axis]
  if diagonal:
    return jnp.sum(x * x, axis=others)
  return jnp.tensordot(x, x, axes=(others, others))


def norm_lower_bound(a: jax.Array) -> jax.Array:
  """psgd-jax's cheap lower bound of the spectral norm of a symmetric matrix.

  max|a| times ‖aᵀ x / ‖x‖‖ for x = a r, r the largest row of a / max|a|;
  within √2 of the norm on random matrices, and 0 for a zero matrix.

  psgd-jax's ``_norm_lower_bound`` takes any matrix and starts from its
  largest column or its largest row, whichever is larger. It is only ever
  given A_iA_iᵀ + B_iB_iᵀ, which is symmetric: its columns are its rows, so
  both starts are the same vector and both branches the same number, and
  this keeps the row branch (the one psgd-jax takes when the two tie). The
  value is psgd-jax's up to rounding, without its two conds and its second
  branch: ~0.35 s less of PSGD Kron's compile at 192 matrices
  (``benchmarks/RESULTS.md``, "Stop 43").
  """
  max_abs = _tree.max_abs(a)
  a = a / jnp.where(max_abs > 0, max_abs, 1)
  x = a @ a[jnp.argmax(jnp.sum(a * a, axis=1))]
  # ‖x‖ >= 1 unless a is zero (x's entry at the largest row is that row's
  # squared norm), so the guard only keeps a zero matrix's 0/0 out.
  x_norm = jnp.linalg.norm(x)
  return max_abs * jnp.linalg.norm(a.T @ (x / jnp.where(x_norm > 0, x_norm, 1)))


def balance(factors: Sequence[jax.Array]) -> list:
  """The factors rescaled to equal max |entry| (their geometric mean); P unchanged."""
  if len(factors) < 2:
    return list(factors)
  norms = jnp.stack([_tree.max_abs(q) for q in factors])
  gmean = jnp.prod(norms) ** (1 / len(factors))
  return [q * (gmean / n) for q, n in zip(factors, norms)]


def fit_factors(
    factors: Sequence[jax.Array], g: jax.Array, probe: jax.Array, precond_lr: Any,
) -> list:
  """One relative-gradient step of every factor on the pair (Q G, Q⁻ᵀ V).

  With A = Q G and B = Q⁻ᵀ V, factor i moves by
  Q_i ← Q_i − η triu(A_iA_iᵀ − B_iB_iᵀ) Q_i / ‖A_iA_iᵀ + B_iB_iᵀ‖ (diagonal
  factors: element-wise, normed by the largest entry), where A_iA_iᵀ sums
  over every axis but i.
  """
  a, b = g, probe
  for axis, q in enumerate(factors):
    a, b = _along(a, axis, q), _solve_along(b, axis, q)
  tiny = jnp.finfo(g.dtype).tiny
  out = []
  for axis, q in enumerate(factors):
    diagonal = q.ndim == 1
    term1, term2 = _gram_along(a, axis, diagonal), _gram_along(b, axis, diagonal)
    step = precond_lr * (term1 - term2)
    if diagonal:
      out.append(q - step * q / (tiny + _tree.max_abs(term1 + term2)))
    else:
      out.append(q - jnp.triu(step) / (tiny + norm_lower_bound(term1 + term2)) @ q)
  return out


def precondition(factors: Sequence[jax.Array], g: jax.Array) -> jax.Array:
  """P G = Qᵀ Q G, factor by factor along each axis."""
  for axis, q in enumerate(factors):
    g = _along(g, axis, q)
  for axis, q in enumerate(factors):
    g = _along(g, axis, q, transpose=True)
  return g


def to_entries(x: jax.Array, batch: Sequence[int]) -> jax.Array:
  """``x`` with its ``batch`` axes moved to the front and merged into one."""
  rest = [d for a, d in enumerate(x.shape) if a not in batch]
  return jnp.moveaxis(x, tuple(batch), tuple(range(len(batch)))).reshape(-1, *rest)


def from_entries(x: jax.Array, shape: tuple, batch: Sequence[int]) -> jax.Array:
  """Inverse of ``to_entries`` for a leaf of ``shape``."""
  front = [shape[a] for a in batch] + [d for a, d in enumerate(shape) if a not in batch]
  return jnp.moveaxis(x.reshape(front), tuple(range(len(batch))), tuple(batch))


def entry_shape(shape: tuple, batch: Sequence[int]) -> tuple:
  """(number of entries, the shape of one) of a leaf of ``shape``."""
  return (int(np.prod([shape[a] for a in batch], dtype=np.int64)),
          tuple(d for a, d in enumerate(shape) if a not in batch))


# psgd-jax caps the preconditioned update's RMS at 1.1.
RMS_LIMIT = 1.1


def step_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(whether to balance the factors, the probes' key) of the step that
  starts from the state's ``key``."""
  balance_key, probe_key = jax.random.split(jax.random.split(key)[1])
  return jax.random.uniform(balance_key) < BALANCE_PROBABILITY, probe_key


def probe_folds(updates: Any) -> list:
  """Per leaf of ``updates`` (in leaf order), the number its probe's key is
  folded from: a hash of its path, so adding a leaf changes no other leaf's
  probe. The step derives every leaf's key, ``fold_in(probe_key, fold)``, in
  one hash of all the folds (one kernel), and each stack gathers its rows."""
  flat = jax.tree_util.tree_flatten_with_path(_tree.unwrap_metadata(updates))[0]
  return [zlib.crc32("/".join(_names.path_names(path)).encode()) % 2**31 for path, _ in flat]


def momentum_step(m: jax.Array, g: jax.Array, decay: jax.Array) -> jax.Array:
  """m_t = β₁ m_{t-1} + (1 − β₁) g_t, the one form the leaf-wise and the
  owners' steps share (with β₁ = 1 the owners' step passes m_t through)."""
  return decay * m + (1 - decay) * g


def leaf_probe_keys(probe_key: jax.Array, updates: Any) -> jax.Array:
  """Every leaf's probe key, ``fold_in(probe_key, fold)``, row i for leaf i
  (``probe_folds``): one hash of all the folds, one kernel."""
  return threefry.fold_in(probe_key, np.asarray(probe_folds(updates), np.uint32))


def probe_keys(key: jax.Array, updates: Any) -> tuple[jax.Array, list]:
  """(whether to balance the factors, one probe key per leaf of ``updates``,
  in leaf order) of the step that starts from the state's ``key``."""
  do_balance, probe_key = step_keys(key)
  return do_balance, list(leaf_probe_keys(probe_key, updates))


def probe(key: jax.Array, x: Any) -> jax.Array:
  """A leaf's standard normal probe, shaped like ``x``, in its compute dtype:
  ``jax.random.normal``'s numbers, its threefry unrolled (``threefry``)."""
  return threefry.normal(key, jnp.shape(x), _tree.compute_dtype(x))


def probe_when(fit: jax.Array, key: jax.Array, x: Any) -> jax.Array:
  """``probe(key, x)`` when ``fit``, else zeros: drawn in a branch of its own.

  Drawn inline, XLA fuses the draw (twenty threefry rounds and an
  ``erf_inv``) into every kernel that reads the probe (the fitted input
  h + εV, the solve's operand, ...): a 2-D leaf's was compiled and run three
  times. A branch's result is one buffer, so here it is drawn once; at 192
  matrices that is about 0.6 s of PSGD Kron's 6.8 s compile
  (``benchmarks/RESULTS.md``, "Stop 43"). The step calls it inside its own
  ``fit`` branch, where the zeros are never made.
  """
  return jax.lax.cond(fit, lambda: probe(key, x),
                      lambda: jnp.zeros_like(x, _tree.compute_dtype(x)))


def entry_probes(key: jax.Array, x: Any, batch: Sequence[int]) -> jax.Array:
  """A leaf's probe from its ``key``: entry j of a leaf with ``batch`` axes
  (``to_entries``) drawn from ``fold_in(key, j)``, in the leaf's layout."""
  if not batch:
    return probe(key, x)
  count, shape = entry_shape(jnp.shape(x), batch)
  dtype = _tree.compute_dtype(x)
  entries = jax.vmap(lambda j: probe(threefry.fold_in(key, j),
                                     jax.ShapeDtypeStruct(shape, dtype)))(
      jnp.arange(count, dtype=jnp.uint32))
  return from_entries(entries, jnp.shape(x), batch)


def draws(key: jax.Array, updates: Any,
          matrix_view: Optional[MatrixViewRule] = None) -> tuple[jax.Array, list]:
  """The random numbers of the step that starts from the state's ``key``:
  (whether to balance, one probe per leaf of ``updates``, in leaf order;
  ``matrix_view`` as the transform's). A test feeds the same draws to a
  reference."""
  do_balance, keys = probe_keys(key, updates)
  plain = _tree.unwrap_metadata(updates)
  batches = _matrix_view.batch_axes_of(plain, matrix_view)
  return do_balance, [entry_probes(k, x, b)
                      for k, x, b in zip(keys, jax.tree.leaves(plain), batches)]


class ScaleByPsgdKronState(NamedTuple):
  """State of ``scale_by_psgd_kron``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: the momentum EMA, one leaf per parameter (``None`` with ``b1=0``).
    factors: per leaf, the tuple of its factors Q_i (d_i × d_i upper
      triangular, or length-d_i diagonals; a scalar leaf has one of length 1),
      over the axes that are not batch axes; a leaf with batch axes has one
      set per entry, stacked along a leading axis.
    update_counter: steps since the preconditioner was last fitted.
    key: the PRNG key (raw uint32) of the next step's probes.
  """

  count: jax.Array
  mu: optax.Updates
  factors: Any
  update_counter: jax.Array
  key: jax.Array


@_validate.checks_arguments
def scale_by_psgd_kron(
    *,
    b1: float = 0.9,
    precond_update_probability: Union[None, float, Callable] = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: Optional[str] = None,
    momentum_into_precond_update: bool = True,
    precond_lr: float = 0.1,
    precond_init_scale: float = 1.0,
    mu_dtype: Optional[Any] = None,
    precond_dtype: Optional[Any] = None,
    seed: int = 0,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""PSGD Kron (Li): the update preconditioned by a fitted Kronecker factor Q.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad \hat m_t = m_t / (1-β_1^t),\quad
    u_t = \frac{Q^T Q \hat m_t}{\max(1, \mathrm{rms}(Q^T Q \hat m_t)/1.1)}

  with Q = Q_1 ⊗ ... ⊗ Q_k (one factor per axis, see the module docstring).
  Before preconditioning, on every ⌈1/p⌉-th step (p =
  ``precond_update_probability``, deterministic as in psgd-jax), each factor
  takes one relative-gradient step towards whitening h = m̂ + ε·mean|m̂|·V
  (ε = √eps_f32, V a standard normal probe): A = Q h, B = Q⁻ᵀ V,

  .. math::
    Q_i \leftarrow Q_i - η\,\frac{\mathrm{triu}(A_iA_i^T - B_iB_i^T)}
    {\lVert A_iA_i^T + B_iB_i^T \rVert_{lb}}\, Q_i

  (diagonal factors: element-wise, normed by the largest entry; ‖·‖_lb a
  cheap lower bound of the spectral norm); with probability 0.01 the factors
  are first rescaled to equal magnitudes. The probes and the balancing draw
  come from a key kept in the state, so a run is determined by ``seed``.

  Args:
    b1: β₁, the momentum's decay, in [0, 1); 0 keeps no momentum.
    precond_update_probability: p, in (0, 1], or a schedule of the step;
      ``None``: ``gt.precond_update_prob_schedule()`` (1 for 500 steps, then
      annealed to 0.03). A schedule is evaluated at the 1-based step, as in
      psgd-jax: under ``optax.inject_hyperparams`` list one you pass in
      ``static_args`` (inject evaluates a schedule at its own 0-based count;
      the default ``None`` is static already).
    max_size_triangular: axes longer than this get a diagonal factor, >= 1.
    min_ndim_triangular: leaves with fewer axes get diagonal factors, >= 0.
    memory_save_mode: ``None`` (triangular where allowed), ``"one_diag"``
      (each leaf's longest axis diagonal) or ``"all_diag"``.
    momentum_into_precond_update: fit Q on m̂ (psgd-jax's default) rather than
      on g.
    precond_lr: η, the factors' step size, >= 0.
    precond_init_scale: Q starts at this times the identity (each factor at
      its k-th root), > 0.
    mu_dtype: storage of the momentum, as in ``ema``.
    precond_dtype: storage of the factors (e.g. ``jnp.bfloat16``); ``None``:
      the parameter's compute dtype. They are fitted and applied in at least
      float32.
    seed: seed of the probes' key, >= 0.
    matrix_view: which axes of a leaf index separate leaves: the ``batch``
      axes of this rule's views (e.g. ``gt.stacked_matrix_view()``; only the
      batch is read). Default: those the Flax axis names settle (``layers``,
      ``exp``, ...) and the leading axis of a 3-D leaf with ``"expert"`` in
      its path. Each index along them gets its own factors over the other
      axes (stored with the batch first) and its own probe; damping and RMS
      cap stay per leaf (psgd-jax's ``scanned_layers``).

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByPsgdKronState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> tx = gt.scale_by_psgd_kron(b1=0.0, precond_update_probability=1.0)
    >>> u, state = tx.update(jnp.ones((2, 3)), tx.init(jnp.zeros((2, 3))))
    >>> [q.shape for q in state.factors]
    [(2, 2), (3, 3)]

  Reference: Li, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS
  2018, and "Black Box Lie Group Preconditioners for SGD", 2022; transcribed
  from psgd-jax's ``kron.py`` (evanatyourservice/psgd_jax), without its
  matmul-precision options (its ``scanned_layers`` are the batch axes of
  ``matrix_view``); real leaves only.
  """
  _validate.check_decay("b1", b1)
  if precond_update_probability is None:
    precond_update_probability = precond_update_prob_schedule()
  if not callable(precond_update_probability):
    _validate.check_in_range("precond_update_probability", precond_update_probability,
                             0.0, 1.0, low_inclusive=False, high_inclusive=True)
  max_size_triangular = _validate.check_integer("max_size_triangular", max_size_triangular)
  min_ndim_triangular = _validate.check_integer("min_ndim_triangular", min_ndim_triangular, 0)
  if memory_save_mode not in MEMORY_SAVE_MODES:
    raise ValueError(
        f"memory_save_mode must be one of {MEMORY_SAVE_MODES}, got {memory_save_mode!r}")
  _validate.check_non_negative("precond_lr", precond_lr)
  _validate.check_in_range("precond_init_scale", precond_init_scale, 0.0, np.inf,
                           low_inclusive=False)
  _validate.check_floating_dtype("precond_dtype", precond_dtype)
  seed = _validate.check_integer("seed", seed, low=0, traced=True)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  keeps_momentum = not _validate.is_static_zero(b1)

  def kinds(x):
    return triangular_axes(jnp.shape(x), max_size_triangular, min_ndim_triangular,
                           memory_save_mode)

  def factor_dtype(x):
    return _tree.compute_dtype(x) if precond_dtype is None else jnp.dtype(precond_dtype)

  def init_factors(p, batch):
    if batch:
      count, shape = entry_shape(jnp.shape(p), batch)
      one = init_factors(jax.ShapeDtypeStruct(shape, _tree.compute_dtype(p)), ())[0]
      return (tuple(jnp.broadcast_to(q, (count, *q.shape)) for q in one),)
    shape, triangular = jnp.shape(p) or (1,), kinds(p)
    scale = precond_init_scale ** (1 / len(shape))
    if len(jnp.shape(p)) == 1 and isinstance(p, jax.Array):  # laid out like its parameter
      return ((scale * jnp.ones_like(p, factor_dtype(p)),),)
    return (tuple(scale * (jnp.eye(d, dtype=factor_dtype(p)) if t
                           else jnp.ones(d, factor_dtype(p)))
                  for d, t in zip(shape, triangular)),)

  def factor_shapes(shape, batch):
    """The shapes ``init_factors`` gives the factors of a leaf of ``shape``
    (a vector's, laid out like it, is not looked at)."""
    count, entry = entry_shape(tuple(shape), batch)
    entry = entry or (1,)
    sides = kinds(jax.ShapeDtypeStruct(entry, jnp.float32))
    return tuple((*((count,) if batch else ()), *((d, d) if t else (d,)))
                 for d, t in zip(entry, sides))

  def check_factors(paths, args):
    for path, (g, _, factors, *_, batch) in zip(paths, args):
      if jnp.ndim(g) == 1 and not batch:
        continue
      for i, (q, shape) in enumerate(zip(factors, factor_shapes(jnp.shape(g), batch))):
        _validate.check_state_shape(
            jnp.shape(q), shape, f"scale_by_psgd_kron: factor {i} of {jax.tree_util.keystr(path)}",
            "max_size_triangular, min_ndim_triangular, memory_save_mode and the batch axes")

  def role(x, batch):
    """What ``gt.describe`` shows: each axis's factor, e.g. 'kron 16x32 (tri, diag)'
    (with batch axes: 'kron 16x32 (tri, diag), 4 entries')."""
    count, shape = entry_shape(jnp.shape(x), batch)
    shape = shape or (1,)
    sides = ", ".join("tri" if t else "diag" for t in kinds(jax.ShapeDtypeStruct(shape, x.dtype)))
    entries = f", {count} entries" if batch else ""
    return f"kron {'x'.join(map(str, shape))} ({sides}){entries}"

  def place_factors(params, factors):
    """On a mesh, the factors of a matrix or a stack of entries laid out as
    state stacks (``block_stacks.place_as_state``: split along the first
    axis over all devices where the mesh size divides it, else the second,
    else replicated), which the owners' step keeps; a vector's diagonal
    factor as its parameter (it is stepped where the parameter lives, and on
    Auto axes the layouts of its inputs are all XLA goes by); without a
    mesh, as they are."""
    plain = _tree.unwrap_metadata(params)
    leaves, treedef = jax.tree.flatten(plain)
    mesh = block_stacks.owner_mesh(leaves)
    if mesh is None:
      return factors
    place = lambda q: block_stacks.place_as_state(q, mesh)
    return treedef.unflatten([
        qs if jnp.ndim(p) == 1 else jax.tree.map(place, qs)
        for p, qs in zip(leaves, treedef.flatten_up_to(factors))])

  def init_fn(params):
    _validate.check_real_leaves(params, "scale_by_psgd_kron")
    batches = _matrix_view.batch_axes_of(params, matrix_view)
    _routing.report_per_leaf(params, "roles", [
        role(x, b) for x, b in zip(jax.tree.leaves(_tree.unwrap_metadata(params)), batches)])
    mu = state_format.zeros_like_tree(params, mu_format, signed=True) if keeps_momentum else None
    # map_statistics visits the leaves in this order.
    leaf_batches = iter(batches)
    factors = _tree.map_statistics(lambda p: init_factors(p, next(leaf_batches)), 1, params)[0]
    if not _tree.is_params_placeholder(params):
      factors = place_factors(params, factors)
    return ScaleByPsgdKronState(jnp.zeros([], jnp.int32), mu, factors,
                                jnp.zeros([], jnp.int32), jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None):
    _validate.check_floating_updates(updates, "scale_by_psgd_kron")
    _validate.check_matching_shapes(updates, state.mu, "scale_by_psgd_kron", of="state")
    updates = _sharding.committed_like(updates, params)
    count = optax.safe_increment(state.count)
    probability = _tree.resolve_schedule(precond_update_probability, count)
    counter = optax.safe_increment(state.update_counter)
    fit = counter >= 1 / probability
    do_balance, probe_key = step_keys(state.key)
    treedef = _tree.statistics_structure(updates)
    leaf_keys = leaf_probe_keys(probe_key, updates)
    indices = [jnp.int32(i) for i in range(treedef.num_leaves)]
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format)

    def moments(g, m, decay, correction):
      """(m_t or ``None``, m̂_t, the fitted input's base h) of a leaf, a scalar as shape (1,)."""
      shape = g.shape or (1,)
      g_ = g.reshape(shape)
      if not keeps_momentum:
        return None, g_, g_
      m = momentum_step(m.reshape(shape), g_, decay)
      m_hat = m / correction
      return m, m_hat, m_hat if momentum_into_precond_update else g_

    def preconditioned(m_hat, h, factors, key, g, damp, fit, do_balance, lr):
      """(P m̂, the factors), the factors first fitted on h + damp·V when ``fit``
      (``damp=None``: ε·mean|h|); V is drawn like ``g`` from ``key``."""

      def refit(qs):
        # Drawn (and h's mean taken) only when the factors are fitted.
        v = probe_when(fit, key, g).reshape(h.shape)
        scale = PROBE_WEIGHT * jnp.mean(jnp.abs(h)) if damp is None else damp
        qs = jax.lax.cond(do_balance, balance, list, qs)
        return fit_factors(qs, h + scale * v, v, lr)

      qs = jax.lax.cond(fit, refit, list, list(factors))
      return precondition(qs, m_hat), tuple(qs)

    def step(g, m, factors, index, scalars):
      """One leaf's step, in its compute dtype (a scalar as shape (1,)); its
      probe's key is row ``index`` of ``leaf_keys``.

      Traced numbers come in ``scalars``, not by closure: on an Explicit mesh
      this runs with Auto axes, where outer values may not enter.
      """
      fit, do_balance, decay, correction, lr, keys = scalars
      m, m_hat, h = moments(g, m, decay, correction)
      u, qs = preconditioned(m_hat, h, factors, keys[index], g, None, fit, do_balance, lr)
      u = _tree.clipped_to_rms(u, RMS_LIMIT).reshape(g.shape)
      return u, None if m is None else m.reshape(g.shape), qs

    def step_of(batch):
      """``step`` for a leaf with ``batch`` axes, as psgd-jax's scanned layers:
      the factors fitted and applied entry by entry (``to_entries``; entry j's
      probe key folded from the leaf's and j, ``entry_probes``), the probe's
      damping and the RMS cap taken over the whole leaf."""
      if not batch:
        return step

      def entries_step(g, m, factors, index, scalars):
        fit, do_balance, decay, correction, lr, keys = scalars
        m, m_hat, h = moments(g, m, decay, correction)
        damp = PROBE_WEIGHT * jnp.mean(jnp.abs(h))
        entries = lambda x: to_entries(x, batch)
        count, _ = entry_shape(g.shape, batch)
        entry_keys = threefry.fold_in(keys[index], jnp.arange(count, dtype=jnp.uint32))
        u, qs = jax.vmap(preconditioned, in_axes=(0, 0, 0, 0, 0) + (None,) * 4)(
            entries(m_hat), entries(h), factors, entry_keys, entries(g), damp, fit, do_balance,
            lr)
        u = _tree.clipped_to_rms(from_entries(u, g.shape, batch), RMS_LIMIT)
        return u, m, qs

      return entries_step

    def leaf(g, m, factors, index, seed, batch):
      if g.size == 0:
        return g, m, factors
      dtype = _tree.compute_dtype(g)
      m_old = state_format.load(m, dtype) if keeps_momentum else None
      # On an Explicit mesh the factors' contractions cross sharded axes: XLA
      # lays them out; the outputs keep the layouts of the step's inputs.
      u, m_new, qs = _sharding.in_auto_axes(
          step_of(batch), g.astype(dtype), m_old, tuple(q.astype(dtype) for q in factors), index,
          scalars_of(dtype), like=(g, m_old, factors))
      return finish(g, factors, u, stored_momentum(m_new, m, seed)[0], qs)

    def stored_momentum(m_new, m, seed):
      """(m_t as its state keeps it, m_t as the step uses it): ``stored_and_used``."""
      if not keeps_momentum:
        return None, None
      return state_format.stored_and_used(m_new, m, mu_format, seed)

    def finish(g, factors, u, m_stored, qs):
      """A leaf's step's results cast and stored as its state keeps them."""
      stored = tuple(q.astype(f.dtype) for q, f in zip(qs, factors))
      return u.astype(g.dtype), m_stored, stored

    def scalars_of(dtype):
      return (fit, do_balance, jnp.asarray(b1, dtype),
              _tree.bias_correction(b1, count, dtype), jnp.asarray(precond_lr, dtype),
              leaf_keys)

    def group_step(plan, size, dtype, members):
      """The steps of one group's leaves, each computed whole on one owner.

      ``members``: per leaf of the group (g, m, factors, index, seed, batch
      axes, the same for all), computed in ``dtype``. Their arrays are
      stacked (``plan.stack_entries``: padded to ``size``, a multiple of the
      mesh size), split along the stack over all devices, stepped there
      (``block_stacks.map_entries``: vmapped, or one matrix at a time where
      that is faster; ``fit`` and ``do_balance`` shared, so their conds stay
      conds) and unstacked into the leaves' layouts; the factors keep the
      layouts they came in.
      """
      mesh = plan.mesh
      scalars = scalars_of(dtype)
      # The momentum is updated leaf by leaf, where each leaf lives (so it
      # keeps its parameter's layout on any mesh), and the owners are handed
      # m_t with decay 1: their step's m = 1·m_t + 0·g is m_t exactly.
      # The owners step from m_t as stored (bf16 state read back, as
      # ``stored_and_used``): from the wider m_t, the donated buffer is copied.
      ms = [stored_momentum(momentum_of(g.astype(dtype), m, scalars), m, seed)
            for g, m, _, _, seed, _ in members]
      ms, ms_stored = [used for _, used in ms], [stored for stored, _ in ms]
      columns = [[g.astype(dtype) for g, *_ in members], [f for _, _, _, f, *_ in members]]
      columns += [[qs[i].astype(dtype) for _, _, qs, *_ in members]
                  for i in range(len(members[0][2]))]
      columns += [ms] if keeps_momentum else []
      g, indices, *rest = plan.stack_entries(size, columns)
      qs, m = (tuple(rest[:-1]), rest[-1]) if keeps_momentum else (tuple(rest), None)
      run = lambda g, m, qs, indices, scalars: block_stacks.map_entries(
          step_of(members[0][5]), g, m, qs, indices, shared=scalars)
      fit_, balance_, decay, *rest_scalars = scalars
      u, _, qs = plan.on_owners(run, g, m, qs, indices,
                                shared=(fit_, balance_, jnp.ones_like(decay), *rest_scalars))
      explicit = mesh is not None and jax.sharding.AxisType.Explicit in mesh.axis_types
      state_spec = lambda f: None if mesh is None else block_stacks.state_spec(f.shape, mesh)
      specs = [[block_stacks.leaf_spec(g) if explicit else None for g, *_ in members]]
      specs += [[block_stacks.leaf_spec(f) if explicit else state_spec(f)
                 for f in fs] for fs in zip(*[f for _, _, f, *_ in members])]
      u, *qs = plan.unstack_entries((u, *qs), specs)
      return [finish(g_, f_, u_, m_, qs_) for (g_, _, f_, *_), u_, m_, qs_ in
              zip(members, u, ms_stored, zip(*qs))]

    def where_they_live(dtype, members):
      """Leaves of one shape and layout off the owner plan (on an Explicit
      mesh: vectors, stacks of entries), stepped as one vmapped call where
      they live: stacked along a new leading axis (each device keeps its
      shards; nothing moves) and taken back at ``opaque`` offsets. One
      program per (shape, layout) instead of one per leaf, each with its
      own probe and conds (PSGD Kron's compile on a mesh)."""
      batch = members[0][5]
      stack = lambda xs: jnp.stack(list(xs))
      g = stack(g_.astype(dtype) for g_, *_ in members)
      m = stack(state_format.load(m_, dtype) for _, m_, *_ in members) if keeps_momentum else None
      qs = tuple(stack(q.astype(dtype) for q in column)
                 for column in zip(*[f for _, _, f, *_ in members]))
      indices = stack(index for _, _, _, index, *_ in members)
      stepped = jax.vmap(step_of(batch), in_axes=(0, 0 if keeps_momentum else None, 0, 0, None))
      results = _sharding.in_auto_axes(stepped, g, m, qs, indices, scalars_of(dtype),
                                       like=(g, m, qs))
      flat, treedef = jax.tree.flatten(results)
      # (The loop's bound is read from its first array: the replicated
      # indices, not a stack split over the mesh, which cannot be raveled.)
      starts, (_, *flat) = block_stacks.opaque(range(len(members)), (indices, *flat))
      def finish_at(member, start):
        g_, m_, f_, _, seed, _ = member
        u, m_new, qs = treedef.unflatten(
            [jax.lax.dynamic_index_in_dim(x, start, keepdims=False) for x in flat])
        return finish(g_, f_, u, stored_momentum(m_new, m_, seed)[0], qs)

      return [finish_at(member, start) for member, start in zip(members, starts)]

    def momentum_of(g, m, scalars):
      """One leaf's m_t (``momentum_step``), where the leaf lives."""
      if not keeps_momentum:
        return None
      return momentum_step(state_format.load(m, g.dtype), g, scalars[2])

    def stacked_leaves(*trees):
      """``map_leaves(leaf, ...)`` with the leaves stepped in stacks, one
      program per distinct shape: the non-empty 2-D leaves without batch
      axes grouped by shape and compute dtype (``block_stacks.OwnerPlan``,
      each leaf one whole block) and stepped on their owners
      (``group_step``); the other non-empty leaves (vectors, scalars, stacks
      of entries) stacked alike: without a mesh there too, on an Explicit
      mesh where they live (``where_they_live``, by shape and layout), on
      Auto axes (layouts unknown when traced) each on its own."""
      plain = [None if t is None else _tree.unwrap_metadata(t) for t in trees]
      flat = [[None] * treedef.num_leaves if t is None else treedef.flatten_up_to(t)
              for t in plain]
      batches = _matrix_view.batch_axes_of(trees[0], matrix_view)  # as init: names on variables
      args = [(*a, b) for a, b in zip(zip(*flat), batches)]
      check_factors([path for path, _ in jax.tree_util.tree_flatten_with_path(plain[0])[0]], args)
      grads = [g for g, *_ in args]
      plan = block_stacks.OwnerPlan.build(
          grads, [block_stacks.block_layout(WHOLE_MATRIX, g.shape)
                  if jnp.ndim(g) == 2 and g.size and not b else None
                  for g, b in zip(grads, batches)],
          [_tree.compute_dtype(g) for g in grads])
      # (size, dtype, member indices) per stack.
      stacks = [(group.size, group.dtype, [i for i, _, _ in group.members])
                for group in plan.groups]
      grouped = {i for _, _, indices in stacks for i in indices}
      alike = {}
      explicit = plan.mesh is not None and jax.sharding.AxisType.Explicit in plan.mesh.axis_types
      if plan.mesh is None or explicit:
        for i, g in enumerate(grads):
          if i not in grouped and g.size:
            key = (jnp.shape(g), _tree.compute_dtype(g), batches[i], block_stacks.leaf_spec(g))
            alike.setdefault(key, []).append(i)
      if plan.mesh is None:
        stacks += [(len(indices), dtype, indices) for (_, dtype, _, _), indices in alike.items()]
      out = [None] * len(args)
      for size, dtype, indices in stacks:
        results = group_step(plan, size, dtype, [args[i] for i in indices])
        for i, result in zip(indices, results):
          out[i] = result
      if explicit:
        for (_, dtype, _, _), indices in alike.items():
          if len(indices) > 1:
            for i, result in zip(indices, where_they_live(dtype, [args[i] for i in indices])):
              out[i] = result
      results = iter([leaf(*a) if o is None else o for a, o in zip(args, out)])
      # map_leaves visits the leaves in this order and wraps its outputs as
      # the inputs are wrapped (NNX variables).
      return _tree.map_leaves(lambda *_: next(results), 3, *trees)

    u, mu, factors = stacked_leaves(
        updates, state.mu, state.factors, treedef.unflatten(indices), seeds)
    return u, ScaleByPsgdKronState(
        count, mu if keeps_momentum else None, factors, jnp.where(fit, 0, counter),
        jax.random.split(state.key)[0])

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))

