"""The AdamW side of a matrix optimizer: its routing, its arguments declared once.

Muon and the optimizers built like it update the hidden matrices with their
own rule and every other leaf with AdamW (``AdamWSide``); which leaf is which
is ``gradtx.routing.roles``' rule.
"""

import dataclasses
import inspect
import re
from typing import Any, Callable, Optional

import jax
import optax

from gradtx._internal import routing as _routing
from gradtx._internal import validate as _validate
from gradtx.routing import axis_names as _axes
from gradtx.routing import matrix_view as _matrix_view
from gradtx.routing.axis_names import keeps_init_names
from gradtx.routing.roles import PathLeafRule, matrix_roles
from gradtx.transforms.learning_rate import scale_by_learning_rate
from gradtx.transforms.second_moment import scale_by_adam
from gradtx.transforms.weight_decay import MaskOrFn, decoupled_weight_decay


def _checked(tx: optax.GradientTransformation, label: str) -> optax.GradientTransformation:
  """``tx`` whose update names a gradient tree that does not match the
  parameters (``optax.multi_transform`` raises JAX's bare pytree error)."""

  def update_fn(updates, state, params=None, **extra_args):
    _validate.check_matching_shapes(updates, params, f"{label} (with AdamW beside it)")
    return tx.update(updates, state, params, **extra_args)

  return type(tx)(tx.init, update_fn)


@dataclasses.dataclass(frozen=True)
class AdamWSide:
  r"""The AdamW that a matrix optimizer gives the leaves its matrix rule does not take.

  .. math::
    p \leftarrow p - η_{\text{adam}}\left(\frac{\hat m_t}{\sqrt{\hat v_t} + ε}
      + λ_{\text{adam}}\, p\right)

  (``torch.optim.AdamW``'s rule: ``gt.scale_by_adam``,
  ``gt.decoupled_weight_decay`` and ``gt.scale_by_learning_rate``). The
  fields are the keyword arguments, under the same names, of every optimizer
  with an AdamW side (``go.muon``, ``go.dion``, ``go.normuon``, ...); those
  factories document them from here. Values are checked when the side is
  built.

  Attributes:
    adam_learning_rate: η of the AdamW leaves, a non-negative number or a
      schedule; ``None``: the matrix rule's ``learning_rate`` (right for an
      AdamW-sized matrix step such as Muon's ``scale="moonlight"``; with
      ``scale="jordan"`` set an AdamW-sized one).
    adam_b1: AdamW's b1, in [0, 1).
    adam_b2: AdamW's b2, in [0, 1).
    adam_eps: AdamW's eps, >= 0.
    adam_weight_decay: AdamW's decoupled λ, >= 0, or a schedule; ``None``:
      the matrix rule's ``weight_decay``.
    embedding_learning_rate: η of the embeddings among the AdamW leaves
      (token tables, learned positions: the names ``is_hidden_matrix`` keeps
      off the matrices, not output heads), a non-negative number or a
      schedule; they get the same AdamW at that rate. ``None``: they are
      AdamW leaves like the others. Embeddings often learn best at a far
      larger rate than the rest (modded-nanogpt's speedrun gives its
      embedding one; measured: see benchmarks/RESULTS.md, "Fourth quadrant").
    mu_dtype: storage of AdamW's first moment.
    nu_dtype: storage of AdamW's second moment.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gradtx import transforms as gt
    >>> side = gt.AdamWSide(adam_learning_rate=1e-3, adam_b2=0.95)
    >>> tx = side.around("matrix", optax.sgd(0.02), lambda path, leaf: leaf.ndim == 2,
    ...                  learning_rate=0.02, weight_decay=0.0)
    >>> params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
    >>> u, _ = tx.update(params, tx.init(params), params)
    >>> round(float(u["w"][0, 0]), 6), round(float(u["b"][0]), 6)
    (-0.02, -0.001)

  Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
  ICLR 2019; Jordan et al., "Muon: An optimizer for hidden layers in neural
  networks", 2024 (AdamW on every leaf that is not a hidden matrix).
  """

  adam_learning_rate: Optional[optax.ScalarOrSchedule] = None
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  adam_weight_decay: Optional[optax.ScalarOrSchedule] = None
  embedding_learning_rate: Optional[optax.ScalarOrSchedule] = None
  mu_dtype: Optional[Any] = None
  nu_dtype: Optional[Any] = None

  def __post_init__(self):
    _validate.check_decay("adam_b1", self.adam_b1)
    _validate.check_decay("adam_b2", self.adam_b2)
    _validate.check_non_negative("adam_eps", self.adam_eps)
    for name in ("adam_learning_rate", "adam_weight_decay", "embedding_learning_rate"):
      if getattr(self, name) is not None:
        _validate.check_scalar_or_schedule(name, getattr(self, name))

  def adamw(
      self, learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule,
      mask: MaskOrFn = None,
  ) -> optax.GradientTransformation:
    """AdamW at ``learning_rate`` (``adam_learning_rate`` when given) with
    ``adam_weight_decay`` (``None``: ``weight_decay``) on the ``mask`` leaves."""
    return self._adamw(
        learning_rate if self.adam_learning_rate is None else self.adam_learning_rate,
        weight_decay, mask)

  def _adamw(self, rate, weight_decay, mask):
    return optax.chain(
        scale_by_adam(self.adam_b1, self.adam_b2, self.adam_eps,
                      mu_dtype=self.mu_dtype, nu_dtype=self.nu_dtype),
        decoupled_weight_decay(
            weight_decay if self.adam_weight_decay is None else self.adam_weight_decay, mask),
        scale_by_learning_rate(rate),
    )

  def around(
      self, label: str, inner: optax.GradientTransformation,
      is_inner_param: Optional[PathLeafRule], *,
      learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule,
      mask: MaskOrFn = None, matrix_view: Optional[_matrix_view.MatrixViewRule] = None,
      heads: Optional[optax.GradientTransformation] = None,
  ) -> optax.GradientTransformation:
    """``inner`` on the leaves ``is_inner_param`` picks, this AdamW on the others.

    One ``optax.multi_transform`` labelled ``label`` / ``"adam"`` (and
    ``"embedding"``: the embeddings' AdamW, with ``embedding_learning_rate``;
    ``"output_head"``: ``heads``). ``is_inner_param=None`` routes by
    ``is_hidden_matrix`` with ``matrix_view`` (axis names first: the tree's
    own, or those of ``gt.matrix_view_from_axes``), and sends a (d, vocab)
    kernel that no axis names settle to AdamW as an output head when the tree
    holds a (vocab, d) token embedding. ``heads``, when given, updates the
    output heads that have a matrix view (``matrix_roles``'s
    ``"output_head"``) instead of AdamW. ``learning_rate`` and
    ``weight_decay`` are the matrix rule's (the defaults of
    ``adam_learning_rate`` and ``adam_weight_decay``); ``mask`` picks the
    AdamW leaves that get the decay.
    """
    transforms = {label: inner, "adam": self.adamw(learning_rate, weight_decay, mask)}
    if self.embedding_learning_rate is not None:
      transforms["embedding"] = self._adamw(self.embedding_learning_rate, weight_decay, mask)
    if heads is not None:
      transforms["output_head"] = heads

    def label_of(path, leaf, role):
      if (role == "hidden" if is_inner_param is None
          else is_inner_param(_routing.plain_path(path), leaf)):
        return label
      return role if role in transforms else "adam"

    def labels(params):
      roles = matrix_roles(params, matrix_view=matrix_view)
      with _axes.reading(params), _axes.using(getattr(matrix_view, "axis_names", None)):
        return jax.tree_util.tree_map_with_path(label_of, params, roles)

    return _checked(keeps_init_names(optax.multi_transform(transforms, labels)), label)

  @staticmethod
  def document(factory: Callable) -> Callable:
    """Fills a factory's ``adam_*`` line under ``Args:`` with the entries above
    of the AdamW-side arguments it takes and does not document itself."""
    marker = _MARKER.search(factory.__doc__)
    indent = marker.group(1)
    taken = inspect.signature(factory).parameters  # through a decorator's wrapper
    entries = [
        (name, text) for name, text in
        _ENTRY.findall(AdamWSide.__doc__.split("Attributes:")[1].split("Example:")[0])
        if name in taken and not re.search(rf"^{indent}{name}:", factory.__doc__, re.M)]
    filled = "".join(f"{indent}{name}:{text}".replace("\n      ", f"\n{indent}  ")
                     for name, text in entries)
    factory.__doc__ = (factory.__doc__[:marker.start()] + filled.rstrip("\n")
                       + factory.__doc__[marker.end():])
    return factory


# An Args entry: a name at four spaces, then its text and continuation lines.
_ENTRY = re.compile(r"^    (\w+):(.*\n(?:      .*\n)*)", re.M)
# The line a factory's docstring names the AdamW side by.
_MARKER = re.compile(r"^( +)adam_\*.*$", re.M)
