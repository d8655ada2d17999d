"""The docstring examples of every gradtx module, and README.md's code, run as shown."""

import doctest
import importlib
import importlib.util
import math
import pathlib
import re

import pytest

from tests.support import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module_name(path: pathlib.Path) -> str:
  """``transforms/adam_mini.py`` -> ``gradtx.transforms.adam_mini``;
  ``gradtx/routing/__init__.py`` -> ``gradtx.routing``."""
  parts = path.relative_to(ROOT).with_suffix("").parts
  parts = parts[:-1] if parts[-1] == "__init__" else parts
  return ".".join(parts if parts[0] == "gradtx" else ("gradtx", *parts))


# Every module and package of the library: the three mapped packages and
# gradtx/ itself (routing, distributed, storage, linalg, ...).
MODULES = sorted(
    _module_name(path)
    for package in ("transforms", "optimizers", "contrib", "gradtx")
    for path in (ROOT / package).rglob("*.py")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


@pytest.mark.parametrize("name", MODULES)
def test_docstrings_hold_no_control_characters(name):
  """A backslash escape in a docstring that is not raw (\\text read as a tab and
  "ext") leaves a control character where the equation's command was."""
  source = pathlib.Path(importlib.util.find_spec(name).origin).read_text()
  bad = [n for n, line in enumerate(source.splitlines(), 1)
         if re.search(r"[\x00-\x09\x0b-\x1f]", line)]
  assert not bad, f"{name}: control characters on lines {bad}"



def test_readme_python_blocks_run():
  """The top-level blocks (indented ones are fragments inside a list)."""
  blocks = helpers.readme_python_blocks()
  assert blocks
  namespace = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
  losses = namespace["losses"]
  assert len(losses) == 6 and all(map(math.isfinite, losses)), losses
  assert losses[-1] < losses[0]
