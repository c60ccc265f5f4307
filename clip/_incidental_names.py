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
from typing import Any, Callable, Dict, Optional, Tuple

# name -> (module to import, attribute of it or None for the module itself, what to pip install)
Targets = Dict[str, Tuple[str, Optional[str], str]]

CLIP_CLIP: Targets = {
    "CenterCrop": ("torchvision.transforms", "CenterCrop", "torchvision"),
    "Compose": ("torchvision.transforms", "Compose", "torchvision"),
    "InterpolationMode": ("torchvision.transforms", "InterpolationMode", "torchvision"),
    "Normalize": ("torchvision.transforms", "Normalize", "torchvision"),
    "Resize": ("torchvision.transforms", "Resize", "torchvision"),
    "ToTensor": ("torchvision.transforms", "ToTensor", "torchvision"),
    "Image": ("PIL.Image", None, "Pillow"),
    "tqdm": ("tqdm", "tqdm", "tqdm"),
    "hashlib": ("hashlib", None, ""),
    "urllib": ("urllib.request", None, ""),  # the package, with `urllib.request` loaded as used there
    "packaging": ("packaging.version", None, "packaging"),  # the package, with `packaging.version`
}
CLIP_MODEL: Targets = {"np": ("numpy", None, "numpy")}
CLIP_SIMPLE_TOKENIZER: Targets = {
    "ftfy": ("ftfy", None, "ftfy"),
    "re": ("regex", None, "regex"),  # the original's `import regex as re`, not the standard `re`
}


def _resolve(target: str, attribute: Optional[str]) -> Any:
    module = importlib.import_module(target)
    if attribute is not None:
        return getattr(module, attribute)
    if target in ("urllib.request", "packaging.version"):  # the original names the top-level package
        return sys.modules[target.split(".")[0]]
    return module


def module_getattr(module_name: str, targets: Targets) -> Callable[[str], Any]:
    """A PEP 562 `__getattr__` for `module_name` that resolves the names in `targets`."""

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        target, attribute, package = targets[name]
        try:
            value = _resolve(target, attribute)
        except ImportError as error:  # hasattr() and getattr(..., default) expect AttributeError
            raise AttributeError(
                f"{module_name}.{name} is {target}{'.' + attribute if attribute else ''}, which cannot be "
                f"imported here ({error}); install it with `pip install {package or target}`."
            ) from error
        module: ModuleType = sys.modules[module_name]
        setattr(module, name, value)  # read once; later reads find it on the module
        return value

    return __getattr__
