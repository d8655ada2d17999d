"""SOAP against a transcription of the reference code's step, float64; flax.nnx.

The transform's own checks (first step, eigenbasis) are in
tests/transforms/test_soap.py.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions
from tests.support import helpers

# Integer arguments that fix shapes or the step structure stay static.
SOAP_STATIC = ("precondition_every", "max_precondition_dim")


SOAP_SHAPES = {"w": (6, 6), "v": (4, 12), "b": (6,)}


@pytest.mark.parametrize("refresh", ["qr", "eigh"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_soap_matches_the_reference_code(refresh, weight_decay):
  """30 steps, basis refreshed every 3; v (4×12) has its 12 columns above
  max_precondition_dim = 8 (identity on that side); b is 1-D (plain Adam).

  Square and one-sided matrices keep every statistic full rank, so the
  eigenbases are unique (up to signs, which cancel) and both runs agree to
  round-off. With weight decay the oracle uses gradtx's AdamW decay order
  (see ``go.soap``); the reference order differs by O(η²λ) per step.
  """
  steps = 30
  problem = problems.LeastSquaresProblem(SOAP_SHAPES, steps)
  hyper = dict(b1=0.9, b2=0.95, precondition_b2=0.8, eps=1e-8, weight_decay=weight_decay,
               precondition_every=3, max_precondition_dim=8)
  tx = go.soap(0.01, refresh=refresh, **hyper)
  ours = runners.run_gradtx(tx, problem.params0, problem.grad, steps)
  decay = "adamw" if weight_decay else "reference"
  # The transcription keeps the reference's name for the statistics' decay.
  hyper["shampoo_b2"] = hyper.pop("precondition_b2")
  expected = transcriptions.soap_reference(problem.params0, problem.grad, steps, 0.01,
                                    refresh=refresh, decay=decay, **hyper)
  for theirs, mine in zip(expected, ours):
    for k in SOAP_SHAPES:
      np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-10, atol=1e-12)
  if weight_decay:
    reference_order = transcriptions.soap_reference(
        problem.params0, problem.grad, steps, 0.01, refresh=refresh, **hyper)
    gap = max(np.abs(ours[-1][k] - reference_order[-1][k]).max() for k in SOAP_SHAPES)
    assert 0 < gap < 2e-3


def test_trains_an_nnx_model_in_one_trace_with_injected_hyperparams():
  tx = optax.inject_hyperparams(go.soap, static_args=SOAP_STATIC)(
      learning_rate=3e-2, precondition_every=3)
  x = jnp.arange(12) % 11
  losses, traces, _ = helpers.nnx_train(
      helpers.EmbedClassifier(nnx.Rngs(0)), tx, helpers.EmbedClassifier.loss(x), 25)
  assert traces == 1
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
