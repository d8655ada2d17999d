"""AdaMax, RAdam, Yogi and ADOPT against their references, float64, 60 steps.

* AdaMax, RAdam: ``torch.optim.Adamax`` / ``torch.optim.RAdam`` (coupled and,
  for RAdam, ``decoupled_weight_decay=True``).
* ADOPT: the official code (github.com/iShohei220/adopt) transcribed in
  ``transcriptions.adopt_official``; ``optax.contrib.adopt`` and
  pytorch-optimizer's ``ADOPT`` (whose clipping bound is one step later) as
  further checks.
* Yogi: pytorch-optimizer's ``Yogi`` with its first moment started at 0 (the
  paper's m₀; it starts it at ``initial_accumulator``, as optax does).

Agreement is to float64 round-off (1e-12 or better on the steps; RAdam's first
rectified steps, where r_t is small, 3e-12).
"""

import jax.numpy as jnp
import optax
import pytest
import pytorch_optimizer
import torch

from gradtx import optimizers as go
from tests.oracles import problems, runners, torch_runners, transcriptions

STEPS = 60
TOLERANCE = 1e-10
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)


def _zero_first_moment(optimizer, t):
  """pytorch-optimizer's Yogi from m₀ = 0: its state made before step 0, m zeroed."""
  if t == 0:
    for group in optimizer.param_groups:
      optimizer.init_group(group)
    for state in optimizer.state.values():
      state["exp_avg"].zero_()


# name: (gradtx optimizer, torch optimizer, run_torch keyword arguments)
TORCH_CASES = {
    "adamax": (
        lambda: go.adamax(0.05),
        lambda p: torch.optim.Adamax(p.values(), lr=0.05), {}),
    "adamax_betas_eps_weight_decay": (
        lambda: go.adamax(0.05, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.1),
        lambda p: torch.optim.Adamax(p.values(), lr=0.05, betas=(0.8, 0.95), eps=1e-3,
                                     weight_decay=0.1), {}),
    "radam": (
        lambda: go.radam(0.05),
        lambda p: torch.optim.RAdam(p.values(), lr=0.05), {}),
    "radam_betas_eps_weight_decay": (
        lambda: go.radam(0.05, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.1),
        lambda p: torch.optim.RAdam(p.values(), lr=0.05, betas=(0.8, 0.95), eps=1e-3,
                                    weight_decay=0.1), {}),
    "radamw": (
        lambda: go.radamw(0.05, b2=0.9, weight_decay=0.3),
        lambda p: torch.optim.RAdam(p.values(), lr=0.05, betas=(0.9, 0.9), weight_decay=0.3,
                                    decoupled_weight_decay=True), {}),
    "yogi": (
        lambda: go.yogi(0.05),
        lambda p: pytorch_optimizer.Yogi(p.values(), lr=0.05),
        dict(before_step=_zero_first_moment)),
    "yogi_betas_eps_accumulator_weight_decay": (
        lambda: go.yogi(0.05, b1=0.8, b2=0.95, eps=1e-2, initial_accumulator_value=0.01,
                        weight_decay=0.1),
        lambda p: pytorch_optimizer.Yogi(p.values(), lr=0.05, betas=(0.8, 0.95), eps=1e-2,
                                         initial_accumulator=0.01, weight_decay=0.1),
        dict(before_step=_zero_first_moment)),
    # pytorch-optimizer evaluates clip_lambda at the count after the step:
    # shifted by one, its ADOPT is the official one.
    "adopt_pytorch_optimizer_shifted_clip": (
        lambda: go.adopt(0.05),
        lambda p: pytorch_optimizer.ADOPT(p.values(), lr=0.05,
                                          clip_lambda=lambda step: (step - 1) ** 0.25), {}),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch_reference(name):
  make_ours, make_torch, torch_kwargs = TORCH_CASES[name]
  runners.assert_trajectories_close(*torch_runners.run_gradtx_and_torch(
      make_ours(), make_torch, PROBLEM, STEPS, **torch_kwargs), TOLERANCE)


def test_radam_lr_schedule_and_coupled_decay_match_torch():
  factor = lambda t: (1 + t % 3) / (1 + 0.05 * t)
  runners.assert_trajectories_close(*torch_runners.run_gradtx_and_torch(
      go.radam(lambda c: 0.05 * factor(c.astype(jnp.float64)), weight_decay=0.05),
      lambda p: torch.optim.RAdam(p.values(), lr=0.05, weight_decay=0.05),
      PROBLEM, STEPS, lr_lambda=factor), TOLERANCE)


# ADOPT: the official code (a NumPy transcription) -----------------------------

ADOPT_CASES = {
    "defaults": (dict(), dict()),
    "betas_eps_coupled_decay": (dict(b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.1),
                                dict(b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.1)),
    "decoupled_decay": (dict(weight_decay=0.3, decoupled=True),
                        dict(weight_decay=0.3, decouple=True)),
}


@pytest.mark.parametrize("name", list(ADOPT_CASES))
def test_adopt_matches_the_official_code(name):
  ours, theirs = ADOPT_CASES[name]
  factory = go.adoptw if ours.pop("decoupled", False) else go.adopt
  trajectory = runners.run_gradtx(factory(0.05, **ours), PROBLEM.params0, PROBLEM.grad, STEPS)
  reference = transcriptions.adopt_official(PROBLEM.params0, PROBLEM.grad, STEPS, 0.05, **theirs)
  runners.assert_trajectories_close(trajectory, reference, TOLERANCE)


def test_adoptw_schedules_match_the_official_code_per_step_values():
  """η and λ scheduled (the official code's param-group values at step t):
  still no decay at step 1."""
  lr = lambda t: 0.05 / (1 + 0.1 * t)
  wd = lambda t: 0.1 + 0.2 * (t % 2)
  trajectory = runners.run_gradtx(
      go.adoptw(lambda c: lr(c.astype(jnp.float64)), weight_decay=lambda c: wd(c)),
      PROBLEM.params0, PROBLEM.grad, STEPS)
  reference = transcriptions.adopt_official(PROBLEM.params0, PROBLEM.grad, STEPS, lr,
                                            weight_decay=wd, decouple=True)
  runners.assert_trajectories_close(trajectory, reference, TOLERANCE)
  for k, v in PROBLEM.params0.items():
    assert (trajectory[1][k] == v).all()


def test_optax_contrib_adopt_is_the_same_rule():
  runners.assert_trajectories_close(
      runners.run_gradtx(optax.contrib.adopt(0.05), PROBLEM.params0, PROBLEM.grad, STEPS),
      runners.run_gradtx(go.adopt(0.05), PROBLEM.params0, PROBLEM.grad, STEPS), TOLERANCE)


@pytest.mark.parametrize("options", [
    dict(nesterov=True), dict(use_clipping=False),
    dict(nesterov=True, clip_value_fn=lambda count: 0.5 + count**0.5)])
def test_optax_contrib_adopt_options_are_the_same_rule(options):
  """optax's ``nesterov``, ``use_clipping`` and ``clip_value_fn`` (float64)."""
  runners.assert_trajectories_close(
      runners.run_gradtx(optax.contrib.adopt(0.05, **options), PROBLEM.params0,
                         PROBLEM.grad, STEPS),
      runners.run_gradtx(go.adopt(0.05, **options), PROBLEM.params0, PROBLEM.grad, STEPS),
      TOLERANCE)


@pytest.mark.parametrize("options", [dict(nesterov=True), dict(threshold=9.0),
                                     dict(threshold=6.5, nesterov=True)])
def test_optax_radam_options_are_the_same_rule_where_eps_is_zero(options):
  """optax's ``threshold`` and ``nesterov``; at ε = 0 its ε placement is the same
  (float64; it rectifies from ρ_t >= threshold, this from >, equal off ties)."""
  runners.assert_trajectories_close(
      runners.run_gradtx(optax.radam(0.05, eps=0.0, **options), PROBLEM.params0,
                         PROBLEM.grad, STEPS),
      runners.run_gradtx(go.radam(0.05, eps=0.0, **options), PROBLEM.params0, PROBLEM.grad,
                         STEPS), TOLERANCE)


def test_pytorch_optimizer_adopt_departs_from_the_official_code():
  """Its clipping bound t^¼ (the count after the step; the official code's is
  (t−1)^¼, 1 at the second step) makes a 2% gap over 60 steps; its decoupled
  decay also acts at the first step, where the official code moves nothing."""
  reference = transcriptions.adopt_official(PROBLEM.params0, PROBLEM.grad, STEPS, 0.05)
  theirs = torch_runners.run_torch(
      lambda p: pytorch_optimizer.ADOPT(p.values(), lr=0.05), PROBLEM.params0, PROBLEM.grad,
      STEPS)
  assert runners.trajectory_errors(theirs, reference)["params"] > 1e-2
  decayed = torch_runners.run_torch(
      lambda p: pytorch_optimizer.ADOPT(p.values(), lr=0.05, weight_decay=0.3,
                                        weight_decouple=True), PROBLEM.params0, PROBLEM.grad, 1)
  for k, v in PROBLEM.params0.items():
    assert (decayed[1][k] != v).all()


# The documented differences from optax -------------------------------------


def test_optax_radam_adds_eps_to_the_corrected_root():
  """optax's ε on √v̂ instead of torch's on √v: 2e-6 apart on the steps at
  ε = 1e-8, 0.2 at ε = 1e-3 (gradients of 0.01-0.1)."""
  gaps = []
  for eps in (1e-8, 1e-3):
    theirs = runners.run_gradtx(optax.radam(0.05, eps=eps), PROBLEM.params0, PROBLEM.grad,
                                STEPS)
    reference = torch_runners.run_torch(
        lambda p, eps=eps: torch.optim.RAdam(p.values(), lr=0.05, eps=eps),
        PROBLEM.params0, PROBLEM.grad, STEPS)
    gaps.append(runners.trajectory_errors(theirs, reference)["updates"])
  assert 1e-7 < gaps[0] < 1e-5 and gaps[1] > 1e-2, gaps


def test_optax_adamax_is_torchs_rule():
  """optax.adamax puts ε inside the maximum too: the same steps as torch."""
  runners.assert_trajectories_close(
      runners.run_gradtx(optax.adamax(0.05), PROBLEM.params0, PROBLEM.grad, STEPS),
      torch_runners.run_torch(lambda p: torch.optim.Adamax(p.values(), lr=0.05),
                              PROBLEM.params0, PROBLEM.grad, STEPS), TOLERANCE)


def test_adamaxw_is_optax_adamaxw():
  runners.assert_trajectories_close(
      runners.run_gradtx(go.adamaxw(0.05, weight_decay=0.3), PROBLEM.params0, PROBLEM.grad,
                         STEPS),
      runners.run_gradtx(optax.adamaxw(0.05, weight_decay=0.3), PROBLEM.params0, PROBLEM.grad,
                         STEPS), TOLERANCE)


def test_optax_yogi_is_pytorch_optimizers_from_the_shared_start():
  """optax.yogi and pytorch-optimizer's Yogi agree (m₀ = v₀ = 1e-6); gradtx's
  m₀ = 0 is 3e-4 away from both on the steps here."""
  theirs = runners.run_gradtx(optax.yogi(0.05), PROBLEM.params0, PROBLEM.grad, STEPS)
  reference = torch_runners.run_torch(
      lambda p: pytorch_optimizer.Yogi(p.values(), lr=0.05), PROBLEM.params0, PROBLEM.grad,
      STEPS)
  runners.assert_trajectories_close(theirs, reference, TOLERANCE)
  ours = runners.run_gradtx(go.yogi(0.05), PROBLEM.params0, PROBLEM.grad, STEPS)
  assert 1e-5 < runners.trajectory_errors(ours, reference)["updates"] < 1e-3
