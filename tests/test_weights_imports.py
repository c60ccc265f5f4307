"""clip/_weights imports downwards only: in the order its __init__ lists its modules, reaching outside
the package only for the leaves clip.model and clip._atomic, and never back up into clip.clip."""

import ast
import re
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parent.parent / "clip" / "_weights"
OUTSIDE_LEAVES = {"clip.model", "clip._atomic"}


def _imports(path: Path) -> Set[str]:
    """The clip modules `path` imports, at module level or inside functions."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = "clip._weights" if node.level == 1 else "clip" if node.level == 2 else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names = [alias.name for alias in node.names]
            if module == "clip._weights" and not node.module:  # `from . import registry`
                found.update(f"clip._weights.{name}" for name in names)
            elif module.startswith("clip"):
                found.add(module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("clip"))
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = [path for path in PACKAGE.glob("*.py") if path.stem != "__init__"]
    return {f"clip._weights.{path.stem}": _imports(path) for path in modules}


def test_each_module_imports_only_those_listed_below_it() -> None:
    docstring = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))) or ""
    order = re.findall(r"^\* :mod:`~(clip\._weights\.\w+)`", docstring, re.MULTILINE)
    graph = _graph()
    assert sorted(order) == sorted(graph), "every module is listed once in clip/_weights/__init__.py"
    for position, module in enumerate(order):
        below = set(order[position + 1 :])
        wrong = {name for name in graph[module] if name not in below and name not in OUTSIDE_LEAVES}
        assert not wrong, f"{module} imports {sorted(wrong)}, which are not below it"
