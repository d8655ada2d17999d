"""The main job (``examples/char_lm.py``) loaded as a module, for benchmarks."""

import importlib.util
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "char_lm.py"


def load_char_lm():
  """``examples/char_lm.py`` as a fresh module (its registry can be patched)."""
  spec = importlib.util.spec_from_file_location("char_lm", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
