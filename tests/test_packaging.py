"""The package layout: ``import gradtx`` gives the subpackages and the version,
from the editable install (the source tree) and from a built wheel; the
top-level folders transforms/, optimizers/ and contrib/ are gradtx.transforms,
gradtx.optimizers and gradtx.contrib; the infrastructure packages under gradtx/
(routing, linalg, storage, distributed, flax_integration) and gradtx/_internal
hold what they share."""

import importlib.metadata
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBE = (
    "import gradtx;"
    "print(gradtx.transforms.__file__); print(gradtx.optimizers.__file__);"
    "print(gradtx.contrib.__file__); print(gradtx.__version__);"
    "assert callable(gradtx.optimizers.adamw) and callable(gradtx.transforms.scale_by_adam);"
    "import gradtx.routing, gradtx.linalg, gradtx.storage, gradtx.distributed;"
    "import gradtx.flax_integration"
)
SUBPACKAGES = sorted(f"gradtx/{p.name}" for p in (ROOT / "gradtx").iterdir()
                     if (p / "__init__.py").exists())


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
  transforms_file, optimizers_file, contrib_file, version = _probe(None, tmp_path)
  assert pathlib.Path(transforms_file).parent == ROOT / "transforms"
  assert pathlib.Path(optimizers_file).parent == ROOT / "optimizers"
  assert pathlib.Path(contrib_file).parent == ROOT / "contrib"
  assert version == importlib.metadata.version("gradtx")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out,
       str(ROOT)],
      check=True, capture_output=True,
  )
  (path,) = out.glob("gradtx-*.whl")
  return path


def test_wheel_contains_the_package_layout(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  assert len(SUBPACKAGES) >= 6  # _internal and the infrastructure packages
  for package in ("gradtx", *SUBPACKAGES, "gradtx/transforms", "gradtx/optimizers",
                  "gradtx/contrib"):
    assert f"{package}/__init__.py" in names
  assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)


def test_wheel_imports_from_its_own_files(wheel, tmp_path):
  target = tmp_path / "site"
  zipfile.ZipFile(wheel).extractall(target)
  transforms_file, optimizers_file, contrib_file, version = _probe(str(target), tmp_path)
  assert version == importlib.metadata.version("gradtx")
  assert transforms_file.startswith(str(target))
  assert optimizers_file.startswith(str(target))
  assert contrib_file.startswith(str(target))


def test_importing_gradtx_imports_no_flax():
  """flax is optional: gradtx neither imports it (its QuantizedArray is
  registered with flax.serialization only once flax is imported) nor fails
  on a flax that cannot import."""
  code = ("import sys; sys.modules['flax'] = None\n"  # any import of flax now fails
          "import gradtx.optimizers, gradtx.transforms\n"
          "del sys.modules['flax']\n"
          "import gradtx.optimizers as go, jax.numpy as jnp\n"
          "go.adamw_8bit(1e-3).init({'w': jnp.zeros((64, 128))})\n"
          "assert 'flax' not in sys.modules, 'gradtx imported flax'\n")
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
