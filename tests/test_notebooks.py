"""Executes every notebook under notebooks/; a cell that raises (an assert too) fails the test.

The kernel is started with this interpreter (``sys.executable``), not through an installed
kernelspec, so the notebook sees the same environment, and the same gradtx, as pytest.
"""

import pathlib
import sys

import matplotlib  # noqa: F401  (the notebook draws; fail here, not in a cell)
import nbclient
import nbformat
import pytest
from ipykernel.kernelspec import make_ipkernel_cmd
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# Notebooks that train nothing (they read committed run files): what they
# print is a function of the repository, so their saved outputs must be it,
# but for cells tagged MACHINE_DEPENDENT (they print round-off: the notebook
# says so), whose asserts still run.
READ_ONLY = ("03_fourth_quadrant.ipynb", "07_workload_suite.ipynb")
MACHINE_DEPENDENT = "machine-dependent"


class _ThisInterpreter(KernelSpecManager):
  """Resolves every kernel name to an ipykernel running on ``sys.executable``."""

  def get_kernel_spec(self, kernel_name):
    return KernelSpec(
        argv=make_ipkernel_cmd(executable=sys.executable),
        display_name=f"Python ({sys.executable})",
        language="python",
        name=kernel_name,
    )


def execute(path: pathlib.Path, timeout: int = 300):
  """Runs the notebook at ``path`` in its own folder; returns the executed copy."""
  nb = nbformat.read(path, as_version=4)
  km = AsyncKernelManager(kernel_spec_manager=_ThisInterpreter())
  client = nbclient.NotebookClient(
      nb, km=km, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
  )
  client.execute()
  return nb


def test_notebooks_exist():
  assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, optimised_xla):
  # The inline backend (ipykernel's default when MPLBACKEND is unset) renders headless.
  monkeypatch.delenv("MPLBACKEND", raising=False)
  saved = nbformat.read(path, as_version=4)
  nb = execute(path)
  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.get("execution_count") for c in code_cells), "a code cell did not run"
  if path.name in READ_ONLY:
    for number, (now, then) in enumerate(zip(nb.cells, saved.cells)):
      if MACHINE_DEPENDENT in now.get("metadata", {}).get("tags", []):
        continue
      assert _printed(now) == _printed(then), (
          f"cell {number}'s saved output is stale: re-execute and commit {path.name}")


def _printed(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")
