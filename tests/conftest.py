"""Test-wide set-up: 8 fake CPU devices (for sharding tests) and float64 support.

XLA_FLAGS must be set before jax is first imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
