"""Adam-mini: Adam with one second moment per block of parameters.

The blocks follow the Hessian's near-block-diagonal structure in
transformers: one block per output neuron of a dense kernel, per attention
head of the query and key projections, per token of an embedding, one per
norm scale, and one per element of a bias. A partition is described by a
``Blocks`` value and chosen per leaf by a rule, a function of
``(path, leaf)``; ``adam_mini_blocks`` is the default.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx._internal import names as _names
from gradtx._internal import routing as _routing
from gradtx._internal import sharding as _sharding
from gradtx._internal import tree as _tree
from gradtx._internal import validate as _validate
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.matrix_view import MatrixViewRule
from gradtx.storage import state_format


@dataclasses.dataclass(frozen=True)
class Blocks:
  """A partition of a leaf into blocks that share one second moment.

  The leaf, reshaped row-major to ``shape``, is averaged over ``axes``: each
  index of the remaining axes is one block, and the state holds one value
  per block, shaped ``shape`` with 1 at ``axes``.

  Attributes:
    shape: a shape with as many elements as the leaf.
    axes: the axes of ``shape`` that lie inside a block.
  """

  shape: tuple[int, ...]
  axes: tuple[int, ...]

  @property
  def nu_shape(self) -> tuple[int, ...]:
    return tuple(1 if i in self.axes else n for i, n in enumerate(self.shape))

  @classmethod
  def per_element(cls, shape: tuple) -> "Blocks":
    """Every element its own block: plain Adam."""
    return cls(tuple(shape), ())

  @classmethod
  def per_tensor(cls, shape: tuple) -> "Blocks":
    """The whole leaf one block."""
    return cls(tuple(shape), tuple(range(len(shape))))

  @classmethod
  def per_index(cls, shape: tuple, axis: int) -> "Blocks":
    """One block per index of ``axis`` (e.g. -1: per output neuron)."""
    axis = axis % len(shape)
    return cls(tuple(shape), tuple(a for a in range(len(shape)) if a != axis))

  @classmethod
  def per_head(cls, shape: tuple, head_dim: int) -> "Blocks":
    """The last axis cut into heads of ``head_dim`` columns; one block each."""
    *rest, width = shape
    view = (*rest, width // head_dim, head_dim)
    return cls(view, tuple(a for a in range(len(view)) if a != len(rest)))


PartitionRule = Callable[[tuple, jax.Array], Blocks]


def adam_mini_blocks(
    path: tuple,
    leaf: jax.Array,
    num_heads: Optional[int] = None,
    *,
    matrix_view: Optional[MatrixViewRule] = None,
) -> Blocks:
  """gradtx's default Adam-mini partition, from a leaf's path and matrix view.

  With the leaf's rows (fan-in) and columns (fan-out) read from its matrix
  view (``gt.flax_matrix_view`` unless ``matrix_view`` is given), in this
  order:

  * leaves without a view (0- and 1-D leaves, biases and norm scales of
    any shape, empty leaves): one block per element when a name on the
    path contains ``"bias"`` (the official code runs Adam on biases) or the
    leaf is empty, else one block for the whole leaf (norm scales), one per
    layer or expert of a stack (its batch axes: ``(layers, norm)`` names);
  * an embedding (a name containing ``"embed"``, ``"embd"``, ``"wte"``,
    ``"wpe"`` or ``"position"``, but not an output head such as
    ``"unembed"``): one block per row, i.e. per token or position;
  * with ``num_heads`` given, query and key projections (a name equal to
    ``q``, ``k``, ``wq`` or ``wk``, or containing ``query``, ``key``,
    ``q_proj``, ``k_proj``, ``qkv``, ``c_attn`` or ``in_proj``): one block
    per head. A view whose columns are (heads, head_dim) axes (flax's
    MultiHeadAttention) gets one block per index of the heads axis; a 2-D
    kernel's columns are cut into heads of fan_in / num_heads columns, so a
    fused (d, 3d) QKV kernel gets 3·heads blocks (its value heads included:
    the paper and the official code give values one block per output
    neuron, but a ``Blocks`` cannot mix the two in one leaf; the official
    code, matching names, would give a fused ``qkv`` one block for the whole
    tensor);
  * everything else (value and output projections, MLPs, output heads,
    convolutions): one block per output neuron, i.e. per column of the
    view. The official code gives a 2-D weight its names do not match one
    block for the whole tensor; this rule is finer.

  Wrap it or write another rule for other layouts, e.g.
  ``lambda path, leaf: gt.Blocks.per_element(leaf.shape)`` is Adam.

  Args:
    path: the leaf's key path (``jax.tree_util`` keys).
    leaf: the parameter (only its shape is used).
    num_heads: attention heads of the query/key projections, or ``None``
      to treat them like any other kernel.
    matrix_view: the matrix-view rule that gives rows and columns.

  Returns:
    The leaf's ``Blocks``.
  """
  shape = tuple(jnp.shape(leaf))
  names = _names.path_names(path)
  view = _matrix_view.view_of(path, leaf, matrix_view)
  if view is None:
    if any("bias" in n for n in names) or 0 in shape:
      return Blocks.per_element(shape)
    batch = _matrix_view.batch_axes(path, leaf, matrix_view)
    return Blocks(shape, tuple(a for a in range(len(shape)) if a not in batch))
  if _names.is_embedding(names):
    return Blocks(shape, view.cols)
  if num_heads and _names.is_query_key(names):
    if len(view.cols) >= 2:
      return Blocks(shape, view.rows + view.cols[1:])
    head_dim = shape[0] // num_heads
    if (len(shape) == 2 and head_dim and shape[0] % num_heads == 0
        and shape[-1] % head_dim == 0):
      return Blocks.per_head(shape, head_dim)
  return Blocks(shape, view.rows)


def _checked_blocks(rule: PartitionRule, path: tuple, leaf: Any) -> Blocks:
  blocks = rule(_routing.plain_path(path), leaf)
  size = int(np.prod(jnp.shape(leaf), dtype=np.int64))
  ndim = len(blocks.shape)
  if (
      int(np.prod(blocks.shape, dtype=np.int64)) != size
      or not all(0 <= a < ndim for a in blocks.axes)
  ):
    raise ValueError(
        f"the Adam-mini partition of {jax.tree_util.keystr(path)} (shape"
        f" {jnp.shape(leaf)}) must view it with the same number of elements"
        f" and name axes of that view, got {blocks}"
    )
  return blocks


def blocked(x: jax.Array, blocks: Blocks) -> jax.Array:
  """``x`` in its partition's view (per-head blocks split an axis).

  On an Explicit mesh a reshape that splits a sharded axis is refused, so
  such a leaf is gathered first (``_sharding``).
  """
  if x.shape == blocks.shape:
    return x
  return _sharding.gather(x).reshape(blocks.shape)


class ScaleByAdamMiniState(NamedTuple):
  """State of ``scale_by_adam_mini``.

  Attributes:
    count: number of updates taken so far (int32 scalar).
    mu: first moment, shaped like the parameters (stored as ``mu_dtype``).
    nu: second moment, one float32 value per block (``Blocks.nu_shape``).
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _block_role(blocks: Blocks) -> str:
  """What ``gt.describe`` shows: '8 blocks of 64' (one second moment each)."""
  count = math.prod(blocks.nu_shape)
  if count == 0:
    return "empty"
  return f"{count} block{'s' if count != 1 else ''} of {math.prod(blocks.shape) // count}"


def scale_by_adam_mini(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    num_heads: Optional[int] = None,
    blocks: Optional[PartitionRule] = None,
    mu_dtype: Optional[Any] = None,
    matrix_view: Optional[MatrixViewRule] = None,
) -> optax.GradientTransformation:
  r"""Adam with a second moment shared by each block of a partition.

  .. math::
    m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
    v_{t,b} = β_2 v_{t-1,b}
      + (1-β_2) \operatorname{mean}_{i \in b} g_{t,i}^2,\\
    u_{t,i} = \frac{m_{t,i}/(1-β_1^t)}{\sqrt{v_{t,b(i)}/(1-β_2^t)} + ε}

  This is the official implementation's (v1.1.1) update, eps outside the
  square root; the bias corrections are ``_tree.bias_correction``'s, as in
  ``scale_by_adam``, so with one block per element it is Adam to a few
  float32 ulps. The second moments then cost one number per block, about
  0.1% of the parameters for a transformer with the default partition, so
  the state is roughly half of Adam's.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator outside the square root, >= 0.
    num_heads: attention heads, for the default partition's per-head query
      and key blocks (see ``adam_mini_blocks``); ``None`` or >= 1.
    blocks: the partition rule, a function of ``(path, leaf)`` returning
      ``Blocks``; default ``adam_mini_blocks`` with ``num_heads``.
    mu_dtype: storage of the first moment, as in ``scale_by_adam``.
    matrix_view: the matrix-view rule of the default partition.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleByAdamMiniState``.
    The second moment is float32; a non-finite gradient makes its whole
    block's second moment non-finite (use ``optax.apply_if_finite``). With
    an ``"int8"`` first moment, coordinates with a non-finite gradient get
    a zero update and a reset first moment, so the codes stay valid.

  Reference: Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain
  More", ICLR 2025 (github.com/zyushun/Adam-mini).
  """
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_non_negative("eps", eps)
  if num_heads is not None:
    num_heads = _validate.check_integer("num_heads", num_heads, 1)
  mu_format = state_format.state_format("mu_dtype", mu_dtype)

  def rule(path, leaf):
    if blocks is None:
      return adam_mini_blocks(path, leaf, num_heads, matrix_view=matrix_view)
    return blocks(path, leaf)

  def partition(tree):
    with _matrix_view.reading(tree):  # Flax axis names, attention modules
      return jax.tree_util.tree_map_with_path(
          lambda path, leaf: _checked_blocks(rule, path, leaf), tree
      )

  def init_fn(params):
    with _matrix_view.reading(params):
      return _init(params)

  def _init(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    _routing.report_per_path([path for path, _ in flat], "roles",
                             [_block_role(_checked_blocks(rule, path, p)) for path, p in flat])
    # Laid out like the parameter on the axes a block keeps (its rows, its
    # elements), so each device holds its share.
    (nu,) = _tree.map_statistics(
        lambda path, p: (_sharding.like_on_kept_axes(jnp.zeros(
            _checked_blocks(rule, path, p).nu_shape,
            _tree.real_dtype(_tree.compute_dtype(p)),
        ), p),),
        1, params, with_path=True,
    )
    return ScaleByAdamMiniState(
        count=jnp.zeros([], jnp.int32),
        mu=state_format.zeros_like_tree(params, mu_format, signed=True),
        nu=nu,
    )

  def update_fn(updates, state, params=None):
    del params
    _validate.check_matching_shapes(updates, state.mu, "scale_by_adam_mini", of="state")
    count = optax.safe_increment(state.count)
    seeds = None
    if state_format.needs_seed(mu_format):
      seeds = state_format.rounding_seeds(updates, count)

    def leaf(g, m, v, b, seed):
      dtype = _tree.compute_dtype(g)
      real = _tree.real_dtype(dtype)
      # 1 − b is formed before the cast: 1 − float32(0.999) is off by 1e-5.
      b1_, b2_ = jnp.asarray(b1, real), jnp.asarray(b2, real)
      c1, c2 = jnp.asarray(1 - b1, real), jnp.asarray(1 - b2, real)
      g_ = g.astype(dtype)
      m_new = b1_ * state_format.load(m, dtype) + c1 * g_
      g2 = _tree.abs_sq(blocked(g_, b))
      block_g2 = jnp.mean(g2, b.axes, keepdims=True)
      v_new = b2_ * v.astype(real) + c2 * block_g2
      quantized = state_format.is_quantized(mu_format)
      if not quantized:  # the step from the moment as stored (stored_and_used)
        m_stored, m_new = state_format.stored_and_used(m_new, m, mu_format, seed)
      m_hat = m_new / _tree.bias_correction(b1, count, dtype)
      v_hat = v_new / _tree.bias_correction(b2, count, dtype)
      denominator = _tree.root(v_hat) + eps
      u = (blocked(m_hat, b) / denominator).reshape(g.shape)
      u = _sharding.reshard_like(u, g)
      if quantized:
        u, m_new = state_format.reset_non_finite(g_, u, m_new)
        m_stored = state_format.store(m_new, m, mu_format, seed)
      return u.astype(g.dtype), m_stored, _sharding.reshard_like(v_new.astype(v.dtype), v)

    u, mu, nu = _tree.map_leaves(
        leaf, 3, updates, state.mu, state.nu, partition(updates), seeds, once_per_shape=True
    )
    return u, ScaleByAdamMiniState(count, mu, nu)

  return keeps_init_names(optax.GradientTransformation(init_fn, update_fn))
