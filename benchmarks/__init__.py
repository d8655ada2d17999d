"""Speed and memory measurements, run from the repository root as
``python -m benchmarks.<script>`` (see benchmarks/README.md).

``harness`` holds what every script shares (the donated step, the shuffled
round-robin timer, the machine banner, the tables), ``workloads`` the
parameter trees they time. ``registry`` holds the main job's named optimizer
entries (``examples/char_lm.py``, the race, the suite and the tests share
them), ``race`` the main job's race over lr factors and seeds, and
``device_cost`` its mesh layout and per-device cost.
"""
