"""gradtx as it was at another git revision, imported next to the working tree's.

A regression is found by comparing, in one process, the same benchmark on the
library before and after a change: ``at_revision("HEAD~1")`` extracts that
revision's ``gradtx/``, ``transforms/``, ``optimizers/`` and ``contrib/`` into
a temporary folder laid out as the installed package, under a name of its own
(``gradtx_at_HEAD_1_<id>``, every ``import gradtx`` of its sources rewritten
to it), imports it, and hands back its ``transforms`` and ``optimizers``
modules. Both libraries stay usable side by side, imports made inside
functions included (a revision's ``from gradtx.storage import quantize`` at
call time would otherwise get the working tree's module, whose classes the
revision's ``isinstance`` checks do not know).

    old_gt, old_go = at_revision("2196b76")
    contenders = {"before": stepper(old_go.muon(0.02), ...),
                  "after": stepper(go.muon(0.02), ...)}
"""

import atexit
import importlib
import io
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types

from benchmarks.harness import ROOT

_PACKAGE_DIRS = {"gradtx": "", "transforms": "transforms",
                 "optimizers": "optimizers", "contrib": "contrib"}
_IMPORT = re.compile(r"\b(from|import)(\s+)gradtx\b")


def _extract(revision: str) -> tuple[str, str]:
  """(folder, package): the revision's sources under ``folder/package``."""
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
  safe = re.sub(r"\W", "_", revision)
  folder = tempfile.mkdtemp(prefix=f"gradtx-{safe}-")
  atexit.register(shutil.rmtree, folder, ignore_errors=True)  # kept while the process runs
  package = re.sub(r"\W", "_", f"gradtx_at_{safe}_{pathlib.Path(folder).name[-8:]}")
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    for member in tar.getmembers():
      top, _, rest = member.name.partition("/")
      inside = "/".join(x for x in (_PACKAGE_DIRS[top], rest) if x)
      member.name = f"{package}/{inside}" if inside else package
      tar.extract(member, folder, filter="data")
  root = pathlib.Path(folder, package)
  (root / "__init__.py").touch()  # gradtx may have been a namespace package
  for source in root.rglob("*.py"):
    source.write_text(_IMPORT.sub(rf"\1\2{package}", source.read_text()))
  return folder, package


def at_revision(revision: str) -> tuple[types.ModuleType, types.ModuleType]:
  """``(transforms, optimizers)`` of gradtx at ``revision`` (any git name)."""
  folder, package = _extract(revision)
  sys.path.append(folder)  # kept: the revision's lazy imports resolve there
  return (importlib.import_module(f"{package}.transforms"),
          importlib.import_module(f"{package}.optimizers"))
