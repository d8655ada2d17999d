"""qk_clip against a NumPy transcription of Kimi K2's Algorithm 1
(``tests.oracles.transcriptions.qk_clip``)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import transcriptions as tq

HEADS, WIDTH, LENGTH = 4, 16, 6
TAU = 30.0


class Attention(nnx.Module):
  """in → nnx.MultiHeadAttention (causal) → out."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(3, WIDTH, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
        num_heads=HEADS, in_features=WIDTH, qkv_features=WIDTH, decode=False,
        bias_init=nnx.initializers.normal(0.5), rngs=rngs)
    self.out = nnx.Linear(WIDTH, 2, rngs=rngs)

  def __call__(self, x):
    h = self.inp(x)
    return self.out(self.attn(h, mask=nnx.make_causal_mask(x[..., 0])))


class FusedBlock(nnx.Module):
  """The main job's layout: one (d, 3d) qkv Linear, heads (3, H, d/H)."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(3, WIDTH, rngs=rngs)
    self.qkv = nnx.Linear(WIDTH, 3 * WIDTH, rngs=rngs,
                          bias_init=nnx.initializers.normal(0.5))
    self.out = nnx.Linear(WIDTH, 2, rngs=rngs)

  def __call__(self, x):
    b, n, _ = x.shape
    heads = self.qkv(self.inp(x)).reshape(b, n, 3, HEADS, -1)
    q, k, v = heads[:, :, 0], heads[:, :, 1], heads[:, :, 2]
    go.observe_attention(self, q, k, is_causal=True)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(out.reshape(b, n, WIDTH))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(5, LENGTH, 3)), jnp.float32),
          jnp.asarray(rng.normal(size=(5, LENGTH, 2)), jnp.float32))


def _loss(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


_recorded = nnx.jit(lambda model, x, y: go.value_grad_and_records(_loss)(model, x, y))


def _force_large_logits(model, factor):
  """Heads 0 and 2 get q and k scaled by ``factor`` each: logits × factor²."""
  def scale(w, axis):
    index = [slice(None)] * w.ndim
    for h in (0, 2):
      if axis is None:  # fused qkv features (3, H, dh)
        dh = WIDTH // HEADS
        for part in (0, 1):
          index[-1] = slice(part * WIDTH + h * dh, part * WIDTH + (h + 1) * dh)
          w = w.at[tuple(index)].multiply(factor)
      else:
        index[axis] = h
        w = w.at[tuple(index)].multiply(factor)
    return w
  if isinstance(model, Attention):
    for layer in (model.attn.query, model.attn.key):
      layer.kernel.value = scale(layer.kernel.value, -2)
      layer.bias.value = scale(layer.bias.value, -2)
  else:
    model.qkv.kernel.value = scale(model.qkv.kernel.value, None)
    model.qkv.bias.value = scale(model.qkv.bias.value, None)


def _qk_numpy(model, params, x):
  """(q, k) of the attention in NumPy, float64, from ``params``."""
  h = np.asarray(x, np.float64) @ params["inp"]["kernel"] + params["inp"]["bias"]
  if isinstance(model, Attention):
    a = params["attn"]
    q = np.einsum("bld,dhk->blhk", h, a["query"]["kernel"]) + a["query"]["bias"]
    k = np.einsum("bld,dhk->blhk", h, a["key"]["kernel"]) + a["key"]["bias"]
    return q, k
  qkv = (h @ params["qkv"]["kernel"] + params["qkv"]["bias"]).reshape(
      *h.shape[:2], 3, HEADS, -1)
  return qkv[:, :, 0], qkv[:, :, 1]


def _numpy_clip(model, params, s_max):
  """K2's clip applied to a float64 copy of ``params``."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  if isinstance(model, Attention):
    a = p["attn"]
    (a["query"]["kernel"], a["key"]["kernel"], a["query"]["bias"],
     a["key"]["bias"]) = tq.qk_clip(a["query"]["kernel"], a["key"]["kernel"], s_max,
                                   TAU, a["query"]["bias"], a["key"]["bias"])
    return p
  heads = lambda w: w.reshape(*w.shape[:-1], 3, HEADS, -1)
  w, b = heads(p["qkv"]["kernel"]), heads(p["qkv"]["bias"])
  w[..., 0, :, :], w[..., 1, :, :], b[0], b[1] = tq.qk_clip(
      w[..., 0, :, :], w[..., 1, :, :], s_max, TAU, b[0], b[1])
  p["qkv"]["kernel"], p["qkv"]["bias"] = w.reshape(WIDTH, -1), b.reshape(-1)
  return p


def _pure(state):
  return nnx.to_pure_dict(state)


@jax.jit
def _clipped_and_base_updates(grads, params, records, learning_rate):
  base = go.muon(learning_rate)
  tx = go.qk_clip(base, threshold=TAU)
  u, state = tx.update(grads, tx.init(params), params, records=records)
  u_base, _ = base.update(grads, base.init(params), params)
  return u, u_base, state


@pytest.mark.parametrize("model_cls", [Attention, FusedBlock])
def test_matches_k2_algorithm_and_caps_the_logits(model_cls):
  model = model_cls(nnx.Rngs(0))
  _force_large_logits(model, 6.0)
  x, y = _batch()
  _, grads, records = _recorded(model, x, y)
  params = nnx.state(model, nnx.Param)
  p = _pure(params)
  q, k = _qk_numpy(model, p, x)
  s_max = tq.max_logits(q, k)
  key = "attn" if model_cls is Attention else ""
  np.testing.assert_allclose(records.max_logits[key], s_max, rtol=1e-5)
  clipped = s_max > TAU
  assert clipped.tolist() == [True, False, True, False], s_max

  for learning_rate in (1e-3, 1e-6):
    u, u_base, state = _clipped_and_base_updates(grads, params, records, learning_rate)
    assert isinstance(state, go.QkClipState)
    u, u_base = _pure(u), _pure(u_base)
    got = jax.tree.map(np.add, p, u)
    expected = _numpy_clip(model, jax.tree.map(np.add, p, u_base), s_max)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6),
                 got, expected)
    # Recomputed on the same batch: clipped heads at γ_h times the logits of
    # the base's new weights, S'_h τ/S_h (the published algorithm reads S_h
    # from the step's own forward pass); the others exactly the base's.
    after = tq.max_logits(*_qk_numpy(model, got, x))
    base_after = tq.max_logits(*_qk_numpy(model, jax.tree.map(np.add, p, u_base), x))
    print(learning_rate, s_max, base_after, after)
    np.testing.assert_allclose(after[clipped], TAU * base_after[clipped] / s_max[clipped],
                               rtol=1e-5)
    np.testing.assert_allclose(after[~clipped], base_after[~clipped], rtol=1e-6)
    if learning_rate == 1e-3:  # the step itself moved the logits by ~0.2-0.3%
      assert np.abs(after[clipped] / TAU - 1).max() > 1e-3
    else:  # a step small against the forced weights: capped at τ
      assert np.all(after[clipped] <= TAU * (1 + 1e-5))


def test_unclipped_heads_and_leaves_are_bit_identical():
  model = FusedBlock(nnx.Rngs(1))
  _force_large_logits(model, 6.0)
  x, y = _batch(1)
  _, grads, records = _recorded(model, x, y)
  params = nnx.state(model, nnx.Param)
  base = go.adamw(1e-2)
  tx = go.qk_clip(base, threshold=TAU)
  u, u_base = jax.jit(lambda g, p, r: (tx.update(g, tx.init(p), p, records=r)[0],
                                       base.update(g, base.init(p), p)[0]))(
      grads, params, records)
  u, u_base = _pure(u), _pure(u_base)
  dh = WIDTH // HEADS
  same = np.asarray(u["qkv"]["kernel"]) == np.asarray(u_base["qkv"]["kernel"])
  columns = same.all(axis=0).reshape(3, HEADS, dh).all(axis=-1)
  assert columns.tolist() == [[False, True, False, True]] * 2 + [[True] * 4]
  for name in ("inp", "out"):
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(u[name][leaf], u_base[name][leaf])


def test_with_nnx_optimizer_under_jit():
  model = Attention(nnx.Rngs(2))
  _force_large_logits(model, 6.0)
  optimizer = nnx.Optimizer(model, go.qk_clip(go.muon(1e-3), threshold=TAU),
                            wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer, x, y):
    traces.append(1)
    loss, grads, records = go.value_grad_and_records(_loss)(model, x, y)
    optimizer.update(model, grads, records=records)
    return loss, records.max_logits["attn"]

  logits = []
  for _ in range(3):  # the same batch: the clip bounds the batch it saw
    _, s = step(model, optimizer, *_batch(0))
    logits.append(np.asarray(s))
  assert len(traces) == 1
  # Head 0 starts far above τ; the next forward pass sees it clipped to ≈ τ.
  assert logits[0][0] > 2 * TAU and logits[1][0] < 1.05 * TAU


def test_missing_record_and_params_are_errors():
  model = Attention(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  tx = go.qk_clip(go.sgd(0.1))
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"needs a max-logit record.*no records"):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match=r"needs params"):
    tx.update(params, state)
  with pytest.raises(ValueError, match=r"threshold must be in \(0, inf\)"):
    go.qk_clip(go.sgd(0.1), threshold=0.0)
  with pytest.raises(ValueError, match="base must be an optax.GradientTransformation"):
    go.qk_clip(None)


def test_a_tree_with_no_query_or_key_warns_that_nothing_will_be_clipped():
  """A layout the rule does not know (Linen's auto-named ``Dense_0``, HF's
  ``q_proj``) would train as the base alone, silently: ``init`` says so."""
  tx = go.qk_clip(go.muon(0.02))
  with pytest.warns(UserWarning, match="no leaf of the parameters matches its rule"):
    tx.init({"Dense_0": {"kernel": jnp.ones((4, 12))}})
  with warnings.catch_warnings():
    warnings.filterwarnings("error", message="qk_clip")
    tx.init({"block": {"qkv": {"kernel": jnp.ones((4, 12))}}})


def test_a_fused_qkv_kernel_not_d_by_3d_warns_at_init():
  """Llama's fused layout (q: H·d, k and v: H_kv·d features) was split as
  (3, H, ·): heads above τ stayed there and heads below it were shrunk,
  silently. A fused kernel not (d, 3·d) warns, naming the leaf (a q of
  another width than d, Gemma's, is split right: a warning, not a refusal)."""
  tx = go.qk_clip(go.sgd(0.1))
  gqa = {"block": {"qkv": {"kernel": jnp.ones((16, (4 + 2 * 1) * 4)), "bias": jnp.ones(24)}}}
  with pytest.warns(UserWarning, match=r"fused qkv kernel \['block'\]\['qkv'\]\['kernel'\]"):
    tx.init(gqa)


def test_attention_that_normalises_queries_and_keys_is_refused():
  """With QK-norm the logits do not depend on W_q's and W_k's scale: clipping
  them shrank the weights every step and never lowered a logit."""
  model = nnx.MultiHeadAttention(num_heads=HEADS, in_features=WIDTH, decode=False,
                                 normalize_qk=True, rngs=nnx.Rngs(0))
  for params in ({"attn": nnx.state(model, nnx.Param)}, nnx.state(model, nnx.Param)):
    with pytest.raises(ValueError, match="normalises its queries and keys"):
      go.qk_clip(go.sgd(0.1)).init(params)


@pytest.mark.parametrize("logits", [jnp.ones(3) * 50, jnp.asarray(50.0), jnp.ones(1) * 50])
def test_a_record_with_another_number_of_heads_is_named(logits):
  """Records of 3 heads for 4, a scalar, or 1 head (which broadcast to all 4
  silently) are refused, naming the record and the leaf."""
  model = Attention(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  tx = go.qk_clip(go.sgd(0.1), threshold=TAU)
  records = gt.Records(dense={}, max_logits={"attn": logits})
  with pytest.raises(ValueError, match=r"max-logit record 'attn' has shape .* per query head"):
    tx.update(params, tx.init(params), params, records=records)


def test_max_logits_of_grouped_query_keys():
  """Key heads shared by groups of query heads (GQA, as
  jax.nn.dot_product_attention takes them): each query head against its
  group's key head, in NumPy."""
  rng = np.random.default_rng(3)
  q = rng.normal(size=(2, 5, 8, 4))
  k = rng.normal(size=(2, 5, 2, 4))
  got = go.max_logits(jnp.asarray(q), jnp.asarray(k), is_causal=True)
  k_full = np.repeat(k, 4, axis=-2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k_full) / 2.0
  expected = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf).max(axis=(0, 2, 3))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="8 query heads cannot share 3 key heads"):
    go.max_logits(jnp.asarray(q), jnp.ones((2, 5, 3, 4)))


def test_under_multisteps_the_micro_batches_maximum_clips_as_the_whole_batch():
  """optax.MultiSteps hands the inner update the last micro-step's records
  only (README, Extra update arguments): with the element-wise maximum of the
  micro-batches' max logits the clip is the whole batch's step (to the
  round-off of the accumulated mean); with the last micro-batch's alone, heads only the
  first pushed above τ stay there."""
  import optax
  model = FusedBlock(nnx.Rngs(0))
  _force_large_logits(model, 8.0)
  params = nnx.state(model, nnx.Param)
  (x, y), (x2, y2) = _batch(0), _batch(1)
  small = 0.01 * x2  # its logits stay under τ: only the first micro-batch's exceed it
  _, g1, r1 = _recorded(model, x, y)
  _, g2, r2 = _recorded(model, small, y2)
  assert np.max(r1.max_logits[""]) > TAU > np.max(r2.max_logits[""])
  tx = go.qk_clip(go.adamw(1e-3), threshold=TAU)
  whole = gt.Records(r1.dense, {"": jnp.maximum(r1.max_logits[""], r2.max_logits[""])})
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  u_whole, _ = tx.update(mean, tx.init(params), params, records=whole)

  def accumulated(last_records):
    multi = optax.MultiSteps(tx, every_k_schedule=2)
    state = multi.init(params)
    _, state = multi.update(g1, state, params, records=r1)
    u, _ = multi.update(g2, state, params, records=last_records)
    return u

  np.testing.assert_allclose(accumulated(whole)["qkv"]["kernel"][...],
                             u_whole["qkv"]["kernel"][...], rtol=1e-5, atol=1e-7)
  new = optax.apply_updates(params, accumulated(r2))
  q, k = _qk_numpy(model, _pure(new), x)
  assert np.max(tq.max_logits(q, k, causal=True)) > 2 * TAU
