"""tests/ mirrors the source: one test module per source module, and back.

``transforms/<m>.py`` is tested in ``tests/transforms/test_<m>.py``,
``optimizers/<m>.py`` in ``tests/optimizers/test_<m>.py``,
``contrib/<m>.py`` in ``tests/contrib/test_<m>.py`` and
``gradtx/_internal/<m>.py`` in ``tests/internal/test_<m>.py``. The only other
test modules there are the tables every module of the package answers to
(``EXTRA``).
"""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIRRORS = {  # source folder -> test folder
    "transforms": "tests/transforms",
    "optimizers": "tests/optimizers",
    "contrib": "tests/contrib",
    "gradtx/_internal": "tests/internal",
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
  assert all(len(_modules(source)) >= 5 for source in MIRRORS if source != "contrib")
  assert _modules("contrib")
