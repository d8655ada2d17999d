"""go.acprop against the official code's step (NumPy transcription) and optax.

Where the implementations differ (pytorch_optimizer 4.1 has no ACProp):

==================  ===============  =========  ====================================
implementation      residual         ε default  options
==================  ===============  =========  ====================================
paper, official     g_t − m_t        1e-16 (1)  rectify (default on, off in main.py),
                                                momentum_update, amsgrad, L2 or
                                                decoupled decay
gradtx              g_t − m_t        1e-8 (1)   amsgrad, decoupled decay
optax.contrib       g_t − m_{t−1}    1e-16      decoupled decay
==================  ===============  =========  ====================================

(1) The class's default is 1e-16; its experiments (main.py, README) use 1e-8.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions

STEPS = 60
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)
SETTINGS = [
    dict(),
    dict(b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
    dict(b1=0.5, b2=0.9, weight_decay=0.05, amsgrad=True),
]
IDS = ["defaults", "betas_eps_decay", "amsgrad_decay"]


def _official(params0, grad_fn, steps, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
              amsgrad=False):
  """The official step at go.acprop's defaults (decoupled decay)."""
  return transcriptions.acprop_official(params0, grad_fn, steps, lr, betas=(b1, b2), eps=eps,
                                        weight_decay=weight_decay, amsgrad=amsgrad)


@pytest.mark.parametrize("kwargs", SETTINGS, ids=IDS)
def test_matches_the_official_step(kwargs):
  """Decoupled decay p ← p(1 − ηλ) (the class's ``weight_decouple=True``).
  Measured: ≤ 3e-15 relative on the parameters, 2e-14 on the steps."""
  ours = runners.run_gradtx(go.acprop(0.05, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  ref = _official(PROBLEM.params0, PROBLEM.grad, STEPS, 0.05, **kwargs)
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


def test_matches_the_official_step_on_an_mlp_with_a_schedule():
  """A tanh MLP (gradients of many sizes) and a decaying η, which scales the
  decoupled decay too."""
  problem = problems.MlpProblem(steps=25)
  schedule = optax.linear_schedule(0.02, 0.002, transition_steps=20)
  ours = runners.run_gradtx(
      go.acprop(runners.at_int64_counts(schedule), weight_decay=0.1),
      problem.params0, problem.grads, 25)
  in_float64 = lambda t: 0.02 - 0.018 * min(t, 20) / 20  # the schedule, read as gradtx's
  ref = _official(problem.params0, problem.grads, 25, in_float64, weight_decay=0.1)
  runners.assert_trajectories_close(ours, ref, TOLERANCE)


def test_optax_contrib_acprop_takes_other_steps():
  """optax centers by m_{t−1} (``gt.scale_by_acprop``'s docstring): at equal
  ε the trajectories part by tens of percent, and optax's is not the
  official code's."""
  kwargs = dict(eps=1e-8)
  ours = runners.run_gradtx(go.acprop(0.05, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS)
  theirs = runners.run_gradtx(optax.contrib.acprop(0.05, eps=1e-8, eps_root=1e-8),
                              PROBLEM.params0, PROBLEM.grad, STEPS)
  ref = _official(PROBLEM.params0, PROBLEM.grad, STEPS, 0.05, **kwargs)
  assert runners.trajectory_errors(ours, ref)["updates"] < TOLERANCE
  assert runners.trajectory_errors(theirs, ref)["updates"] > 0.05


def test_zero_gradients_leave_the_decoupled_decay():
  eta, wd = 0.1, 0.5
  tx = go.acprop(eta, weight_decay=wd)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update(jnp.zeros(2), state, params)
    np.testing.assert_allclose(u, -eta * wd * params, rtol=1e-6)
    params = params + u


def test_cautious_decay_keeps_the_decay_where_the_step_has_the_weights_sign():
  """First step: u = −η(g + λp·[g·p ≥ 0])."""
  eta, wd = 0.1, 0.5
  params = jnp.array([1.0, -2.0, 3.0, -4.0])
  g = jnp.array([0.5, 0.5, -0.5, -0.5])
  tx = go.acprop(eta, weight_decay=wd, cautious_weight_decay=True)
  u, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(u, -eta * (g + wd * params * jnp.array([1, 0, 0, 1])),
                             rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(b1=1.5), r"b1 must be in \[0, 1\), got 1.5"),
    (dict(eps=-1.0), r"eps must be in \[0, inf\)"),
    (dict(weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
  with pytest.raises(ValueError, match=message):
    go.acprop(0.1, **kwargs)


def test_a_negative_learning_rate_is_refused():
  with pytest.raises(ValueError, match=r"learning_rate must be in \[0, inf\)"):
    go.acprop(-0.1)
