"""The optimizer registry (benchmarks/registry.py): entries at other peaks, the
names the grids and races give them, and the batteries covering its factories."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import char_lm_lr_grid, race_two_lrs, registry
from examples import char_lm
from gradtx import contrib
from gradtx import optimizers as go
from tests.support.cases import CASES, STRUCTURED


def _updates(factory, params, grads, steps: int = 3):
  """The updates of ``steps`` calls at fixed params (so only the lr differs)."""
  tx = factory(100)
  state, updates = tx.init(params), None
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return updates


def test_variant_scales_every_peak_learning_rate():
  """Muon's entry has two schedules: Muon's for the kernel, AdamW's for the bias."""
  params = {"kernel": jnp.full((4, 3), 0.5), "bias": jnp.full((3,), 0.1)}
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(
      p.shape), params)
  base = _updates(registry.OPTIMIZERS["muon"], params, grads)
  doubled = _updates(registry.variant("muon", 2.0), params, grads)
  again = _updates(registry.OPTIMIZERS["muon"], params, grads)  # the factor is gone
  for b, d, a in zip(jax.tree.leaves(base), jax.tree.leaves(doubled), jax.tree.leaves(again)):
    assert np.abs(b).max() > 0
    np.testing.assert_allclose(d, 2 * b, rtol=1e-6)
    np.testing.assert_array_equal(a, b)


def test_lr_grid_names_variants_the_main_job_accepts():
  variants = char_lm_lr_grid.grid(["adamw", "shampoo:block_size=128"], [0.5, 2])
  assert list(variants) == ["adamw@0.5x", "adamw@2x", "shampoo:block_size=128@0.5x",
                            "shampoo:block_size=128@2x"]
  optimizers = {**registry.OPTIMIZERS, **variants}
  config = char_lm.parse_args(["--optimizers", "adamw,shampoo:block_size=128@2x"], optimizers)
  assert config.optimizers == ("adamw", "shampoo:block_size=128@2x")
  assert "adamw@2x" not in registry.OPTIMIZERS
  with pytest.raises(SystemExit):
    char_lm.parse_args(["--optimizers", "adamw@2x"])


def test_two_lrs_items_set_the_matrix_and_adamw_peaks_apart():
  """benchmarks/race_two_lrs.py: ``muon/m1/a3`` is the registry's muon (AdamW side
  at 3x AdamW's peak); ``a`` moves only the AdamW leaves, ``m`` only the matrices."""
  assert race_two_lrs.parse_item("adamuon/m0.75/a4/ns_steps=4") == (
      "adamuon", 0.75, 4.0, {"ns_steps": 4})
  params = {"kernel": jnp.full((4, 3), 0.5), "bias": jnp.full((3,), 0.1)}
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(
      p.shape), params)
  entry = _updates(registry.OPTIMIZERS["muon"], params, grads)
  item = _updates(race_two_lrs.factory("muon/m1/a3"), params, grads)
  adam_half = _updates(race_two_lrs.factory("muon/m1/a1.5"), params, grads)
  matrix_twice = _updates(race_two_lrs.factory("muon/m2/a3"), params, grads)
  for a, b in zip(jax.tree.leaves(entry), jax.tree.leaves(item)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(adam_half["bias"], 0.5 * item["bias"], rtol=1e-6)
  np.testing.assert_array_equal(adam_half["kernel"], item["kernel"])
  np.testing.assert_allclose(matrix_twice["kernel"], 2 * item["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(matrix_twice["bias"], item["bias"])
  # /e<E>: the embeddings on their own AdamW; e30 is the registry's fast_embeddings.
  params = {**params, "embed": {"embedding": jnp.full((5, 3), 0.2)}}
  grads = {**grads, "embed": {"embedding": jnp.sin(jnp.arange(15.0)).reshape(5, 3)}}
  fast = _updates(registry.OPTIMIZERS["adamuon:fast_embeddings"], params, grads)
  item = _updates(race_two_lrs.factory("adamuon/a3/e30"), params, grads)
  slower = _updates(race_two_lrs.factory("adamuon/a3/e15"), params, grads)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(item)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(slower["embed"]["embedding"], 0.5 * item["embed"]["embedding"],
                             rtol=1e-6)
  np.testing.assert_array_equal(slower["kernel"], item["kernel"])
  with pytest.raises(ValueError, match="family must be one of"):
    race_two_lrs.parse_item("lion/m1")
  with pytest.raises(ValueError, match="item option"):
    race_two_lrs.parse_item("muon/x2")


def test_run_label_and_split_factor_read_each_other():
  assert registry.run_label("adamuon", 2.0) == "adamuon@2x"
  assert registry.run_label("adamuon", 1.0) == "adamuon"
  assert registry.split_factor("adamuon@2x") == ("adamuon", 2.0)
  assert registry.split_factor("muon:gram@0.75x") == ("muon:gram", 0.75)
  assert registry.split_factor("adamuon") == ("adamuon", None)
  assert registry.split_factor("muon@.5x") == ("muon", 0.5)
  for factor in (1e-5, 1e6, 123456789.0, 1.41421356, 0.5):  # run_label's {:g} forms read back
    name, read = registry.split_factor(registry.run_label("muon", factor))
    assert name == "muon" and read == float(f"{factor:g}")
  for item in ("muon@0x", "muon@1.5.x", "muon@.x", "muon@-1x", "muon@x", "muon@2"):
    with pytest.raises(ValueError, match="an lr factor is written name@Fx"):
      registry.split_factor(item)


class _Recorder:
  """Stands in for a module: its functions, called, are recorded in ``calls``."""

  def __init__(self, module, calls: set):
    self._module, self._calls = module, calls

  def __getattr__(self, name):
    value = getattr(self._module, name)
    if not callable(value):
      return value

    def call(*args, **kwargs):
      self._calls.add(value)
      return value(*args, **kwargs)

    return call


def test_every_optimizer_factory_of_the_registry_is_in_the_batteries(monkeypatch):
  """tests/support/cases.py's ``CASES`` and ``STRUCTURED`` (integration, non-finite,
  sharding batteries) hold every gradtx optimizer factory an entry builds, so the
  registry cannot name one the batteries do not check. The reverse does not
  hold: the batteries also cover factories no entry uses (ademamix, psgd_kron, ...).
  Wrappers (sam, lookahead, qk_clip: an optimizer, not a learning rate, first)
  are checked in their own test modules."""
  called = set()
  monkeypatch.setattr(registry, "go", _Recorder(go, called))
  monkeypatch.setattr(registry, "contrib", _Recorder(contrib, called))
  for name, entry in registry.OPTIMIZERS.items():
    assert isinstance(entry(10), optax.GradientTransformation), name
  factories = {f for f in called
               if list(inspect.signature(f).parameters)[:1] == ["learning_rate"]}
  assert {go.adamw, go.muon, go.shampoo, contrib.adamuon_lm} <= factories  # recorded
  covered = {case.factory for case in CASES + STRUCTURED}
  missing = sorted(f.__name__ for f in factories - covered)
  assert not missing, f"add a Case to tests/support/cases.py for {missing}"
