"""Internals shared by ``gradtx.transforms`` and ``gradtx.optimizers``.

Not public API: argument validation (``validate``), tree and dtype helpers
(``tree``), mesh helpers (``sharding``) and the parameter-name lists that
routing and partition rules share (``names``).
"""
