"""nnx_records.value_grad_and_records: the records are the layers' own inputs and
output gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go
from tests.oracles import transcriptions as tq


class MLP(nnx.Module):
  def __init__(self, rngs, norm=False):
    self.l0 = nnx.Linear(3, 5, rngs=rngs)
    self.norm = nnx.BatchNorm(5, rngs=rngs) if norm else None
    self.l1 = nnx.Linear(5, 2, use_bias=False, rngs=rngs)

  def __call__(self, x):
    h = self.l0(x)
    h = h if self.norm is None else self.norm(h)
    return self.l1(jnp.tanh(h))


def _loss(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def _batch(seed=0, shape=(4, 6)):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(*shape, 3)), jnp.float32),
          jnp.asarray(rng.normal(size=(*shape, 2)), jnp.float32))


def test_records_are_inputs_and_output_gradients():
  model = MLP(nnx.Rngs(0))
  x, y = _batch()
  loss, grads, records = go.value_grad_and_records(_loss)(model, x, y)
  ref_loss, ref_grads = nnx.value_and_grad(_loss)(model, x, y)
  assert float(loss) == float(ref_loss)
  jax.tree.map(np.testing.assert_array_equal, grads, ref_grads)
  assert set(records.dense) == {"l0", "l1"} and records.max_logits == {}

  # An independent functional replica with its own taps.
  p = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  def replica(taps):
    z0 = x @ p["l0"]["kernel"] + p["l0"]["bias"] + taps[0]
    h = jnp.tanh(z0)
    out = h @ p["l1"]["kernel"] + taps[1]
    return jnp.mean((out - y) ** 2), (x, h)
  taps = (jnp.zeros((4, 6, 5)), jnp.zeros((4, 6, 2)))
  deltas, inputs = jax.grad(replica, has_aux=True)(taps)
  for name, a, d in zip(("l0", "l1"), inputs, deltas):
    np.testing.assert_allclose(records.dense[name].inputs, a, rtol=1e-6)
    np.testing.assert_allclose(records.dense[name].output_grads, d, rtol=1e-5, atol=1e-9)
  # ∇W = Σ a δᵀ over every position.
  kernel = jnp.einsum("bti,bto->io", records.dense["l1"].inputs,
                      records.dense["l1"].output_grads)
  np.testing.assert_allclose(kernel, ref_grads["l1"]["kernel"][...], rtol=1e-5, atol=1e-8)


def test_other_state_is_written_back_like_nnx_value_and_grad():
  x, y = _batch(1)
  ours, theirs = MLP(nnx.Rngs(0), norm=True), MLP(nnx.Rngs(0), norm=True)
  go.value_grad_and_records(_loss)(ours, x, y)
  nnx.value_and_grad(_loss)(theirs, x, y)
  stats = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, stats(ours), stats(theirs))
  assert not np.allclose(stats(ours)["norm"]["mean"], 0.0)


def test_a_layer_called_twice_is_an_error():
  model = MLP(nnx.Rngs(0))
  twice = lambda m, x: jnp.sum(m.l0(m.l0(x)[..., :3]))
  with pytest.raises(ValueError, match="'l0' was called twice"):
    go.value_grad_and_records(twice)(model, _batch()[0])


@pytest.mark.parametrize("is_causal", [False, True])
def test_max_logits_with_masks_match_numpy(is_causal):
  rng = np.random.default_rng(2)
  q, k = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 5, 3, 4))
  padding = rng.uniform(size=(2, 1, 1, 5)) > 0.3
  got = go.max_logits(jnp.asarray(q), jnp.asarray(k), mask=jnp.asarray(padding),
                      is_causal=is_causal)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
  valid = padding & (np.tril(np.ones((5, 5), bool)) if is_causal else True)
  expected = np.where(valid, logits, -np.inf).max(axis=(0, 2, 3))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  if not is_causal:
    assert not np.allclose(expected, tq.max_logits(q, k, causal=True))


def test_kfac_through_nnx_optimizer_under_jit_equals_functional_optax():
  tx = go.kfac(0.1, damping=1e-2, precondition_every=2)
  model = MLP(nnx.Rngs(0))
  graphdef, params0 = nnx.split(model, nnx.Param)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer, x, y):
    traces.append(1)
    loss, grads, records = go.value_grad_and_records(_loss)(model, x, y)
    optimizer.update(model, grads, records=records)
    return loss

  @jax.jit
  def functional(params, state, x, y):
    loss, grads, records = go.value_grad_and_records(_loss)(
        nnx.merge(graphdef, params), x, y)
    grads = nnx.to_pure_dict(grads)
    updates, state = tx.update(grads, state, params, records=records)
    return optax.apply_updates(params, updates), state, loss

  params = nnx.to_pure_dict(params0)
  state = tx.init(params)
  for _ in range(3):
    loss = step(model, optimizer, *_batch(0))
    params, state, ref_loss = functional(params, state, *_batch(0))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert len(traces) == 1
  assert float(loss) < 0.9 * float(_loss(MLP(nnx.Rngs(0)), *_batch(0)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)


class Attention(nnx.Module):
  def __init__(self, rngs):
    self.inp = nnx.Linear(3, 8, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8,
                                       decode=False, rngs=rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(self.attn(self.inp(x), mask=nnx.make_causal_mask(x[..., 0])))


def test_sharded_data_parallel_step_equals_unsharded():
  """Batch on 'data', the output kernel on 'model' (Explicit 4×2 mesh)."""
  x, y = _batch(3, shape=(8, 6))
  tx = lambda: go.qk_clip(go.kfac(0.05, damping=1e-2), threshold=1.0)

  def step(model, optimizer, x, y):
    loss, grads, records = go.value_grad_and_records(_loss)(model, x, y)
    optimizer.update(model, grads, records=records)
    return loss, records.max_logits["attn"]

  def train(mesh):
    model = Attention(nnx.Rngs(0))
    xs, ys = x, y
    if mesh is not None:
      state = nnx.state(model)
      state["out"]["kernel"].value = jax.device_put(
          state["out"]["kernel"].value, NamedSharding(mesh, P("model", None)))
      nnx.update(model, state)
      xs, ys = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, y))
    optimizer = nnx.Optimizer(model, tx(), wrt=nnx.Param)
    jitted = nnx.jit(step)
    out = [jitted(model, optimizer, xs, ys) for _ in range(2)]
    return model, out

  model, reference = train(None)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    sharded, out = train(mesh)
  assert sharded.out.kernel.value.sharding.spec == P("model", None)
  assert reference[0][1].max() > 1.0  # the clip acted
  for (loss, logits), (ref_loss, ref_logits) in zip(out, reference):
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               nnx.to_pure_dict(nnx.state(sharded, nnx.Param)),
               nnx.to_pure_dict(nnx.state(model, nnx.Param)))


class RematAttention(Attention):
  """``Attention`` with its attention layer under ``nnx.remat``."""

  def __call__(self, x):
    mask = nnx.make_causal_mask(x[..., 0])
    h = nnx.remat(lambda attn, h: attn(h, mask=mask))(self.attn, self.inp(x))
    return self.out(h)


class ScannedAttention(nnx.Module):
  """Two attention layers stacked with ``nnx.scan`` between two Linears."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(3, 8, rngs=rngs)

    @nnx.split_rngs(splits=2)
    @nnx.vmap
    def layers(rngs):
      return nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8,
                                    decode=False, rngs=rngs)

    self.layers = layers(rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    mask = nnx.make_causal_mask(x[..., 0])

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def body(attn, h):
      return attn(h, mask=mask)

    return self.out(body(self.layers, self.inp(x)))


@pytest.mark.parametrize("make", [RematAttention, ScannedAttention])
def test_attention_under_an_nnx_transform_is_left_out_not_leaked(make):
  """Inside ``nnx.remat`` or ``nnx.scan`` the attention runs on a copy: its
  logits are not recorded (they used to leak the inner trace's values into
  the records: UnexpectedTracerError); the layers outside are, and the
  gradient is ``nnx.grad``'s."""
  x, y = _batch()
  model = make(nnx.Rngs(0))
  loss, grads, records = nnx.jit(
      lambda m, x, y: go.value_grad_and_records(_loss)(m, x, y))(model, x, y)
  assert set(records.dense) == {"inp", "out"} and not records.max_logits
  expected_loss, expected = nnx.jit(nnx.value_and_grad(_loss))(model, x, y)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               nnx.to_pure_dict(grads), nnx.to_pure_dict(expected))


class _OwnCallAttention(nnx.MultiHeadAttention):
  """An attention with its own ``__call__`` (the rotary pattern): it calls
  ``self.attention_fn`` on q, k, v it computes itself."""

  def __call__(self, x, mask=None):
    q, k, v = self.query(x), self.key(x), self.value(x)
    return self.out(self.attention_fn(q, k, v, mask=mask))


def test_an_attention_with_its_own_call_is_recorded():
  """The observed attention function falls back to the module it belongs to
  when no ``MultiHeadAttention.__call__`` names the caller: its max logits
  are numpy's of its q and k."""
  attn = _OwnCallAttention(num_heads=2, in_features=8, qkv_features=8, decode=False,
                           rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 8)), jnp.float32)
  _, _, records = go.value_grad_and_records(lambda m, x: jnp.sum(m(x) ** 2))(attn, x)
  q, k = np.asarray(attn.query(x)), np.asarray(attn.key(x))
  expected = np.einsum("bqhd,bkhd->bhqk", q, k).max(axis=(0, 2, 3)) / np.sqrt(q.shape[-1])
  np.testing.assert_allclose(records.max_logits[""], expected, rtol=1e-5)


def test_an_attention_called_twice_records_the_largest_logit_of_both_calls():
  """A shared attention block's S_max is over the whole pass (Kimi K2's
  QK-clip): the second call on a small input used to overwrite the first's
  large logits, and QK-clip skipped heads far above τ."""
  attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False,
                                rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 8)), jnp.float32)
  twice = lambda m, x: jnp.sum(m(0.01 * m(x)))
  _, _, records = go.value_grad_and_records(twice)(attn, x)

  def logits(inputs):
    q, k = np.asarray(attn.query(inputs)), np.asarray(attn.key(inputs))
    return np.einsum("bqhd,bkhd->bhqk", q, k).max(axis=(0, 2, 3)) / np.sqrt(q.shape[-1])

  first, second = logits(x), logits(0.01 * attn(x))
  assert np.all(first > second)
  np.testing.assert_allclose(records.max_logits[""], np.maximum(first, second), rtol=1e-5)


class _InnerTransform(nnx.Module):
  def __init__(self, rngs, how):
    self.inner = nnx.Linear(3, 3, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=1, in_features=3, qkv_features=4,
                                       decode=False, rngs=rngs)
    self.out = nnx.Linear(3, 2, rngs=rngs)
    self.how = how

  def __call__(self, x):
    block = lambda h: self.attn(self.inner(h))
    if self.how == "checkpoint":
      h = jax.checkpoint(block)(x)
    elif self.how == "cond":
      h = jax.lax.cond(True, block, lambda h: h, x)
    else:
      h = jax.lax.scan(lambda c, _: (block(c), None), x, None, length=1)[0]
    return self.out(h)


@pytest.mark.parametrize("how", ["checkpoint", "cond", "scan"])
def test_layers_inside_a_jax_transformation_are_left_out_with_a_warning(how):
  """A layer called inside ``jax.checkpoint``, ``lax.cond`` or ``lax.scan``
  within the pass used to store that transformation's tracers in the records
  (UnexpectedTracerError, or records that failed at first use): it is left out,
  with a warning naming it, and the gradient is ``nnx.value_and_grad``'s."""
  x, y = _batch()
  model = _InnerTransform(nnx.Rngs(0), how)
  with pytest.warns(UserWarning, match="'inner' ran inside a JAX transformation"):
    loss, grads, records = go.value_grad_and_records(_loss)(model, x, y)
  assert set(records.dense) == {"out"} and not records.max_logits
  np.testing.assert_allclose(records.dense["out"].inputs.shape, (4, 6, 3))
  expected_loss, expected = nnx.value_and_grad(_loss)(model, x, y)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               nnx.to_pure_dict(grads), nnx.to_pure_dict(expected))
