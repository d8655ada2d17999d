"""AdaBelief against Algorithm 2 of its paper (a NumPy transcription), float64."""

import jax.numpy as jnp
import numpy as np

from gradtx import optimizers as go
from tests.oracles import problems, runners, transcriptions

STEPS = 60
PROBLEM = problems.LogisticProblem(seed=2, steps=STEPS)


def test_adabelief_matches_paper_algorithm_2():
  for kwargs in [dict(eps=1e-16), dict(b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.2)]:
    ours = runners.run_gradtx(
        go.adabelief(0.02, **kwargs), PROBLEM.params0, PROBLEM.grad, STEPS
    )
    ref = transcriptions.adabelief_numpy(
        PROBLEM.params0, PROBLEM.grad, STEPS, 0.02,
        kwargs.get("b1", 0.9), kwargs.get("b2", 0.999), kwargs["eps"],
        kwargs.get("weight_decay", 0.0),
    )
    runners.assert_trajectories_close(ours, ref, 1e-10)


def test_adabelief_eps_sits_inside_the_second_moment():
  """With b1 = 0 the first belief residual g − m_1 is 0, so s_1 = ε exactly.

  Then ŝ_1 = ε/(1 − β2) and u = g/(√ŝ_1 + ε); with ε only outside the root
  (optax's default form) it would be g/ε, 30x larger here.
  """
  eps, b2, g = 1e-2, 0.9, 0.05
  tx = go.adabelief(1.0, b1=0.0, b2=b2, eps=eps)
  params = jnp.zeros(1)
  updates, state = tx.update(jnp.full(1, g), tx.init(params), params)
  np.testing.assert_allclose(state[0].nu, [eps], rtol=1e-6)
  np.testing.assert_allclose(
      updates, [-g / (np.sqrt(eps / (1 - b2)) + eps)], rtol=1e-6
  )
