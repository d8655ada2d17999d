"""The methods' own JAX reference implementations, to time next to gradtx (optional).

    pip install -e ".[references]"
    python -m benchmarks.compile_time --references --layers 12 48 --step-rounds 3

* ``psgd_jax.kron``: psgd-jax 0.2.9 (Evan Walters' PSGD Kron, the code that
  ``gt.scale_by_psgd_kron`` follows), at its defaults.
* ``distributed_shampoo``: precondition-opt 0.3.0 (google-research/precondition,
  Anil et al.'s distributed Shampoo), set as gradtx's ``go.shampoo`` defaults
  are: blocks of 256, momentum 0.9 without Nesterov, statistics decay 0.999,
  roots every 10 steps, RMSProp grafting (gradtx's ``"adam"`` grafting is the
  same with bias correction).

Both were written for older JAX and optax. Two shims, applied on loading, let
them import on JAX 0.10 and optax 0.2.8 without changing any computation:
psgd-jax imports ``optax._src.clipping``, which optax no longer has (its kron
uses nothing from it): the shim is a module holding optax's
``clip_by_global_norm``, which is what the other psgd-jax optimizers take from
it. distributed_shampoo calls ``jax.tree_map``, ``jax.tree_flatten`` and
``jax.tree_unflatten``, removed in JAX 0.6: its module's ``jax`` is given
them as their ``jax.tree`` replacements (jax itself is not changed).
"""

import importlib
import sys
import types
from typing import Callable

import jax
import optax

INSTALL = 'pip install -e ".[references]"'


def _needs(module: str):
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(f"{module} is not installed: {INSTALL}") from error


def _shim_optax_clipping() -> None:
  if "optax._src.clipping" not in sys.modules:
    clipping = types.ModuleType("optax._src.clipping")
    clipping.clip_by_global_norm = optax.clip_by_global_norm
    sys.modules["optax._src.clipping"] = clipping
    optax._src.clipping = clipping


def psgd_jax_kron(learning_rate: float) -> optax.GradientTransformation:
  """psgd-jax's ``kron`` at its defaults."""
  _shim_optax_clipping()
  return _needs("psgd_jax.kron").kron(learning_rate)


# What distributed_shampoo calls by its pre-0.6 names.
_JAX_TREE_ALIASES = {
    "tree_map": jax.tree.map, "tree_flatten": jax.tree.flatten,
    "tree_unflatten": jax.tree.unflatten,
}


class _JaxWithOldTreeNames:
  """``jax`` as distributed_shampoo's module sees it: the old tree names added,
  everything else jax's own (the ``jax`` module itself is left as it is)."""

  def __getattr__(self, name):
    return _JAX_TREE_ALIASES[name] if name in _JAX_TREE_ALIASES else getattr(jax, name)


def distributed_shampoo(learning_rate: float) -> optax.GradientTransformation:
  """precondition-opt's ``distributed_shampoo``, set as ``go.shampoo``'s defaults are."""
  shampoo = _needs("precondition.distributed_shampoo")
  shampoo.jax = _JaxWithOldTreeNames()
  return shampoo.distributed_shampoo(
      learning_rate, block_size=256, beta1=0.9, beta2=0.999, nesterov=False,
      preconditioning_compute_steps=10, graft_type=shampoo.GraftingType.RMSPROP)


REFERENCES: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "psgd_jax.kron": psgd_jax_kron,
    "distributed_shampoo": distributed_shampoo,
}
