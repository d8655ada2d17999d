"""Test-wide set-up: 8 fake CPU devices (for sharding tests) and float64 support.

XLA_FLAGS must be set before jax is first imported, which is why it lives here.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same small program (one optimizer on one toy tree)
# from a fresh closure, which jax.jit's in-process cache cannot see. XLA's
# persistent cache is keyed by the program itself, so those compile once per
# run and are shared by the pytest-xdist workers and the subprocesses the
# tests start (they inherit these variables). The cache holds executables
# only: tracing, and every assertion, runs as before.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "gradtx-tests-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2**30))  # least recently used go
