"""K-FAC: Kronecker-factored curvature from the activations of dense layers.

A dense layer y = x W + b (flax layout, W of shape (fan_in, fan_out)) has the
per-row weight gradient ã δᵀ with ã = (x, 1) and δ = ∂L/∂y, so its Fisher
block E[vec(ãδᵀ) vec(ãδᵀ)ᵀ] is approximated by A ⊗ G with A = E[ã ãᵀ] and
G = E[δ δᵀ] (Martens & Grosse 2015). Unlike Shampoo's factors (GGᵀ and GᵀG
of the weight gradient, ``gradtx.transforms.kronecker``), A and G come from
the model's activations; the transform reads them from
``update(..., records=Records)`` (``gradtx.flax_integration.model_records``).

Which leaves are dense kernels is decided from the parameter tree alone (a
rule of the path and leaf, ``is_dense_kernel`` by default): the factors'
shapes must be known at ``init``, before any record exists. A kernel's
sibling ``bias`` of shape (fan_out,) is preconditioned jointly with it, as
the last row of [W; b]. Every other leaf gets a diagonal rule, except a
stack of dense kernels (a ``kernel`` of 3+ dimensions not named a
convolution or attention projection), which the default rule refuses: its
layers need K-FAC blocks of their own.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import optax

from gradtx._internal import names as _names
from gradtx._internal import routing as _routing
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.flax_integration import model_records
from gradtx.linalg.matrix_roots import ROOT_METHODS, inverse_pth_root, matmul
from gradtx.routing.roles import PathLeafRule

_NAME = "kfac_precondition"


def is_dense_kernel(path: tuple, leaf: jax.Array) -> bool:
  """Default rule: a 2-D leaf named ``kernel`` (``nnx.Linear``, linen ``Dense``)."""
  return model_records.split_leaf_path(path)[1] == "kernel" and leaf.ndim == 2


class KfacPreconditionState(NamedTuple):
  """State of ``kfac_precondition``; each field a tree structured like the params.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    input_factors: on each dense kernel, the EMA (not bias-corrected) of the
      batch's A = mean ããᵀ, (fan_in [+1], fan_in [+1]) in at least float32;
      ``optax.MaskedNode()`` on every other leaf.
    output_factors: on each dense kernel, the EMA of G = Σ δδᵀ,
      (fan_out, fan_out).
    input_inverses: Â⁻¹ (damped, see ``kfac_precondition``) as last
      recomputed, shaped like ``input_factors``.
    output_inverses: Ĝ⁻¹, shaped like ``output_factors``.
    diag_stats: on diagonal leaves, the EMA of g², shaped like the leaf;
      ``optax.MaskedNode()`` on dense kernels and their biases.
  """

  count: jax.Array
  input_factors: optax.Updates
  output_factors: optax.Updates
  input_inverses: optax.Updates
  output_inverses: optax.Updates
  diag_stats: optax.Updates


class _Layer(NamedTuple):
  kernel: int  # index among the flattened leaves
  bias: Optional[int]


def _dense_layers(flat: list, is_dense: PathLeafRule) -> dict:
  """``{module key: _Layer}`` of the (path, leaf) list ``flat``."""
  kernels = {}
  for i, (path, leaf) in enumerate(flat):
    # A zero-size kernel (nnx.Linear(8, 0)) has no curvature to factor: its
    # (empty) step is the diagonal rule's, and it needs no record.
    if 0 not in jnp.shape(leaf) and is_dense(_routing.plain_path(path), leaf):
      kernels[model_records.split_leaf_path(path)[0]] = i
  layers = {key: _Layer(i, None) for key, i in kernels.items()}
  for i, (path, leaf) in enumerate(flat):
    key, name = model_records.split_leaf_path(path)
    if key in layers and name == "bias" and i != kernels[key]:
      if jnp.shape(leaf) == (jnp.shape(flat[kernels[key]][1])[-1],):
        layers[key] = _Layer(kernels[key], i)
  return layers


def _roles(flat: list, is_dense: PathLeafRule) -> list:
  """Per leaf: ``(key, has_bias)`` for a kernel, ``"bias"`` or ``"diag"``."""
  roles = ["diag"] * len(flat)
  for key, layer in _dense_layers(flat, is_dense).items():
    roles[layer.kernel] = (key, layer.bias is not None)
    if layer.bias is not None:
      roles[layer.bias] = "bias"
  names = {"diag": "diagonal", "bias": "dense bias"}
  _routing.report_per_path([path for path, _ in flat], "roles",
                           [names.get(r, "dense") if isinstance(r, str) else "dense"
                            for r in roles])
  return roles


def _refuse_stacked_kernels(flat: list) -> None:
  """A ``kernel`` of 3+ dimensions that no name calls a convolution or an
  attention projection is a stack of dense kernels (scanned layers, experts):
  the default rule would give it the diagonal rule without a word."""
  for path, leaf in flat:
    names = _names.path_names(path)
    if (jnp.ndim(leaf) < 3 or model_records.split_leaf_path(path)[1] != "kernel"
        or _names.is_convolution(names) or _names.is_attention_output(names)
        or any(n in ("query", "key", "value") for n in names)):
      continue
    raise ValueError(
        f"{_NAME}: {jax.tree_util.keystr(path)} {jnp.shape(leaf)} looks like a stack of"
        " dense kernels (scanned layers or experts), or a convolution whose path has no"
        " 'conv' name. K-FAC preconditions 2-D kernels from each layer's own record, so it"
        " cannot precondition a stack: build the layers as separate modules, name a"
        " convolution conv..., or pass is_dense= your own rule (the leaves it rejects get"
        " the diagonal rule).")


def _gram(x: jax.Array, y: jax.Array) -> jax.Array:
  """xᵀy over the rows; replicated on an Explicit mesh (an all-reduce)."""
  sharding = _sharding.explicit_sharding(x) or _sharding.explicit_sharding(y)
  out = None if sharding is None else jax.NamedSharding(sharding.mesh, jax.P())
  return jnp.einsum("nd,ne->de", x, y, precision=jax.lax.Precision.HIGHEST,
                    out_sharding=out)


def batch_factors(
    record: model_records.DenseRecord, has_bias: bool
) -> tuple[jax.Array, jax.Array]:
  """A = (1/N) Σ ããᵀ and G = Σ δδᵀ over the N rows of one record."""
  x, d = record.inputs, record.output_grads
  dtype = jnp.promote_types(_tree.compute_dtype(x), _tree.compute_dtype(d))
  x = x.reshape(-1, x.shape[-1]).astype(dtype)
  d = d.reshape(-1, d.shape[-1]).astype(dtype)
  if has_bias:
    x = jnp.concatenate([x, jnp.ones_like(x[:, :1])], axis=1)
  return _gram(x, x) / x.shape[0], _gram(d, d)


INVERSE_METHODS = ("cholesky",) + ROOT_METHODS


def _damped_inverse(m: jax.Array, ridge: jax.Array, method: str) -> jax.Array:
  """(m + ridge·I)⁻¹ of a PSD ``m``, ridge > 0: a Cholesky solve, or
  ``inverse_pth_root(·, 1)`` (``"eigh"``, ``"newton"``)."""
  if method != "cholesky":
    return inverse_pth_root(m, 1, root_method=method, damping=ridge)
  eye = jnp.eye(m.shape[-1], dtype=m.dtype)
  factor = jax.scipy.linalg.cho_factor(m + ridge * eye, lower=True)
  return jax.scipy.linalg.cho_solve(factor, eye)


def damped_inverses(
    a: jax.Array, g: jax.Array, damping: Any, root_method: str = "cholesky"
) -> tuple[jax.Array, jax.Array]:
  r"""(A/π + √λ I)⁻¹ and (πG + √λ I)⁻¹, π = √((tr A/d_A)/(tr G/d_G)).

  Factored Tikhonov damping with π-adjustment (Martens & Grosse 2015, §6.3;
  kfac-jax's ``pi_adjusted_kronecker_factors``): their Kronecker product
  stands in for (A ⊗ G + λI)⁻¹. When either factor is zero, both become
  √λ I, so the update is g/λ; a NaN factor makes both inverses NaN (and a
  non-finite record makes the layer's update NaN with every method).
  ``root_method``: ``"cholesky"`` solves exactly (kfac-jax inverts by LU; like
  its Cholesky option it needs λ well above the round-off of A's largest
  eigenvalue: a rank-deficient factor at λ = 1e-18 gives NaN);
  ``"eigh"``'s pseudo-inverse drops the directions whose damped eigenvalue is
  under 4 ulp of the largest (in float32, where A/π + √λ I is conditioned
  beyond ~2·10⁶, it lost 85-99% of the update a review measured against
  float64).
  """
  norm_a = jnp.trace(a) / a.shape[-1]
  norm_g = jnp.trace(g) / g.shape[-1]
  zero = (norm_a == 0) | (norm_g == 0)  # NaN traces are not zero: they propagate
  pi = jnp.sqrt(jnp.where(zero, 1, norm_a) / jnp.where(zero, 1, norm_g))
  ridge = jnp.sqrt(jnp.asarray(damping, a.dtype))
  inverse = lambda m: _damped_inverse(jnp.where(zero, 0, m), ridge, root_method)
  return inverse(a / pi), inverse(g * pi)


def inverses_at(count, input_factors, output_factors, old_inverses, *, precondition_b2,
                damping, precondition_every, root_method: str = "cholesky"):
  r"""The damped inverses of every layer's bias-corrected factors at step ``count``.

  Recomputed (``damped_inverses`` of :math:`A_t/(1-β^t)`, :math:`G_t/(1-β^t)`)
  at steps 1, 1 + k, 1 + 2k, ... for k = ``precondition_every`` (one
  ``lax.cond``), ``old_inverses`` (a pair of lists) otherwise.
  """
  def recompute(count, input_factors, output_factors):
    correction = lambda m: m / _tree.bias_correction(precondition_b2, count, m.dtype)
    pairs = [damped_inverses(correction(a), correction(g), damping, root_method)
             for a, g in zip(input_factors, output_factors)]
    return [p[0] for p in pairs], [p[1] for p in pairs]

  if isinstance(precondition_every, int) and precondition_every == 1:
    return recompute(count, input_factors, output_factors)
  return jax.lax.cond(
      (count - 1) % precondition_every == 0,
      recompute, lambda *_: old_inverses, count, input_factors, output_factors)


def diagonal_step(count, g, v, *, precondition_b2, damping):
  r"""kfac-jax's ``NaiveDiagonal`` rule for one leaf: (u, v_t).

  .. math:: v_t = β v_{t-1} + (1-β) g^2,\quad u = g / (v_t/(1-β^t) + λ)
  """
  x = g.astype(_tree.compute_dtype(g))
  v = precondition_b2 * v + (1 - precondition_b2) * x * x
  corrected = v / _tree.bias_correction(precondition_b2, count, x.dtype)
  return (x / (corrected + damping)).astype(g.dtype), v


@_validate.checks_arguments
def kfac_precondition(
    *,
    damping: Any = 1e-3,
    precondition_b2: float = 0.95,
    precondition_every: int = 1,
    norm_constraint: Optional[float] = None,
    is_dense: Optional[PathLeafRule] = None,
    root_method: str = "cholesky",
) -> optax.GradientTransformationExtraArgs:
  r"""K-FAC's preconditioner: (A ⊗ G + λI)⁻¹ g per dense layer, from recorded activations.

  For each dense layer with record (x, δ) over N rows (``records.dense``),
  ã = (x, 1) if the layer has a bias, else x:

  .. math::
    A_t = β A_{t-1} + (1-β) \tfrac1N \textstyle\sum_n ã_n ã_n^T,\quad
    G_t = β G_{t-1} + (1-β) \textstyle\sum_n δ_n δ_n^T,\\
    [u_W; u_b] = (\hat A_τ/π + \sqrt{λ} I)^{-1}\,[g_W; g_b]\,
    (π \hat G_τ + \sqrt{λ} I)^{-1},\quad
    π = \sqrt{\frac{\operatorname{tr}\hat A/d_A}{\operatorname{tr}\hat G/d_G}}

  with Â = A_τ/(1 − β^τ), Ĝ likewise (an EMA started at zero, bias-corrected:
  kfac-jax's weighted moving average), τ the last recompute step (steps 1,
  1 + k, 1 + 2k, ... for k = ``precondition_every``; one ``lax.cond``). When
  δ is the gradient of a loss averaged over the N rows, G = Σ δδᵀ is
  kfac-jax's ``estimation_mode="fisher_empirical"`` normalisation (its
  sampled ``"fisher_gradients"`` mode is N times larger) and A ⊗ G its
  empirical-Fisher block. Every other leaf (embeddings, norm scales, biases
  without a dense kernel) gets the diagonal rule of kfac-jax's
  ``NaiveDiagonal`` block in the same mode:

  .. math:: v_t = β v_{t-1} + (1-β) g^2,\quad u = g / (v_t/(1-β^t) + λ)

  With ``norm_constraint`` c, the whole update is scaled by
  min(1, √(c / ⟨u, g⟩)) (kfac-jax's ``norm_constraint``).

  ``update(updates, state, params=None, *, records)`` needs a ``Records``
  with an entry for every dense kernel (``records=None`` is fine when the
  tree has none); it raises a ``ValueError`` naming the first one missing.
  Leading axes of a record (batch, sequence) are all rows. On an Explicit
  mesh the factors are replicated: each Gram product over sharded rows is an
  all-reduce, and the gradient of a sharded kernel is gathered for the two
  products and resharded like it.

  Args:
    damping: λ, > 0 (a float or an array; not a schedule).
    precondition_b2: β, decay of the factors and of v, in [0, 1).
    precondition_every: recompute Â⁻¹ and Ĝ⁻¹ every this many steps, >= 1
      (may be traced).
    norm_constraint: c > 0, or ``None`` for no scaling.
    is_dense: ``is_dense(path, leaf)``, which leaves are dense kernels
      (fan_in, fan_out); ``None``: ``is_dense_kernel``, with which a stack
      of dense kernels is refused (a ``ValueError`` naming it).
    root_method: how the damped factors are inverted: ``"cholesky"`` (an
      exact solve, as kfac-jax's LU inverse), or ``"eigh"`` / ``"newton"``
      (``inverse_pth_root(·, 1)``; ``"eigh"`` drops directions under 4 ulp
      of the largest damped eigenvalue: ``damped_inverses``).

  Returns:
    A ``GradientTransformationExtraArgs`` with state ``KfacPreconditionState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradtx import transforms as gt
    >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> record = gt.DenseRecord(jnp.ones((4, 3)), jnp.ones((4, 2)))
    >>> records = gt.Records({"dense": record}, {})
    >>> tx = gt.kfac_precondition(damping=1.0)
    >>> u, _ = tx.update(params, tx.init(params), records=records)
    >>> u["dense"]["bias"].shape
    (2,)

  Reference: Martens & Grosse, "Optimizing Neural Networks with
  Kronecker-factored Approximate Curvature", ICML 2015; kfac-jax
  (github.com/google-deepmind/kfac-jax, ``DenseTwoKroneckerFactored``,
  ``OptaxPreconditioner``), which the tests match in float64. Departures:
  only the empirical Fisher (from the recorded pass; the true Fisher needs a
  pass with sampled targets, which the recorder can take as its loss), and a
  1×1 factor (fan_out = 1) is damped like any other, where kfac-jax puts all
  the damping into the other factor.
  """
  _validate.check_in_range("damping", damping, 0.0, float("inf"),
                           low_inclusive=False)
  _validate.check_decay("precondition_b2", precondition_b2)
  precondition_every = _validate.check_integer(
      "precondition_every", precondition_every, traced=True)
  if norm_constraint is not None:
    _validate.check_in_range("norm_constraint", norm_constraint, 0.0,
                             float("inf"), low_inclusive=False)
  if root_method not in INVERSE_METHODS:
    raise ValueError(
        f"root_method must be one of {INVERSE_METHODS}, got {root_method!r}")
  b2 = precondition_b2
  refuse_stacks = is_dense is None or is_dense is is_dense_kernel
  is_dense = is_dense_kernel if is_dense is None else is_dense

  def init_fn(params):
    _validate.check_real_leaves(params, _NAME)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if refuse_stacks:
      _refuse_stacked_kernels(flat)
    roles = {tuple(model_records.leaf_names(path)): role
             for (path, _), role in zip(flat, _roles(flat, is_dense))}
    role_of = lambda path: roles[tuple(model_records.leaf_names(path))]

    def statistics(path, p):
      role = role_of(path)
      if not isinstance(role, tuple):
        return (optax.MaskedNode(),) * 4
      dtype = _tree.compute_dtype(p)
      d_in, d_out = p.shape[0] + int(role[1]), p.shape[1]
      return tuple(jnp.zeros((d, d), dtype) for d in (d_in, d_out, d_in, d_out))

    diag = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p, _tree.compute_dtype(p))
        if role_of(path) == "diag" else optax.MaskedNode(), _tree.unwrap_metadata(params))
    return KfacPreconditionState(
        jnp.zeros([], jnp.int32),
        *_tree.map_statistics(statistics, 4, params, with_path=True), diag)

  def layer_factors(records, key, kernel, has_bias, name):
    record = None if records is None else records.dense.get(key)
    if record is None:
      raise model_records.missing_record_error(
          "dense", None if records is None else key, name, _NAME)
    if (record.inputs.shape[-1], record.output_grads.shape[-1]) != kernel.shape:
      raise ValueError(
          f"{_NAME}: the record of {key!r} has inputs (..., "
          f"{record.inputs.shape[-1]}) and output gradients (...,"
          f" {record.output_grads.shape[-1]}), but its kernel is {kernel.shape}")
    return batch_factors(record, has_bias)

  def update_fn(updates, state, params=None, *, records=None, **extra_args):
    del extra_args
    _validate.check_matching_shapes(updates, params, "kfac_precondition")
    flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
    grads = [g for _, g in flat]
    roles = _roles(flat, is_dense)
    statistics = _tree.statistics_structure(updates)  # the state is plain
    fields = [statistics.flatten_up_to(f) for f in state[1:]]
    count = optax.safe_increment(state.count)
    dense = [i for i, r in enumerate(roles) if isinstance(r, tuple)]
    new_a, new_g = [], []
    for i in dense:
      key, has_bias = roles[i]
      a, g = layer_factors(records, key, grads[i], has_bias,
                           jax.tree_util.keystr(flat[i][0]))
      new_a.append(b2 * fields[0][i] + (1 - b2) * a)
      new_g.append(b2 * fields[1][i] + (1 - b2) * g)
    old_inverses = ([fields[2][i] for i in dense], [fields[3][i] for i in dense])
    inv_a, inv_g = inverses_at(
        count, new_a, new_g, old_inverses, precondition_b2=b2, damping=damping,
        precondition_every=precondition_every, root_method=root_method)

    out, diag = list(grads), list(fields[4])
    for i, role in enumerate(roles):
      if role == "diag":
        out[i], diag[i] = diagonal_step(count, grads[i], fields[4][i],
                                        precondition_b2=b2, damping=damping)
    layers = _dense_layers(flat, is_dense)
    for j, i in enumerate(dense):
      bias = layers[roles[i][0]].bias
      precondition_layer(grads, out, i, bias, inv_a[j], inv_g[j])
    if norm_constraint is not None:
      out = constrain_norm(out, grads, norm_constraint)

    def scatter(values, field):
      merged = list(field)
      for j, i in enumerate(dense):
        merged[i] = values[j]
      return statistics.unflatten(merged)

    new_state = KfacPreconditionState(
        count, scatter(new_a, fields[0]), scatter(new_g, fields[1]),
        scatter(inv_a, fields[2]), scatter(inv_g, fields[3]),
        statistics.unflatten(diag))
    return treedef.unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def precondition_layer(grads, out, kernel, bias, inv_a, inv_g):
  """out[kernel], out[bias] ← split(Â⁻¹ [g_W; g_b] Ĝ⁻¹)."""
  g_w = grads[kernel]
  dtype = inv_a.dtype
  v = _sharding.gather(g_w.astype(dtype))
  if bias is not None:
    v = jnp.concatenate([v, _sharding.gather(grads[bias].astype(dtype))[None]], 0)
  u = matmul(matmul(inv_a, v), inv_g)
  out[kernel] = _sharding.reshard_like(u[: g_w.shape[0]].astype(g_w.dtype), g_w)
  if bias is not None:
    g_b = grads[bias]
    out[bias] = _sharding.reshard_like(u[-1].astype(g_b.dtype), g_b)


def constrain_norm(out, grads, norm_constraint):
  """Scales every update by min(1, √(c/⟨u, g⟩)), kfac-jax's norm constraint."""
  inner = sum(jnp.vdot(u.astype(_tree.compute_dtype(u)), g.astype(_tree.compute_dtype(u)))
              for u, g in zip(out, grads))
  # inner <= c gives 1 either way; the max keeps 0·∞ out of the derivative at inner = 0.
  coeff = jnp.minimum(jnp.sqrt(norm_constraint / jnp.maximum(inner, norm_constraint)), 1.0)
  return [(coeff * u).astype(u.dtype) for u in out]
