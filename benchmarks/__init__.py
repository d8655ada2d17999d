"""Speed and memory measurements, run from the repository root as
``python -m benchmarks.<script>`` (see benchmarks/README.md).

``harness`` holds what every script shares (the donated step, the shuffled
round-robin timer, the machine banner, the tables), ``workloads`` the
parameter trees they time.
"""
