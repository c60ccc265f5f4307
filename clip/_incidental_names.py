"""Names the original's modules have only because they import them, resolved on first access.

OpenAI's `clip/clip.py` imports `Compose`, `Resize`, `tqdm`, `hashlib`, ... at its top, so code
written against it can (and some does) write `from clip.clip import Compose, Normalize` or
`clip.simple_tokenizer.re` (which is the `regex` module there). Our modules import these lazily or
not at all, so each module lists them here and a module-level `__getattr__` (PEP 562) imports one the
first time it is read, then stores it on the module. Nothing is imported at import time.
"""

import importlib
import sys
from types import ModuleType
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple


class Target(NamedTuple):
    """What a name is: `module` (or its `attribute`), once every module of `also_import` is imported."""

    module: str
    attribute: Optional[str]
    package: str  # what to pip install when it is missing ("" for the standard library)
    also_import: Tuple[str, ...] = ()  # submodules the original's code uses through the name


Targets = Dict[str, Target]

CLIP_CLIP: Targets = {
    "CenterCrop": Target("torchvision.transforms", "CenterCrop", "torchvision"),
    "Compose": Target("torchvision.transforms", "Compose", "torchvision"),
    "InterpolationMode": Target("torchvision.transforms", "InterpolationMode", "torchvision"),
    "Normalize": Target("torchvision.transforms", "Normalize", "torchvision"),
    "Resize": Target("torchvision.transforms", "Resize", "torchvision"),
    "ToTensor": Target("torchvision.transforms", "ToTensor", "torchvision"),
    "Image": Target("PIL.Image", None, "Pillow"),
    "tqdm": Target("tqdm", "tqdm", "tqdm"),
    "hashlib": Target("hashlib", None, ""),
    "urllib": Target("urllib", None, "", ("urllib.request",)),  # used there as urllib.request
    "packaging": Target("packaging", None, "packaging", ("packaging.version",)),  # packaging.version
}
CLIP_MODEL: Targets = {"np": Target("numpy", None, "numpy")}
CLIP_SIMPLE_TOKENIZER: Targets = {
    "ftfy": Target("ftfy", None, "ftfy"),
    "re": Target("regex", None, "regex"),  # the original's `import regex as re`, not the standard `re`
}


def _resolve(target: Target) -> Any:
    for submodule in target.also_import:
        importlib.import_module(submodule)
    module = importlib.import_module(target.module)
    return module if target.attribute is None else getattr(module, target.attribute)


def module_getattr(module_name: str, targets: Targets) -> Callable[[str], Any]:
    """A PEP 562 `__getattr__` for `module_name` that resolves the names in `targets`."""

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        target = targets[name]
        try:
            value = _resolve(target)
        except ImportError as error:  # hasattr() and getattr(..., default) expect AttributeError
            what = target.module + (f".{target.attribute}" if target.attribute else "")
            raise AttributeError(
                f"{module_name}.{name} is {what}, which cannot be imported here ({error}); install it "
                f"with `pip install {target.package or target.module}`."
            ) from error
        module: ModuleType = sys.modules[module_name]
        setattr(module, name, value)  # read once; later reads find it on the module
        return value

    return __getattr__
