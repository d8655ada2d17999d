"""Programs a user runs: ``char_lm`` (the main job) and ``quickstart`` (the README example).

A package so that the benchmarks import the main job's model, corpus, training
step and optimizer registry (``from examples import char_lm``), from the
repository root. The wheel does not ship it.
"""
