"""The scripts of the repository's examples/ folder, imported by path (it is not a package, and
the tests leave sys.path as they found it)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """examples/NAME.py as a module (imported once; later calls return the same module)."""
    key = f"_clip_example_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before running it: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[key]
