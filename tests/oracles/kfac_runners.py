"""kfac-jax (DeepMind, PyPI ``kfac-jax==0.0.8``) as the K-FAC oracle.

``run_kfac_jax`` trains a small tanh MLP with kfac-jax's own
``OptaxPreconditioner`` (``estimation_mode="fisher_empirical"``: the factors
come from the data's gradients, as gradtx's records do) followed by SGD, in
float64, and returns the trajectory, the preconditioned gradients and the
estimated factors of every step. The MLP, its loss and its mini-batches are
defined here so that gradtx's side of a test runs the same problem.

kfac-jax 0.0.8 predates jax 0.10, where ``Primitive.get_bind_params``
returns the parameters alone instead of ``(subfuns, params)``; ``_compat``
patches the one function of kfac-jax that calls it.
"""


import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

SIZES = (4, 6, 3)
BATCH = 16
STEPS = 8


def _compat():
  import kfac_jax
  from kfac_jax._src import tag_graph_matcher

  def eval_jaxpr_eqn(eqn, in_values):
    bind = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
    with jex.source_info_util.user_context(eqn.source_info.traceback):
      out = eqn.primitive.bind(*subfuns, *in_values, **params)
    return out if isinstance(out, list) else [out]

  tag_graph_matcher.eval_jaxpr_eqn = eval_jaxpr_eqn
  return kfac_jax


def problem(seed=0, with_generic=False):
  """Initial params (float64 numpy) and the STEPS mini-batches (x, y)."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:])):
    params[f"l{i}"] = {"kernel": rng.normal(size=(m, n)) / np.sqrt(m),
                       "bias": 0.1 * rng.normal(size=(n,))}
  if with_generic:
    params["gain"] = 0.3 * rng.normal(size=(SIZES[1],))
  xs = rng.normal(size=(STEPS, BATCH, SIZES[0]))
  ys = rng.normal(size=(STEPS, BATCH, SIZES[-1]))
  return params, xs, ys


def forward(params, x, taps=None):
  """The MLP; ``taps`` (zeros) added to each dense output, for δ = ∂L/∂y."""
  taps = taps or {}
  inputs, h = {}, x
  names = sorted(k for k in params if k.startswith("l"))
  for i, name in enumerate(names):
    inputs[name] = h
    z = h @ params[name]["kernel"] + params[name]["bias"] + taps.get(name, 0.0)
    if i + 1 < len(names):
      h = jnp.tanh(z)
      if "gain" in params and i == 0:
        h = h * jnp.exp(params["gain"])
    else:
      h = z
  return h, inputs


def loss(params, x, y, taps=None):
  """Mean over the batch of the summed squared error (kfac-jax's convention)."""
  out, _ = forward(params, x, taps)
  return jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def run_kfac_jax(params, xs, ys, *, damping, ema, inverse_every, lr,
                 norm_constraint=None):
  """kfac-jax's preconditioner + SGD: (params, preconditioned grads, factors) per step."""
  kfac_jax = _compat()

  def value_func(p, batch):
    x, y = batch
    out, _ = forward(p, x)
    kfac_jax.register_squared_error_loss(out, y)
    return jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

  with jax.enable_x64(True):
    pre = kfac_jax.OptaxPreconditioner(
        value_func, damping=damping, curvature_ema=ema,
        estimation_mode="fisher_empirical", norm_constraint=norm_constraint,
        inverse_update_period=inverse_every, distributed_inverses=False,
        distributed_precon_apply=False)
    p = jax.tree.map(jnp.asarray, params)
    state = pre.init((p, (xs[0], ys[0])), jax.random.PRNGKey(0))

    @jax.jit
    def step(p, state, x, y):
      state = pre.maybe_update_estimator_curvature(
          state, (p, (x, y)), jax.random.PRNGKey(1), sync=False)
      state = pre.maybe_update_inverse_cache(state)
      grads = jax.grad(value_func)(p, (x, y))
      u = pre.apply(grads, state)
      factors = [tuple(f.value for f in b.factors)
                 for b in state.estimator_state.blocks_states
                 if hasattr(b, "factors")]
      p = jax.tree.map(lambda w, d: w - lr * d, p, u)
      return p, pre.increment_count(state), u, factors

    trajectory, preconditioned, factors = [params], [], []
    for x, y in zip(xs, ys):
      p, state, u, f = step(p, state, x, y)
      trajectory.append(jax.tree.map(np.asarray, p))
      preconditioned.append(jax.tree.map(np.asarray, u))
      factors.append(jax.tree.map(np.asarray, f))
  return trajectory, preconditioned, factors
