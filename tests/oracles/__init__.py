"""Independent references for the gradtx tests, split by kind.

Tests import the module they need: ``from tests.oracles import problems,
runners, torch_runners, transcriptions`` (``kfac_runners`` needs kfac-jax).

* ``problems``: the objectives the trajectories run on (``LogisticProblem``,
  ``LeastSquaresProblem``, ``MlpProblem``, ``quadratic_grads``), and the
  trajectory types: a trajectory is a list of ``{name: np.ndarray}`` parameter
  dicts, the initial point first, then one entry per step.
* ``runners``: the gradtx side and the comparisons: ``run_gradtx`` (float64,
  one jitted step), ``run_quadratic`` (any dtype), ``run_with_grad_fn`` (SAM's
  extra argument), ``run_optax_lookahead``; ``trajectory_errors``,
  ``assert_trajectories_close``, ``max_relative_gap``, ``relative_error``.
* ``torch_runners``: every PyTorch loop, in float64: ``run_torch``
  (``torch.optim``), ``run_adam_mini_official`` (PyPI ``adam-mini``),
  ``run_torch_sam`` (davda54/sam's two steps), ``run_torch_lookahead``
  (Algorithm 1 of Zhang et al. 2019 around a ``torch.optim`` optimizer).
* ``transcriptions``: NumPy transcriptions of papers and reference code:
  Lion, Tiger, signSGD/Signum, AdaBelief, LARS, LAMB, Newton–Schulz and Muon,
  ``inverse_root``, Shampoo's Algorithm 1, SOAP's ``step``, bitsandbytes'
  dynamic map and a brute-force block quantizer (``nearest_codes``), Dion's
  update step (``dion_step``), Kimi K2's QK-Clip (``max_logits``, ``qk_clip``).
* ``kfac_runners``: kfac-jax's ``OptaxPreconditioner`` + SGD on a small tanh
  MLP, in float64 (``run_kfac_jax``, ``problem``, ``forward``, ``loss``).
"""
