"""The torch and torchvision versions this package supports, checked once when `clip` is imported.

The code needs torch 2.4 or newer: `scaled_dot_product_attention` with its fused kernels,
`torch.load(..., mmap=True, weights_only=True)`, building modules on the meta device, and the
`torch.compiler` / `torch.nn.attention` helpers. On an older torch it would fail deep inside a
model call instead; this check names both versions up front.
"""

import re
from typing import Tuple

MIN_TORCH = (2, 4)
MIN_TORCHVISION = (0, 19)  # the torchvision release that goes with torch 2.4


def _release(version: str) -> Tuple[int, ...]:
    """(major, minor) of a version string such as "2.14.1+cu128" or "2.5.0a0+git1234"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _text(version: Tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def check(name: str, installed: str, minimum: Tuple[int, ...]) -> None:
    """Raise ImportError naming both versions when `installed` is older than `minimum`."""
    if _release(installed) < minimum:
        needed = f"{name}>={_text(minimum)}"
        raise ImportError(
            f"clip needs {needed}, but {name} {installed} is installed. Upgrade it, e.g. "
            f"`pip install 'torch>={_text(MIN_TORCH)}' 'torchvision>={_text(MIN_TORCHVISION)}'` "
            "(see https://pytorch.org for the build that fits your platform)."
        )


def check_installed() -> None:
    """Check the installed torch and torchvision (both are imported by `clip` anyway)."""
    import torch
    import torchvision

    check("torch", torch.__version__, MIN_TORCH)
    check("torchvision", torchvision.__version__, MIN_TORCHVISION)
