"""gradtx.contrib's recipes: each is the reference optimizer it names, at its settings."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradtx import contrib
from gradtx import optimizers as go
from tests.oracles import runners


def test_adamuon_lm_is_adamuon_at_its_ratios():
  """10 float64 steps of a tree with an embedding, a hidden matrix, a head and a
  bias under a schedule: the hidden matrix follows go.adamuon's Gram AdaMuon (its
  rule is tested above against the reference code); the head and bias follow
  optax.adamw at 1.5x the schedule (b2 0.99, no decay), the embedding optax.adamw
  at 15x."""
  rng = np.random.default_rng(4)
  params = {"embed": {"embedding": rng.standard_normal((9, 4))},
            "block": {"kernel": rng.standard_normal((4, 6)) * 0.3},
            "head": {"kernel": rng.standard_normal((6, 9)) * 0.3},
            "bias": rng.standard_normal(6)}
  grads = [jax.tree.map(lambda p, t=t: np.cos((t + 1) * p), params) for t in range(10)]
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 10, 1e-3)

  def run(tx, keys):
    with jax.enable_x64(True):
      p = {k: jnp.asarray(params[k]) if k == "bias" else jax.tree.map(jnp.asarray, params[k])
           for k in keys}
      state = tx.init(p)
      for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, {k: g[k] for k in keys}), state, p)
        p = optax.apply_updates(p, updates)
      return p

  everything = list(params)
  ours = run(contrib.adamuon_lm(schedule), everything)
  rate = lambda k: runners.at_int64_counts(lambda count: k * schedule(count))
  matrix = run(go.adamuon(schedule, method="gram"), ["block"])
  side = run(optax.adamw(rate(1.5), b2=0.99, weight_decay=0.0), ["head", "bias"])
  embedding = run(optax.adamw(rate(15.0), b2=0.99, weight_decay=0.0), ["embed"])
  np.testing.assert_allclose(ours["block"]["kernel"], matrix["block"]["kernel"], rtol=1e-12)
  for key, expected in (("head", side), ("bias", side), ("embed", embedding)):
    np.testing.assert_allclose(jax.tree.leaves(ours[key]), jax.tree.leaves(expected[key]),
                               rtol=1e-12)
  assert not np.allclose(ours["embed"]["embedding"], params["embed"]["embedding"], atol=0.05)


def test_the_old_name_is_the_recipe_with_a_deprecation_warning():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    old = go.adamuon_lm
    from gradtx.optimizers import adamuon_lm
  assert old is adamuon_lm is contrib.adamuon_lm
  assert len(caught) >= 2 and {w.category for w in caught} == {DeprecationWarning}
  assert "gradtx.contrib.adamuon_lm" in str(caught[0].message)
  assert "adamuon_lm" not in go.__all__
