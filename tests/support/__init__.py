"""Shared test code that is not a reference oracle (those are in tests/oracles).

* ``helpers``: the small fixtures (``PARAMS``, ``GRADS``), eager and jitted
  step loops (``run_steps``, ``jit_updates``), tree predicates
  (``floating_leaves``, ``bit_identical``, ``all_finite``), the 8-device mesh
  (``make_mesh``), a flax.nnx training loop (``nnx_train``) and state sizes
  (``gpt_tree``, ``state_bytes``).
* ``cases``: the optimizer registry (``Case``, ``CASES``, ``STRUCTURED``) that
  every cross-cutting battery (tests/test_integration.py, test_non_finite.py,
  test_sharding.py) runs over, and the jitted steps they share. A new
  optimizer joins every battery with one line there.
"""
