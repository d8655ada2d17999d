"""The code passes ruff with the configuration in pyproject.toml."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
  result = subprocess.run(
      [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
      capture_output=True, text=True, cwd=ROOT,
  )
  assert result.returncode == 0, result.stdout + result.stderr
