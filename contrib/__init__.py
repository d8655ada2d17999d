"""gradtx.contrib: experimental recipes, tuned on one benchmark; not defaults.

>>> from gradtx import contrib

A recipe here fixes hyper-parameters that were chosen on one workload (see
each docstring and benchmarks/RESULTS.md). Its evidence is that workload's,
and its name, signature or defaults may change when it is re-evaluated on
others; the reference optimizers are in ``gradtx.optimizers``.
"""

from gradtx.contrib.lm_recipes import adamuon_lm

__all__ = ["adamuon_lm"]
