"""Programs a user runs: ``char_lm`` (the main job) and ``quickstart`` (the README example).

A package so that the benchmarks import the main job's model, corpus and
training step (``from examples import char_lm``), from the repository root; its
optimizer registry is benchmarks/registry.py. The wheel does not ship it.
"""
