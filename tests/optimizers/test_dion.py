"""go.dion: rank-k Dion steps on hidden matrices (against the NumPy transcription of
microsoft/dion), AdamW elsewhere, and the same result on an 8-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import transcriptions


def test_trajectory_matches_dion_transcription():
  """W ← W − η (P Qᵀ + λW) for three steps, μ = 0.95, one QR power iteration."""
  rng = np.random.default_rng(3)
  w0 = rng.normal(size=(12, 7))
  grads = [rng.normal(size=(12, 7)) for _ in range(3)]
  lr, wd, mu = 0.05, 0.1, 0.95
  with jax.enable_x64(True):
    tx = go.dion(lr, rank=3, momentum=mu, scale=None, weight_decay=wd)
    params = {"dense": {"kernel": jnp.asarray(w0)}}
    state = tx.init(params)
    q = np.asarray(state.inner_states["dion"].inner_state[0].basis["dense"]["kernel"])[0]
    m, w = np.zeros_like(w0), w0.copy()
    for g in grads:
      u, state = tx.update({"dense": {"kernel": jnp.asarray(g)}}, state, params)
      params = optax.apply_updates(params, u)
      direction, m, q = transcriptions.dion_step(g, m, q, mu)
      w = w - lr * (direction + wd * w)
      np.testing.assert_allclose(params["dense"]["kernel"], w, rtol=1e-10, atol=1e-12)


def test_matrix_view_routes_a_conv_kernel_as_one_matrix():
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8))}}
  tx = go.dion(0.1, rank=2)
  state = tx.init(params)
  basis = state.inner_states["dion"].inner_state[0].basis["conv"]["kernel"]
  assert basis.shape == (1, 8, 2)  # (kh·kw·in, out) = (36, 8): basis on the short side
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
  u, _ = tx.update(grads, state, params)
  assert u["conv"]["kernel"].shape == (3, 3, 4, 8)
  assert bool(jnp.isfinite(u["conv"]["kernel"]).all())


def test_sharded_run_equals_unsharded_on_eight_devices():
  """Explicit 4×2 mesh: gathered, computed whole, resharded like the param."""
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
  rng = np.random.default_rng(5)
  params = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
           for _ in range(3)]
  tx = go.dion(0.1, rank=2)

  def run(params, grads):
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    state = jax.jit(tx.init)(params)
    for g in grads:
      params, state = step(params, state, g)
    return params, state

  expected, _ = run(params, grads)
  specs = {"w": P("x", "y"), "b": P("y")}
  place = lambda t: jax.tree.map(
      lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs)
  with jax.set_mesh(mesh):
    got, state = run(place(params), [place(g) for g in grads])
  assert got["w"].sharding.spec == P("x", "y")
  residuals = [x for x in jax.tree.leaves(state) if x.shape == (16, 8)]
  assert residuals and all(r.sharding.spec == P("x", "y") for r in residuals)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               got, expected)


def test_dion_hidden_matrices_low_rank_others_adamw():
  rng = np.random.default_rng(6)
  params = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(16, 16)), jnp.float32)},
            "embed": {"embedding": jnp.asarray(rng.normal(size=(10, 16)), jnp.float32)},
            "bias": jnp.zeros(16)}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  tx = go.dion(0.1, rank=4, scale=None)
  u, _ = tx.update(grads, tx.init(params), params)
  direction = np.asarray(u["hidden"]["kernel"], np.float64) / -0.1
  sigma = np.linalg.svd(direction, compute_uv=False)
  assert np.sum(sigma > 1e-3) == 4  # a rank-4 update P Qᵀ ...
  # ... with P orthonormal and Q's columns unit: ‖P Qᵀ‖²_F = k.
  np.testing.assert_allclose(np.sum(direction**2), 4.0, rtol=1e-5)
  adamw = go.adamw(0.1, weight_decay=0.0)
  adam, _ = adamw.update(grads, adamw.init(params), params)
  np.testing.assert_allclose(u["embed"]["embedding"], adam["embed"]["embedding"], rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), r"rank must be an integer >= 1 or a fraction in \(0, 1\]"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(adam_b2=1.0), r"adam_b2 must be in \[0, 1\)"),
    (dict(weight_decay=-1.0), r"weight_decay"),
])
def test_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    go.dion(0.1, **kwargs)


def test_is_the_documented_chain_on_hidden_matrices():
  params = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 48).reshape(8, 6)}}
  grads = jax.tree.map(lambda p: jnp.sin(5 * p), params)
  chain = optax.chain(gt.orthogonalize_low_rank(2, momentum=0.95),
                      gt.scale_by_matrix_shape("jordan"),
                      gt.decoupled_weight_decay(0.1), gt.scale_by_learning_rate(0.02))
  expected, _ = chain.update(grads, chain.init(params), params)
  tx = go.dion(0.02, rank=2, weight_decay=0.1)
  got, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(got["dense"]["kernel"], expected["dense"]["kernel"])


def test_float16_parameters_train_with_float32_state():
  """float16 parameters: AdamW's second moment underflows for |g| below ~7.7e-3
  (a step of m̂/ε). ``nu_dtype=float32`` keeps it, and ``mu_dtype=float32``
  keeps Dion's buffer M in float32; the run then follows the float32 one."""
  rng = np.random.default_rng(7)
  params = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(16, 16)), jnp.float32)},
            "bias": jnp.asarray(rng.normal(size=16), jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(1e-3 * rng.normal(size=p.shape), p.dtype), params)
           for _ in range(5)]

  def run(tx, dtype):
    p = jax.tree.map(lambda x: x.astype(dtype), params)
    state = tx.init(p)
    for g in grads:
      u, state = tx.update(jax.tree.map(lambda x: x.astype(dtype), g), state, p)
      p = optax.apply_updates(p, u)
    return p, state

  reference, _ = run(go.dion(1e-3, rank=4), jnp.float32)
  default, _ = run(go.dion(1e-3, rank=4), jnp.float16)
  wide, state = run(go.dion(1e-3, rank=4, mu_dtype=jnp.float32, nu_dtype=jnp.float32),
                    jnp.float16)
  residuals = [x for x in jax.tree.leaves(state) if jnp.shape(x) == (16, 16)]
  assert residuals and all(x.dtype == jnp.float32 for x in residuals)
  assert wide["bias"].dtype == jnp.float16
  err = lambda p: float(jnp.max(jnp.abs(p["bias"].astype(jnp.float32) - reference["bias"])))
  assert err(default) > 1e-2  # v = 0: steps of m̂/ε
  assert err(wide) < 4e-3  # float16 rounding of the parameters only
  np.testing.assert_allclose(wide["hidden"]["kernel"].astype(jnp.float32),
                             reference["hidden"]["kernel"], atol=4e-3)



def test_an_int8_buffer_steps_through_nnx_optimizer_as_through_optax():
  """Under ``nnx.Optimizer`` the 8-bit residual used to be a variable's value:
  written back as an ``nnx.State`` after step 1, step 2 failed ("No attribute
  'dtype' in State"). Now three steps equal the same optimizer's optax steps."""
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.dense_0 = nnx.Linear(64, 80, rngs=rngs)
      self.dense_1 = nnx.Linear(80, 8, rngs=rngs)

    def __call__(self, x):
      return self.dense_1(jnp.tanh(self.dense_0(x)))

  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64)), jnp.float32)
  loss = lambda m: jnp.mean(m(x) ** 2)
  tx = go.dion(0.01, rank=4, mu_dtype=gt.Int8Blocks(min_size=0))
  model = Net(nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = nnx.jit(lambda m, o: o.update(m, nnx.grad(loss)(m)))
  state = tx.init(params)
  graphdef, _ = nnx.split(Net(nnx.Rngs(0)))
  pure_loss = lambda p: loss(nnx.merge(graphdef, p))
  for _ in range(3):
    step(model, optimizer)
    updates, state = tx.update(jax.grad(pure_loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)


def test_a_state_of_another_rank_is_refused_at_update():
  """flax's from_bytes restores any shape: a rank-4 checkpoint in a rank-2
  Dion stepped at rank 4, silently."""
  from flax import serialization
  params = {"dense": {"kernel": jnp.ones((8, 16)), "bias": jnp.zeros(16)}}
  saved = serialization.to_bytes(go.dion(0.01, rank=4).init(params))
  other = go.dion(0.01, rank=2)
  restored = serialization.from_bytes(other.init(params), saved)
  with pytest.raises(ValueError, match=r"basis of \['dense'\]\['kernel'\] has shape \(1, 8, 4\)"
                     r" but rank=2 and the matrix view give \(1, 8, 2\)"):
    other.update(params, restored, params)
