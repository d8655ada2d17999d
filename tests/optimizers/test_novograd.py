"""go.novograd against Algorithm 1 of its paper (NumPy), pytorch_optimizer and optax.

The implementations differ; which of them is the paper's rule:

=========================  ==========  ==============  ==============================
implementation             ε           first step      momentum bracket / decay
=========================  ==========  ==============  ==============================
paper, gradtx, optax       outside √   v₁ = ‖g₁‖²      β₁m + (g/(√v+ε) + λw)
pytorch_optimizer          outside √   v₁ = ‖g₁‖²      same; grad_averaging: ×(1−β₁)
                                                       from step 2 on
OpenSeq2Seq (TF)           inside √    v = 0 tested    same
apex FusedNovoGrad         outside √   v₁ = ‖g₁‖²      β₁m + (1−β₁)g, then m̂/(√v̂+ε)
                                                       + λw with Adam's corrections
=========================  ==========  ==============  ==============================
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import pytorch_optimizer

from gradtx import optimizers as go
from gradtx import transforms as gt
from tests.oracles import problems, runners, torch_runners, transcriptions

STEPS = 60
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)
SETTINGS = [
    dict(),  # optax's defaults: b1 0.9, b2 0.25, eps 1e-6
    dict(b1=0.8, b2=0.5, eps=1e-3, weight_decay=0.1),
]


def _with_defaults(kwargs):
  return dict(dict(b1=0.9, b2=0.25, eps=1e-6, weight_decay=0.0), **kwargs)


@pytest.mark.parametrize("kwargs", SETTINGS, ids=["defaults", "betas_eps_decay"])
def test_matches_paper_algorithm_1(kwargs):
  """Measured: ≤ 2e-15 relative on the parameters, 5e-15 on the steps."""
  ours = runners.run_gradtx(go.novograd(0.05, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  ref = transcriptions.novograd_numpy(
      PROBLEM.params0, PROBLEM.grad, STEPS, 0.05, **_with_defaults(kwargs))
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


@pytest.mark.parametrize("kwargs", SETTINGS, ids=["defaults", "betas_eps_decay"])
def test_matches_pytorch_optimizer(kwargs):
  """pytorch_optimizer.NovoGrad at its grad_averaging=False (its default)."""
  k = _with_defaults(kwargs)
  make_torch = lambda p: pytorch_optimizer.NovoGrad(
      p.values(), lr=0.05, betas=(k["b1"], k["b2"]), eps=k["eps"],
      weight_decay=k["weight_decay"], foreach=False)
  runners.assert_trajectories_close(
      *torch_runners.run_gradtx_and_torch(go.novograd(0.05, **kwargs), make_torch, PROBLEM, STEPS),
      TOLERANCE)


@pytest.mark.parametrize("kwargs", SETTINGS, ids=["defaults", "betas_eps_decay"])
def test_matches_optax_novograd(kwargs):
  ours = runners.run_gradtx(go.novograd(0.05, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(
      optax.novograd(0.05, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  runners.assert_trajectories_close(ours, theirs, TOLERANCE)


def test_pytorch_optimizers_grad_averaging_is_a_dampened_momentum():
  """grad_averaging=True scales the bracket by 1 − β₁ from the second step on
  (torch SGD's dampening): not go.novograd's rule, but its chain with
  ``gt.momentum(b1, dampening=b1)`` (the gap: the steps differ ~10x)."""
  b1, b2, wd = 0.9, 0.5, 0.1
  make_torch = lambda p: pytorch_optimizer.NovoGrad(
      p.values(), lr=0.05, betas=(b1, b2), weight_decay=wd, grad_averaging=True,
      foreach=False)
  averaged = optax.chain(
      gt.scale_by_novograd(b2=b2), gt.decoupled_weight_decay(wd),
      gt.momentum(b1, dampening=b1), gt.scale_by_learning_rate(0.05))
  ours, ref = torch_runners.run_gradtx_and_torch(averaged, make_torch, PROBLEM, STEPS)
  runners.assert_trajectories_close(ours, ref, TOLERANCE)
  paper = runners.run_gradtx(
      go.novograd(0.05, b1=b1, b2=b2, eps=1e-8, weight_decay=wd),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  assert runners.trajectory_errors(paper, ref)["updates"] > 1.0


def test_zero_gradients_decay_through_the_momentum():
  """With g = 0 the bracket is λw: the first step is −ηλw (as AdamW's), the
  next ones carry β₁ times the previous bracket too."""
  eta, wd, b1 = 0.1, 0.5, 0.9
  tx = go.novograd(eta, b1=b1, weight_decay=wd)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  u1, state = tx.update(jnp.zeros(2), state, params)
  p1 = params + u1
  u2, _ = tx.update(jnp.zeros(2), state, p1)
  np.testing.assert_allclose(u1, -eta * wd * params, rtol=1e-6)
  np.testing.assert_allclose(u2, -eta * (b1 * wd * params + wd * p1), rtol=1e-6)


def test_cautious_decay_keeps_the_decay_where_the_step_has_the_weights_sign():
  """Step 1: m = g/‖g‖ + λw·[g/‖g‖ · w >= 0] (cautious) or + λw (plain), the
  update −ηm (b1 scales nothing at the first step of a heavy-ball momentum)."""
  rng = np.random.default_rng(4)
  w = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  lr, wd = 0.1, 0.5
  normalized = g / (jnp.linalg.norm(g) + 1e-6)
  agrees = np.asarray(normalized * w) >= 0
  for cautious, decayed in ((False, np.ones_like(agrees)), (True, agrees)):
    tx = go.novograd(lr, weight_decay=wd, cautious_weight_decay=cautious)
    u, _ = tx.update({"w": g}, tx.init({"w": w}), {"w": w})
    np.testing.assert_allclose(u["w"], -lr * (normalized + wd * w * decayed), rtol=1e-5,
                               atol=1e-7)
  assert agrees.any() and not agrees.all()


def test_bad_b1_is_refused_by_name():
  with pytest.raises(ValueError, match=r"b1 must be in \[0, 1\), got 1.5"):
    go.novograd(0.1, b1=1.5)
  with pytest.raises(ValueError, match=r"learning_rate must be"):
    go.novograd(-0.1)
