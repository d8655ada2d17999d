"""Test-wide set-up: 8 fake CPU devices (for sharding tests) and float64 support.

XLA_FLAGS must be set before jax is first imported, which is why it lives here.
"""

import os
import shutil
import tempfile

import pytest

# The thousands of small programs the tests compile skip LLVM's optimisation
# passes and use XLA:CPU's classic loop emitters instead of its MLIR fusion
# emitters (a third of the compile time of a small optimizer step; XLA's own
# HLO passes run as in any program: the compiled HLO a test reads is the same,
# and XLA:CPU uses no fast-math either way): most of a test's time is
# compiling, not running. Processes that train for long (notebooks) take the
# default back end again (``optimised_xla``).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same small program (one optimizer on one toy tree)
# from a fresh closure, which jax.jit's in-process cache cannot see. XLA's
# persistent cache is keyed by the program itself, so those compile once per
# run. The cache is this run's own folder, made by the first process (the
# pytest-xdist controller) and inherited by its workers and by the
# subprocesses the tests start, and removed at the end: nothing else writes
# to it or evicts from it. It holds executables only: tracing, and every
# assertion, runs as before.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradtx-tests-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def optimised_xla(monkeypatch):
  """Subprocesses started under this fixture compile with LLVM's optimisation."""
  monkeypatch.setenv("XLA_FLAGS", os.environ["XLA_FLAGS"].replace(FAST_COMPILE, ""))


@pytest.fixture(autouse=True)
def fresh_routing_memory(monkeypatch):
  """Each test starts with the routing's process-wide memory empty: no tree's
  axis names met before (``axis_names._MET``) and no ambiguous view or head
  warned of before (``matrix_view._WARNED``, ``roles._WARNED``: one warning per
  leaf and process). A test then passes or fails alone as in any order
  pytest-xdist hands it out."""
  from gradtx.routing import axis_names, matrix_view, roles  # after XLA_FLAGS above

  monkeypatch.setattr(axis_names, "_MET", {})
  monkeypatch.setattr(matrix_view, "_WARNED", set())
  monkeypatch.setattr(roles, "_WARNED", set())


# Modules whose session-scoped fixture is expensive (compiled costs on a mesh,
# a trained example, a built wheel) run whole on one worker, so it is built
# once; every other test is handed out on its own (``--dist loadgroup``'s
# ``xdist_group`` marks would say this, but pytest-xdist 3.8 under pytest 9
# does not group by them: measured, each worker built the fixture).
WHOLE_MODULES = ("tests/test_distributed.py", "tests/test_examples.py", "tests/test_packaging.py")


def pytest_xdist_make_scheduler(config, log):
  if config.getvalue("dist") != "loadgroup":
    return None
  from xdist.scheduler import LoadScopeScheduling

  class WholeModulesElseOneByOne(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      module = nodeid.split("::", 1)[0]
      return module if module in WHOLE_MODULES else nodeid

  return WholeModulesElseOneByOne(config, log)
