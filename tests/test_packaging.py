"""The namespace-package layout: gradtx.transforms and gradtx.optimizers import
both from the editable install (the source tree) and from a built wheel."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBE = (
    "import gradtx.transforms as gt, gradtx.optimizers as go, gradtx;"
    "print(gt.__file__); print(go.__file__); print(list(gradtx.__path__));"
    "assert callable(go.adamw) and callable(gt.scale_by_adam)"
)


def _probe(env_path: str | None, cwd: pathlib.Path) -> list[str]:
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
  if env_path:
    env["PYTHONPATH"] = env_path
  out = subprocess.run(
      [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True,
      text=True, check=True,
  )
  return out.stdout.splitlines()


def test_installed_package_resolves_to_the_source_tree(tmp_path):
  transforms_file, optimizers_file, _ = _probe(None, tmp_path)
  assert pathlib.Path(transforms_file).parent == ROOT / "transforms"
  assert pathlib.Path(optimizers_file).parent == ROOT / "optimizers"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out,
       str(ROOT)],
      check=True, capture_output=True,
  )
  (path,) = out.glob("gradtx-*.whl")
  return path


def test_wheel_contains_namespace_layout(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  assert "gradtx/transforms/__init__.py" in names
  assert "gradtx/optimizers/__init__.py" in names
  assert "gradtx/__init__.py" not in names  # a namespace package
  assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)


def test_wheel_imports_from_its_own_files(wheel, tmp_path):
  target = tmp_path / "site"
  zipfile.ZipFile(wheel).extractall(target)
  transforms_file, optimizers_file, _ = _probe(str(target), tmp_path)
  assert transforms_file.startswith(str(target))
  assert optimizers_file.startswith(str(target))
