"""gradtx as it was at another git revision, imported next to the working tree's.

A regression is found by comparing, in one process, the same benchmark on the
library before and after a change: ``at_revision("HEAD~1")`` extracts that
revision's ``gradtx/``, ``transforms/`` and ``optimizers/`` into a temporary
folder laid out as the installed package (``gradtx.transforms``,
``gradtx.optimizers``), imports it, and hands back its ``transforms`` and
``optimizers`` modules; the working tree's gradtx is then imported again as
usual. Both stay usable: functions keep the modules they were defined in.

    old_gt, old_go = at_revision("2196b76")
    contenders = {"before": stepper(old_go.muon(0.02), ...),
                  "after": stepper(go.muon(0.02), ...)}
"""

import importlib
import io
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import types
import warnings

from benchmarks.harness import ROOT

_PACKAGE_DIRS = {"gradtx": "gradtx", "transforms": "gradtx/transforms",
                 "optimizers": "gradtx/optimizers", "contrib": "gradtx/contrib"}


def _extract(revision: str) -> str:
  def run(*args):
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True)
    if done.returncode:
      raise ValueError(f"revision {revision!r}: git {args[0]} failed:"
                       f" {done.stderr.decode().strip()}")
    return done.stdout

  present = set(run("ls-tree", "--name-only", revision).decode().split())
  # Before gradtx/ existed the package was a namespace of the other two.
  archive = run("archive", "--format=tar", revision,
                *(d for d in _PACKAGE_DIRS if d in present))
  folder = tempfile.mkdtemp(prefix=f"gradtx-{revision.replace('/', '_')}-")
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    for member in tar.getmembers():
      top, _, rest = member.name.partition("/")
      member.name = f"{_PACKAGE_DIRS[top]}/{rest}" if rest else _PACKAGE_DIRS[top]
      tar.extract(member, folder, filter="data")
  # A namespace package would lose to the working tree's regular one.
  pathlib.Path(folder, "gradtx", "__init__.py").touch()
  return folder


def _forget_gradtx() -> dict:
  names = [n for n in sys.modules if n == "gradtx" or n.startswith("gradtx.")]
  return {n: sys.modules.pop(n) for n in names}


def _bind_forwarded_names(optimizers: types.ModuleType) -> None:
  """Binds the names ``optimizers`` forwards to ``gradtx.contrib`` on first use.

  A deprecated name (``go.adamuon_lm``) is resolved by a module
  ``__getattr__`` that imports ``gradtx.contrib`` when called: after
  ``at_revision`` returns, that would be the working tree's. Bound here,
  while the revision's package is the one imported, it stays the revision's.
  """
  try:
    contrib = importlib.import_module("gradtx.contrib")
  except ImportError:  # before gradtx.contrib existed
    return
  for name in getattr(contrib, "__all__", ()):
    if name not in vars(optimizers):
      try:
        with warnings.catch_warnings():
          warnings.simplefilter("ignore", DeprecationWarning)
          forwarded = getattr(optimizers, name)
      except AttributeError:
        continue
      if forwarded is getattr(contrib, name):
        setattr(optimizers, name, forwarded)


def at_revision(revision: str) -> tuple[types.ModuleType, types.ModuleType]:
  """``(transforms, optimizers)`` of gradtx at ``revision`` (any git name)."""
  folder = _extract(revision)
  current = _forget_gradtx()
  # An editable install's finder maps gradtx.* to the working tree ahead of
  # sys.path: set it aside while the old revision is imported.
  editable = [f for f in sys.meta_path if "__editable__" in getattr(f, "__module__", "")]
  sys.meta_path[:] = [f for f in sys.meta_path if f not in editable]
  sys.path.insert(0, folder)
  try:
    modules = (importlib.import_module("gradtx.transforms"),
               importlib.import_module("gradtx.optimizers"))
    _bind_forwarded_names(modules[1])
  finally:
    sys.path.remove(folder)
    sys.meta_path[:] = editable + sys.meta_path
    _forget_gradtx()
    sys.modules.update(current)
  return modules
