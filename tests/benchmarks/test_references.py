"""benchmarks.references: the methods' own implementations load and step on JAX 0.10."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import compile_time, references

# distributed_shampoo asks for float64 matrices, which JAX gives as float32 without x64.
pytestmark = pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64:UserWarning")

PARAMS = {"kernel": jnp.linspace(-1.0, 1.0, 48).reshape(8, 6), "bias": jnp.ones(6)}


@pytest.mark.parametrize("name", list(references.REFERENCES))
def test_reference_steps_move_every_leaf_and_stay_finite(name):
  tx = references.REFERENCES[name](1e-3)
  state = tx.init(PARAMS)
  step = jax.jit(tx.update)
  for _ in range(3):
    updates, state = step(PARAMS, state, PARAMS)
  for leaf in jax.tree.leaves(updates):
    assert np.isfinite(leaf).all() and np.abs(leaf).max() > 0


def test_distributed_shampoo_steps_as_rmsprop_grafted_before_its_roots():
  """Step 1 is the grafted RMSProp step: lr · g / sqrt((1 - β₂) g²), per element
  lr / sqrt(1 - β₂) in the gradient's sign (its Shampoo roots start at step 5)."""
  tx = references.distributed_shampoo(1e-3)
  updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
  grad = np.asarray(PARAMS["kernel"])
  expected = -1e-3 * np.sign(grad) / np.sqrt(1 - 0.999)
  np.testing.assert_allclose(updates["kernel"], expected, rtol=1e-3)


def test_references_mode_compiles_them_next_to_gradtx(capsys, monkeypatch):
  saved = dict(compile_time.OPTIMIZERS)
  try:
    compile_time.main(["--references", "--layers", "1", "--d", "8",
                       "--optimizers", "shampoo", "psgd_kron"])
  finally:
    compile_time.OPTIMIZERS.clear()
    compile_time.OPTIMIZERS.update(saved)
  out = capsys.readouterr().out
  for name in ["optax.adamw", "shampoo", "psgd_kron", *references.REFERENCES]:
    assert f"| {name} |" in out


def test_references_mode_refuses_scanned_layers():
  with pytest.raises(SystemExit):
    compile_time.main(["--references", "--scanned"])


def test_loading_the_references_leaves_jax_as_it_is():
  for factory in references.REFERENCES.values():
    factory(1e-3)
  assert not hasattr(jax, "tree_map")  # given to distributed_shampoo's module only
