"""Make tests/data/names_golden.json: every name the ORIGINAL `clip` modules hold (the oracle).

Run with our virtual environment; the script runs itself again with only the oracle folder on
PYTHONPATH and a scratch working directory, so that our own `clip/` package cannot shadow it:

    .venv/bin/python tests/data/make_names_golden.py [--oracle DIR]

(DIR defaults to $CLIP_ORACLE_PATH, else .oracle in the repository.)

What it stores, for `clip`, `clip.clip`, `clip.model` and `clip.simple_tokenizer`: each name in the
module's namespace (dunder names aside) and what it is: "module <name>" for a module (the original's
`re` is "module regex"), "object <module>.<qualname>" for a class or function defined outside the
`clip` package (torchvision's `Compose`, tqdm's `tqdm`), and "own <kind>" for what the package
defines itself (its classes, functions, constants), whose behaviour other tests compare.
"""

import inspect
import json
import sys
from pathlib import Path
from types import ModuleType

DATA = Path(__file__).resolve().parent
TESTS = DATA.parent
REPO = TESTS.parent
OUTPUT = DATA / "names_golden.json"
MODULES = ("clip", "clip.clip", "clip.model", "clip.simple_tokenizer")
sys.path.insert(0, str(TESTS / "support"))  # _golden (imports no clip)
from _golden import oracle_argument, under_oracle  # noqa: E402


def describe(value: object) -> str:
    if isinstance(value, ModuleType):
        return f"module {value.__name__}"
    module = getattr(value, "__module__", None)
    if (inspect.isclass(value) or inspect.isroutine(value)) and module and not module.startswith("clip"):
        return f"object {module}.{value.__qualname__}"
    return f"own {type(value).__name__}"


def main() -> None:
    under_oracle(__file__, oracle_argument(__doc__))
    import importlib

    names = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if REPO in Path(module.__file__).resolve().parents:
            sys.exit(f"refusing to run: {module_name} came from this repository, not the oracle")
        names[module_name] = {
            name: describe(value) for name, value in sorted(vars(module).items()) if not name.startswith("__")
        }
    OUTPUT.write_text(json.dumps({"oracle": "clip-anytorch 2.6.0", "names": names}, indent=1) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
