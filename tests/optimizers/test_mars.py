"""go.mars_adamw against a NumPy transcription of the official MARS optimizer
(``transcriptions.mars_official``: AGI-Arena/MARS ``MARS(...).step``, its
2-D/other routing and defaults), whole 20-step trajectories of a 2-layer MLP
in float64, MARS-approx and MARS-exact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions

STEPS = 20
PROBLEM = problems.MlpProblem(seed=11, steps=STEPS)


SETTINGS = {
    "defaults": (dict(), dict()),
    "decay_and_own_rate": (dict(weight_decay=0.1, adam_learning_rate=1e-3, gamma=0.1),
                           dict(weight_decay=0.1, lr_1d=1e-3, gamma=0.1)),
}


@pytest.mark.parametrize("exact", [False, True], ids=["approx", "exact"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_the_official_optimizer(setting, exact):
  ours_kwargs, ref_kwargs = SETTINGS[setting]
  tx = go.mars_adamw(3e-3, exact=exact, **ours_kwargs)
  ours = (runners.run_with_grad_fn(tx, PROBLEM) if exact
          else runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grads, STEPS))
  ref = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=3e-3,
                                     is_approx=not exact, **ref_kwargs)
  runners.assert_trajectories_close(ours, ref, 1e-10)
  other = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=3e-3,
                                       is_approx=exact, **ref_kwargs)
  assert runners.trajectory_errors(ours, other)["updates"] > 1e-4


def test_optimize_1d_routes_every_leaf_to_mars():
  tx = go.mars_adamw(3e-3, weight_decay=0.1, is_mars_param=lambda path, leaf: True)
  ours = runners.run_gradtx(tx, PROBLEM.params0, PROBLEM.grads, STEPS)
  ref = transcriptions.mars_official(PROBLEM.params0, PROBLEM.grads, STEPS, lr=3e-3,
                                     weight_decay=0.1, optimize_1d=True)
  runners.assert_trajectories_close(ours, ref, 1e-10)


def test_exact_is_extra_args_and_trains_under_jit_with_a_schedule():
  tx = go.mars_adamw(optax.cosine_decay_schedule(1e-2, 50), exact=True)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in PROBLEM.params0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    grad_fn = jax.grad(lambda p: PROBLEM.loss(p, x, y))
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  first = float(PROBLEM.loss(params, PROBLEM.xs[0], PROBLEM.ys[0]))
  for t in range(STEPS):
    params, state = step(params, state, PROBLEM.xs[t % 2], PROBLEM.ys[t % 2])
  assert float(PROBLEM.loss(params, PROBLEM.xs[0], PROBLEM.ys[0])) < first
  assert step._cache_size() == 1


def test_default_routing_takes_every_matrix_view_and_leaves_biases_to_adamw():
  """Kernels, a 3-D attention projection (in, heads, head_dim), embeddings
  and heads go to MARS (the official code's ≥2-D parameters); biases, a
  2-D (heads, head_dim) attention bias and a norm scale under an embedding's
  name (BERT's ``embeddings/LayerNorm``) to AdamW. The rule by ``ndim == 2``
  sent the projection to AdamW and the 2-D bias to MARS."""
  rng = np.random.default_rng(0)
  shapes = {("dense", "kernel"): (8, 4), ("dense", "bias"): (4,),
            ("attention", "query", "kernel"): (8, 2, 4), ("attention", "query", "bias"): (2, 4),
            ("embed", "embedding"): (10, 8), ("head", "kernel"): (8, 10),
            ("embeddings", "LayerNorm", "scale"): (8,)}  # an embedding's name, no view
  params, grads = {}, {}
  for path, shape in shapes.items():
    for tree in (params, grads):
      node = tree
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = jnp.asarray(rng.normal(size=shape), jnp.float32)
  mars = {("dense", "kernel"), ("attention", "query", "kernel"), ("embed", "embedding"),
          ("head", "kernel")}
  expected_rule = lambda path, leaf: tuple(k.key for k in path) in mars

  def run(tx):  # three steps on different gradients: MARS's correction shows
    state, total = tx.init(params), None
    for t in range(3):
      g = jax.tree.map(lambda x, t=t: jnp.cos(x * (t + 1)), grads)
      u, state = tx.update(g, state, params)
      total = u if total is None else jax.tree.map(jnp.add, total, u)
    return total

  make = lambda **kw: go.mars_adamw(3e-3, gamma=0.5, adam_weight_decay=0.0, **kw)
  default = run(make())
  jax.tree.map(np.testing.assert_array_equal, default, run(make(is_mars_param=expected_rule)))
  by_ndim = run(make(is_mars_param=lambda p, x: x.ndim == 2))
  for part in ("kernel", "bias"):
    gap = np.abs(by_ndim["attention"]["query"][part] - default["attention"]["query"][part])
    assert gap.max() > 1e-4, part


def test_exact_init_takes_abstract_leaves_as_every_init_does():
  """MARS-exact copies the parameters at init: on jax.ShapeDtypeStruct leaves
  that copy failed (float() of a ShapeDtypeStruct); it is zeros now, shaped
  as eval_shape's init."""
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3, jnp.bfloat16)}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  tx = go.mars_adamw(0.01, exact=True)
  signature = lambda t: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), t)
  assert signature(tx.init(abstract)) == signature(jax.eval_shape(tx.init, params))


def test_exact_init_on_abstract_sharded_leaves_keeps_their_sharding():
  mesh = jax.make_mesh((1,), ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x", None))
  abstract = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sharding)}
  state = go.mars_adamw(0.01, exact=True).init(abstract)
  copies = [x for x in jax.tree.leaves(state) if jnp.shape(x) == (8, 4)]
  assert copies and all(x.sharding == sharding for x in copies)
