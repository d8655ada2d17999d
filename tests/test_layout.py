"""tests/ mirrors the source: one test module per source module, and back.

``transforms/<m>.py`` is tested in ``tests/transforms/test_<m>.py``,
``optimizers/<m>.py`` in ``tests/optimizers/test_<m>.py``,
``contrib/<m>.py`` in ``tests/contrib/test_<m>.py``, the infrastructure
packages ``gradtx/<package>/<m>.py`` (linalg, storage, distributed, routing,
flax_integration) in ``tests/<package>/test_<m>.py`` and
``gradtx/_internal/<m>.py`` in ``tests/internal/test_<m>.py``. The only other
test modules there are the tables every module of the package answers to
(``EXTRA``).
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
INFRASTRUCTURE = ("linalg", "storage", "distributed", "routing", "flax_integration")
MIRRORS = {  # source folder -> test folder
    "transforms": "tests/transforms",
    "optimizers": "tests/optimizers",
    "contrib": "tests/contrib",
    "gradtx/_internal": "tests/internal",
    **{f"gradtx/{package}": f"tests/{package}" for package in INFRASTRUCTURE},
}
EXTRA = {"tests/transforms": {"test_contract"}}


def _modules(folder, prefix=""):
  return {p.stem[len(prefix):] for p in (ROOT / folder).glob(f"{prefix}*.py")
          if p.stem != "__init__"}


@pytest.mark.parametrize("source, tests", MIRRORS.items(), ids=list(MIRRORS))
def test_every_source_module_has_a_test_module(source, tests):
  missing = _modules(source) - _modules(tests, "test_")
  assert not missing, f"add {', '.join(f'{tests}/test_{m}.py' for m in sorted(missing))}"


@pytest.mark.parametrize("source, tests", MIRRORS.items(), ids=list(MIRRORS))
def test_every_test_module_names_a_source_module(source, tests):
  extra = {f"test_{m}" for m in _modules(tests, "test_") - _modules(source)}
  assert extra == EXTRA.get(tests, set()), extra


def test_the_mirrors_are_not_empty():
  assert all(len(_modules(source)) >= 5 for source in MIRRORS
             if source != "contrib" and source.split("/")[-1] not in INFRASTRUCTURE)
  assert all(_modules(f"gradtx/{package}") for package in INFRASTRUCTURE)
  assert _modules("contrib")


def _readme_layout():
  text = (ROOT / "README.md").read_text()
  return text[text.index("## Layout\n"):].split("\n## ")[0]


def _bullets(layout):
  """{folder: the text of its bullet} for the bullets that open with a folder."""
  bullets = {}
  for item in layout.split("\n- ")[1:] + layout.split("\n  - ")[1:]:
    head = item.split("`")[1] if item.startswith("`") else ""
    if head.endswith("/"):
      bullets[head.rstrip("/")] = item.split("\n  - ")[0]
  return bullets


@pytest.mark.parametrize("source", [s for s in MIRRORS if s != "gradtx/_internal"]
                         + ["gradtx/_internal"])
def test_readme_layout_names_every_module_of_every_folder(source):
  bullets = _bullets(_readme_layout())
  assert source in bullets, f"README's Layout has no bullet for `{source}/`"
  named = set(re.findall(r"`(\w+)`", bullets[source]))
  missing = _modules(source) - named
  assert not missing, f"README's Layout does not name {sorted(missing)} under `{source}/`"


def test_readme_layout_names_no_folder_that_is_not_there():
  for folder in _bullets(_readme_layout()):
    assert (ROOT / folder).is_dir(), folder
