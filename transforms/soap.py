"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner.

Leaves become matrices as in ``kronecker_precondition`` (their matrix view; a
side longer than ``max_precondition_dim`` keeps the identity basis, and a leaf
with no preconditioned side, or no view at all, is plain Adam); there is no
blocking, as in the reference code. The matrices of one shape, across all
leaves, form one stack (``gradtx._internal.block_stacks``) holding their
statistics, eigenbases and Adam moments; on a device mesh the stack is split
over all devices, so each matrix is rotated, updated and refreshed on one
owner device, and only gradients travel there and updates back.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradtx._internal import block_stacks
from gradtx._internal import routing as _routing
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.linalg import matrix_roots as roots
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule
from gradtx.storage import state_format
from gradtx.transforms import kronecker as kron

REFRESH_METHODS = ("qr", "eigh")


class ScaleBySoapState(NamedTuple):
  """State of ``scale_by_soap``.

  Matrix statistics and moments are stacks, one per matrix shape (dicts keyed
  by shape, e.g. ``"256x768"``), holding the matrices of every leaf of that
  shape in leaf order, padded with zeros to a multiple of the mesh size.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: Adam's first moment of the plain-Adam leaves (no preconditioned
      side), shaped like the leaf (``mu_dtype``); ``MaskedNode()`` elsewhere.
    nu: their second moment (``nu_dtype``).
    mu_stacks: per matrix shape, Adam's first moment in eigenbasis
      coordinates, (matrices, m, n), stored in its parameters' dtype (the
      widest of those sharing the stack: a bf16 leaf's next to a float32 leaf
      of its shape is float32), or ``mu_dtype``, and updated in at least
      float32.
    nu_stacks: the second moment, likewise, but at least float32 over
      float16 parameters (σ₁² overflows float16); with ``nu_dtype="int8"``
      stored as √v (v spans too many decades for the 8-bit map).
    left_stats: per shape, the EMA of GGᴴ, (matrices, m, m) in at least
      float32 (shapes whose rows keep the identity basis have none).
    right_stats: the EMA of GᴴG, (matrices, n, n).
    left_basis: Q_L, eigenvectors of ``left_stats`` by decreasing eigenvalue.
    right_basis: Q_R, likewise for ``right_stats``.
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  mu_stacks: dict
  nu_stacks: dict
  left_stats: dict
  right_stats: dict
  left_basis: dict
  right_basis: dict


def _rotate(x, left, right, group, *, back=False):
  """Q_Lᴴ X Q_R into the eigenbasis, or Q_L X Q_Rᴴ back (``back=True``)."""
  if group.left:
    x = roots.matmul(left if back else roots.transpose(left), x)
  if group.right:
    x = roots.matmul(x, roots.transpose(right) if back else right)
  return x


def _eigenvectors(stats):
  return roots.unbatched_on_cpu(jnp.linalg.eigh, stats)[1][..., ::-1]


def adam_in_basis(count, x, m, v, *, b1: float, b2: float, eps: float):
  r"""One Adam step of the rotated gradient x: (u, m, v); the first step is zero.

  .. math:: m' = β_1 m + (1-β_1) x,\quad v' = β_2 v + (1-β_2)|x|^2,\quad
    u = \frac{\sqrt{1-β_2^k}}{1-β_1^k} \frac{m'}{\sqrt{v'} + ε}

  with k = max(count − 1, 1) Adam steps. At ``count == 1`` (the step that only
  builds the basis) u is zero and m, v are returned unchanged.
  """
  m_new = b1 * m + (1 - b1) * x
  v_new = b2 * v + (1 - b2) * _tree.abs_sq(x)
  steps = jnp.maximum(count - 1, 1).astype(v.dtype)
  correction = jnp.sqrt(1 - b2**steps) / (1 - b1**steps)
  first = count == 1
  # (v' is 0 at the first step, and wherever a coordinate never had a
  # gradient: _tree.root's derivative is 0 there, not √'s 0·∞.)
  u = correction * m_new / (_tree.root(jnp.where(first, 1, v_new)) + eps)
  return (jnp.where(first, 0, u), jnp.where(first, m, m_new),
          jnp.where(first, v, v_new))


def accumulate_statistics(left_stats: dict, right_stats: dict, grads: dict,
                          decay: float) -> tuple[dict, dict]:
  r"""Shampoo's statistics of each stack: :math:`L ← βL + (1-β) G G^H`,
  :math:`R ← βR + (1-β) G^H G` (only the sides a stack preconditions)."""
  t = roots.transpose
  left = {k: decay * s + (1 - decay) * roots.matmul(grads[k], t(grads[k]))
          for k, s in left_stats.items()}
  right = {k: decay * s + (1 - decay) * roots.matmul(t(grads[k]), grads[k])
           for k, s in right_stats.items()}
  return left, right


def refreshed_side(stats, basis, v, axis: int, *, refresh: str):
  r"""One side's basis refreshed from its statistics, and v permuted along.

  The columns of Q are ordered by the estimated eigenvalues
  :math:`\mathrm{diag}(Q^H S Q)`, largest first (v's ``axis`` alike); then
  ``refresh="qr"``: Q ← qr(S Q), one power-iteration step; ``"eigh"``: Q ←
  the eigenvectors of S by decreasing eigenvalue.
  """
  estimates = jnp.real(jnp.sum(
      jnp.conj(basis) * roots.matmul(stats, basis), axis=-2))
  order = jnp.argsort(-estimates, axis=-1)
  index = order[..., :, None] if axis == -2 else order[..., None, :]
  v = jnp.take_along_axis(v, index, axis)
  if refresh == "eigh":
    return _eigenvectors(stats), v
  basis = jnp.take_along_axis(basis, order[..., None, :], -1)
  power_step = roots.matmul(stats, basis)
  return roots.unbatched_on_cpu(jnp.linalg.qr, power_step)[0], v


def new_basis(group, left, right, left_basis, right_basis, m, v, *, first: bool,
              refresh: str):
  """A stack's bases after a refresh, with m rotated into them and v permuted.

  ``first``: the bases are built from scratch (eigenvectors of L and R) and
  m, v (still zero) are returned as they are.
  """
  if first:
    return (_eigenvectors(left) if group.left else None,
            _eigenvectors(right) if group.right else None, m, v)
  m = _rotate(m, left_basis, right_basis, group, back=True)
  if group.left:
    left_basis, v = refreshed_side(left, left_basis, v, -2, refresh=refresh)
  if group.right:
    right_basis, v = refreshed_side(right, right_basis, v, -1, refresh=refresh)
  return left_basis, right_basis, _rotate(m, left_basis, right_basis, group), v


def refresh_bases(count, groups, mesh, left, right, left_basis, right_basis, moments, *,
                  precondition_every, refresh: str):
  """Every stack's bases and moments after step ``count``, on their owners.

  Step 1 builds the bases (``new_basis(first=True)``); after the Adam step of
  every k = count − 1 with k % ``precondition_every`` = 0 they are refreshed;
  otherwise everything is returned as it is (one ``lax.switch``). ``left``,
  ``right``, the bases and ``moments`` (name -> (m, v)) are dicts of stacks
  keyed by group name.
  """
  get = lambda d, g: d.get(g.name)

  def branch(first):
    def run(operands):
      left_basis, right_basis, moments = operands
      out_left, out_right, out_moments = {}, {}, {}
      for g in groups:
        lb, rb, m, v = block_stacks.on_owners(
            lambda *args, g=g: new_basis(g, *args, first=first, refresh=refresh), mesh,
            get(left, g), get(right, g), get(left_basis, g), get(right_basis, g),
            *moments[g.name])
        if g.left:
          out_left[g.name] = lb
        if g.right:
          out_right[g.name] = rb
        out_moments[g.name] = (m, v)
      return out_left, out_right, out_moments
    return run

  index = jnp.where(
      count == 1, 0, jnp.where((count - 1) % precondition_every == 0, 1, 2))
  return jax.lax.switch(
      index, (branch(True), branch(False), lambda operands: operands),
      (left_basis, right_basis, moments))


def scale_by_soap(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    precondition_b2: Optional[float] = None,
    precondition_every: int = 10,
    max_precondition_dim: int = 10000,
    refresh: str = "qr",
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Adam in the slowly refreshed eigenbasis of Shampoo's L and R.

  .. math::
    G' = Q_L^H G_t Q_R,\quad m_t = β_1 m_{t-1} + (1-β_1) G',\quad
    v_t = β_2 v_{t-1} + (1-β_2) |G'|^2,\\
    u_t = \frac{\sqrt{1-β_2^k}}{1-β_1^k}\, Q_L \frac{m_t}{\sqrt{v_t} + ε} Q_R^H,
    \quad L \leftarrow β_s L + (1-β_s) G_t G_t^H,\quad
    R \leftarrow β_s R + (1-β_s) G_t^H G_t

  with k = t − 1 Adam steps: as in the reference code, the first step only
  builds the statistics and their eigenbasis (``eigh``, columns by decreasing
  eigenvalue) and returns a zero update, so that the projection never uses the
  gradient it projects. After the Adam step of every k with
  k % ``precondition_every`` = 0 the basis is refreshed from the updated
  statistics: its columns are sorted by the estimated eigenvalues
  :math:`\mathrm{diag}(Q^T L Q)` (v is permuted alike), then
  ``refresh="qr"``: Q ← qr(L Q), one power-iteration step (the paper's);
  ``"eigh"``: Q ← eigenvectors of L. The first moment is rotated into the new
  basis, :math:`m \leftarrow Q_{new}^T Q\, m\, Q^T Q_{new}` per side; v is
  only permuted (the paper's approximation). ε sits outside the root and the
  bias correction is folded into the step, as in the reference.

  Args:
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: added to √v, >= 0.
    precondition_b2: decay β_s of L and R, in [0, 1); ``None``: ``b2``
      (the reference's ``shampoo_beta``).
    precondition_every: refresh the basis every this many steps, >= 1 (may
      be traced).
    max_precondition_dim: sides longer than this keep the identity, >= 1.
    refresh: ``"qr"`` or ``"eigh"``.
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    nu_dtype: storage of the second moment, as in ``scale_by_adam``.
    matrix_view: the matrix-view rule (see ``gt.flax_matrix_view``).

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleBySoapState``.

  Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using
  Adam", ICLR 2025 (arXiv 2409.11321); github.com/nikhilvyas/SOAP. Departures:
  tensors of ndim ≥ 3 are preconditioned as their matrix view rather than per
  axis; the reference rotates m back and forth at every step, here only when
  the basis changes (the same in exact arithmetic).
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  if precondition_b2 is not None:
    _validate.check_decay("precondition_b2", precondition_b2)
  _validate.check_non_negative("eps", eps)
  precondition_every = _validate.check_integer(
      "precondition_every", precondition_every, traced=True)
  max_precondition_dim = _validate.check_integer(
      "max_precondition_dim", max_precondition_dim
  )
  if refresh not in REFRESH_METHODS:
    raise ValueError(
        f"refresh must be one of {REFRESH_METHODS}, got {refresh!r}"
    )
  stats_b2 = b2 if precondition_b2 is None else precondition_b2
  mu_format = state_format.state_format("mu_dtype", mu_dtype)
  nu_format = state_format.state_format("nu_dtype", nu_dtype)

  plan = lambda tree: kron.owner_plan(tree, matrix_view, None, max_precondition_dim)[0]
  # In the eigenbasis v concentrates on the top directions and spans more
  # decades (1e8 measured) than the 8-bit map keeps (its smallest code is
  # ~3e-7 of a block's largest): its small entries stored as 0 made
  # m/(√v + ε) 30x too large. Quantized, the stacks keep √v: half the decades.
  root_of_nu = state_format.is_quantized(nu_format)
  load_nu = lambda stored, dtype: (
      (lambda r: r * r) if root_of_nu else (lambda v: v))(state_format.load(stored, dtype))

  def init_fn(params):
    _validate.check_shaped_params(params, "scale_by_soap")
    owners = plan(params)
    groups = owners.groups
    plain = iter([layout is None for layout in owners.layouts])
    plain_params = _tree.zeros_where(params, lambda path, p: next(plain))
    leaves = jax.tree.leaves(params)
    # Stored like their parameters (None formats), computed in the stack's
    # dtype; v at least in float32 over float16 parameters: in the eigenbasis
    # it gathers σ₁², past float16's 65504 for a 512x512 gradient of ones.
    like_params = lambda g: jnp.result_type(*(leaves[i].dtype for i, _, _ in g.members))
    wide = lambda dtype: jnp.float32 if dtype == jnp.float16 else dtype
    moments = lambda fmt, real: {
        g.name: state_format.zeros_like_tree(
            owners.zeros(g, g.block_shape, wide(like_params(g)) if real else like_params(g)),
            fmt, signed=not real, real=real)
        for g in groups}
    side = lambda on, size: {
        g.name: owners.zeros(g, (g.block_shape[size],) * 2)
        for g in groups if getattr(g, on)}
    stacks = dict(
        mu_stacks=moments(mu_format, False), nu_stacks=moments(nu_format, True),
        left_stats=side("left", 0), right_stats=side("right", 1),
        left_basis=side("left", 0), right_basis=side("right", 1))
    _routing.report_stack_bytes(*kron.stack_bytes(params, groups, stacks.values()))
    return ScaleBySoapState(
        count=jnp.zeros([], jnp.int32),
        mu=state_format.zeros_like_tree(plain_params, mu_format, signed=True),
        nu=state_format.zeros_like_tree(plain_params, nu_format, signed=False, real=True),
        **stacks)

  adam = lambda count, x, m, v: adam_in_basis(count, x, m, v, b1=b1, b2=b2, eps=eps)

  def plain_step(count, g, m, v, seed):
    dtype = _tree.compute_dtype(g)
    u, m_new, v_new = adam(count, g.astype(dtype), state_format.load(m, dtype),
                           state_format.load(v, _tree.real_dtype(dtype)))
    if state_format.is_quantized(mu_format, nu_format):
      u, m_new, v_new = state_format.reset_non_finite(g, u, m_new, v_new)
    return (u.astype(g.dtype), state_format.store(m_new, m, mu_format, seed, stream=0),
            state_format.store(v_new, v, nu_format, seed, stream=1))

  def update_fn(updates, state, params=None):
    _validate.check_matching_shapes(updates, params, "scale_by_soap")
    updates = _sharding.committed_like(updates, params)
    count = optax.safe_increment(state.count)
    owners = plan(updates)
    leaves, layouts, groups = owners.leaves, owners.layouts, owners.groups
    owners.check_state(state.mu_stacks, updates, "scale_by_soap")
    treedef = jax.tree.structure(updates)
    seeds = state_format.maybe_rounding_seeds(updates, count, mu_format, nu_format)
    stack_seeds = state_format.maybe_rounding_seeds(
        state.mu_stacks, count, mu_format, nu_format)
    seed_of = lambda k: None if stack_seeds is None else stack_seeds[k]
    grads = dict(zip((g.name for g in groups), owners.stack()))
    get = lambda d, g: d.get(g.name)
    # The state's stacks are stored unpadded (the same on any mesh): padded to
    # the owners' length for the step, cut back after it.
    to_owners = lambda stacks: {k: owners.to_owners(k, v) for k, v in stacks.items()}
    to_state = lambda stacks: {k: owners.to_state(k, v) for k, v in stacks.items()}
    left_stats, right_stats, old_left_basis, old_right_basis = map(to_owners, (
        state.left_stats, state.right_stats, state.left_basis, state.right_basis))

    # Adam in the current eigenbasis, on the owners.
    directions, moments = [], {}
    for g in groups:
      x = grads[g.name]
      m, v = (owners.to_owners(g.name, load(stored, dtype))
              for stored, dtype, load in (
                  (state.mu_stacks[g.name], x.dtype, state_format.load),
                  (state.nu_stacks[g.name], _tree.real_dtype(g.dtype), load_nu)))
      lb, rb = get(old_left_basis, g), get(old_right_basis, g)
      u, m, v = adam(count, _rotate(x, lb, rb, g), m, v)
      directions.append(_rotate(u, lb, rb, g, back=True))
      moments[g.name] = (m, v)

    left, right = accumulate_statistics(left_stats, right_stats, grads, stats_b2)

    left_basis, right_basis, moments = refresh_bases(
        count, groups, owners.mesh, left, right, old_left_basis, old_right_basis, moments,
        precondition_every=precondition_every, refresh=refresh)
    mu_stacks = to_state({k: m for k, (m, _) in moments.items()})
    nu_stacks = to_state({k: v for k, (_, v) in moments.items()})
    mu_stacks = {k: state_format.store(m, state.mu_stacks[k], mu_format, seed_of(k), stream=0)
                 for k, m in mu_stacks.items()}
    nu_stacks = {k: state_format.store(jnp.sqrt(v) if root_of_nu else v, state.nu_stacks[k],
                                       nu_format, seed_of(k), stream=1)
                 for k, v in nu_stacks.items()}

    out = owners.unstack(directions, alike=True)
    mu_leaves, nu_leaves = (treedef.flatten_up_to(t) for t in (state.mu, state.nu))
    seed_leaves = [None] * len(leaves) if seeds is None else treedef.flatten_up_to(seeds)
    mu, nu = list(mu_leaves), list(nu_leaves)
    for i, layout in enumerate(layouts):
      if layout is None:
        out[i], mu[i], nu[i] = plain_step(
            count, leaves[i], mu_leaves[i], nu_leaves[i], seed_leaves[i])
    return treedef.unflatten(out), ScaleBySoapState(
        count, treedef.unflatten(mu), treedef.unflatten(nu), mu_stacks, nu_stacks,
        *map(to_state, (left, right, left_basis, right_basis)))

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))
