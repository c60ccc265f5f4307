"""Names the original's modules hold only because they import them (`clip.clip.Compose`,
`clip.simple_tokenizer.re`, `clip.model.np`, ...): clip/_incidental_names.py.

tests/data/names_golden.json lists every name of the original's `clip`, `clip.clip`, `clip.model`
and `clip.simple_tokenizer` (made by tests/data/make_names_golden.py from clip-anytorch 2.6.0).
"""

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import List, Tuple

import pytest

import clip
from clip import _incidental_names

GOLDEN = json.loads((Path(__file__).parent / "data" / "names_golden.json").read_text())["names"]
NAMES: List[Tuple[str, str]] = [(module, name) for module, names in GOLDEN.items() for name in names]


def test_the_golden_lists_the_originals_modules() -> None:
    assert set(GOLDEN) == {"clip", "clip.clip", "clip.model", "clip.simple_tokenizer"}
    assert {"Compose", "tqdm", "_tokenizer", "_download"} <= set(GOLDEN["clip.clip"])
    assert GOLDEN["clip.simple_tokenizer"]["re"] == "module regex"


@pytest.mark.golden
@pytest.mark.parametrize("module_name, name", NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_every_name_of_the_originals_modules_is_there(module_name: str, name: str) -> None:
    value = getattr(importlib.import_module(module_name), name)  # AttributeError if absent
    kind, _, what = GOLDEN[module_name][name].partition(" ")
    if kind == "module":  # the same module: `re` is the regex module, as in the original
        assert isinstance(value, ModuleType) and value.__name__ == what
    elif kind == "object":  # the same third-party class or function
        assert f"{value.__module__}.{value.__qualname__}" == what


def test_from_imports_of_incidental_names_work() -> None:
    import numpy
    import regex
    import torchvision.transforms
    from tqdm import tqdm

    from clip.clip import Compose, InterpolationMode, Normalize, urllib
    from clip.model import np
    from clip.simple_tokenizer import re

    assert Compose is torchvision.transforms.Compose and Normalize is torchvision.transforms.Normalize
    assert InterpolationMode is torchvision.transforms.InterpolationMode
    assert np is numpy and re is regex and clip.clip.tqdm is tqdm
    assert callable(urllib.request.urlopen) and callable(clip.clip.packaging.version.parse)


def test_nothing_is_imported_until_read() -> None:
    script = textwrap.dedent(
        """
        import sys
        import clip
        names = {"clip.clip": ["Compose", "tqdm", "packaging"], "clip.model": ["np"],
                 "clip.simple_tokenizer": ["ftfy", "re"]}
        before = [f"{m}.{n}" for m, ns in names.items() for n in ns if n in vars(sys.modules[m])]
        assert not before, before
        assert "ftfy" not in sys.modules and "regex" not in sys.modules
        assert clip.simple_tokenizer.re.__name__ == "regex"
        assert "re" in vars(clip.simple_tokenizer)  # stored on the module after the first read
        from clip._incidental_names import Target, _resolve  # a submodule the name is used through
        assert "xml.dom" not in sys.modules
        assert _resolve(Target("xml", None, "", ("xml.dom",))).dom.__name__ == "xml.dom"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="'clip.clip' has no attribute 'Composee'"):
        clip.clip.Composee  # noqa: B018
    assert not hasattr(clip.model, "numpy") and not hasattr(clip.simple_tokenizer, "regex_module")


def test_a_missing_package_is_a_clear_attribute_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = ModuleType("clip_fake_module")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    module.__getattr__ = _incidental_names.module_getattr(  # type: ignore[attr-defined]
        module.__name__,
        {"thing": _incidental_names.Target("no_such_package_for_clip_tests", None, "no-such-package")},
    )
    assert not hasattr(module, "thing")
    with pytest.raises(AttributeError, match="pip install no-such-package"):
        module.thing  # noqa: B018
