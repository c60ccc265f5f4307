"""Import a module of benchmarks/ from the tests (the repository root is not on sys.path when the
package under test is installed, as in CI): the root is put on sys.path for that import only, after
`clip` itself is imported, so the installed `clip` stays the one under test."""

import importlib
import sys
from pathlib import Path
from types import ModuleType

import clip  # noqa: F401  (imported first: the benchmark's `import clip` must find this one)

REPO = Path(__file__).resolve().parents[2]


def import_benchmark(name: str) -> ModuleType:
    """`benchmarks.<name>`, imported from this repository's benchmarks/ folder."""
    root = str(REPO)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        if added:
            sys.path.remove(root)
