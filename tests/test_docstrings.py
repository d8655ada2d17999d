"""The docstring examples of every gradtx module, and README.md's code, run as shown."""

import doctest
import importlib
import math
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = [
    f"gradtx.{package}.{path.stem}"
    for package in ("transforms", "optimizers")
    for path in sorted((ROOT / package).glob("*.py"))
    if path.stem != "__init__"
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"



def test_readme_python_blocks_run():
  """The top-level blocks (indented ones are fragments inside a list)."""
  text = (ROOT / "README.md").read_text()
  blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
  assert blocks
  namespace = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
  losses = namespace["losses"]
  assert len(losses) == 6 and all(map(math.isfinite, losses)), losses
  assert losses[-1] < losses[0]
