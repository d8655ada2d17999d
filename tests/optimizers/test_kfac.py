"""go.kfac: the K-FAC preconditioner, then momentum, decoupled decay and the
learning rate; the preconditioner itself is matched against kfac-jax in
tests/transforms/test_kfac.py, and go.kfac through nnx.Optimizer in
tests/optimizers/test_nnx_records.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx import transforms as gt


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                      "bias": jnp.zeros(2)},
            "scale": jnp.ones(2)}
  batches = []
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    record = gt.DenseRecord(jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                            jnp.asarray(rng.normal(size=(5, 2)), jnp.float32))
    batches.append((grads, gt.Records({"dense": record}, {})))
  return params, batches


@pytest.mark.parametrize("nesterov", [False, True])
def test_is_the_documented_chain(nesterov):
  params, batches = _problem()
  kwargs = dict(damping=1e-2, precondition_b2=0.9, precondition_every=2)
  tx = go.kfac(0.1, momentum=0.8, nesterov=nesterov, weight_decay=0.1, **kwargs)
  chain = optax.chain(gt.kfac_precondition(**kwargs),
                      gt.momentum(0.8, nesterov=nesterov),
                      gt.decoupled_weight_decay(0.1), gt.scale_by_learning_rate(0.1))
  state, ref_state, p, ref_p = tx.init(params), chain.init(params), params, params
  for grads, records in batches:
    u, state = tx.update(grads, state, p, records=records)
    v, ref_state = chain.update(grads, ref_state, ref_p, records=records)
    p, ref_p = optax.apply_updates(p, u), optax.apply_updates(ref_p, v)
  jax.tree.map(np.testing.assert_array_equal, p, ref_p)


def test_bf16_momentum_storage_and_one_trace():
  params, batches = _problem(1)
  tx = go.kfac(0.1, mu_dtype=jnp.bfloat16)
  traces = []

  @jax.jit
  def step(p, state, grads, records):
    traces.append(1)
    u, state = tx.update(grads, state, p, records=records)
    return optax.apply_updates(p, u), state

  state = tx.init(params)
  for grads, records in batches:
    params, state = step(params, state, grads, records)
  assert len(traces) == 1
  assert state[1].mu["dense"]["kernel"].dtype == jnp.bfloat16
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))


def test_validation():
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
    go.kfac(0.1, momentum=1.0)
  with pytest.raises(ValueError, match=r"damping must be in \(0, inf\)"):
    go.kfac(0.1, damping=0.0)
