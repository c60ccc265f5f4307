"""Public entry points of the release: `available_models`, `load`, `tokenize`.

This module keeps every name the original `clip.clip` exposes importable from the same path
(`_MODELS`, `_download`, `_transform`, `_convert_image_to_rgb`, `BICUBIC`, `_tokenizer`).
The work itself lives in private modules, one per concern.
"""

from typing import Any, Dict, List, Tuple, Union

import torch

from ._download import _download
from ._preprocess import BICUBIC, _convert_image_to_rgb, _transform
from ._tokenize import tokenize
from .model import build_model

__all__ = ["available_models", "load", "tokenize"]

_MODELS: Dict[str, str] = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": "https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": "https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}


def available_models() -> List[str]:
    """Return the names of the released CLIP models, in the release's order."""
    return list(_MODELS.keys())


def load(
    name: str,
    device: Union[str, torch.device, None] = None,
    jit: bool = False,
    download_root: Union[str, None] = None,
) -> Tuple[torch.nn.Module, Any]:
    """Load a CLIP model (owned by the `clip.load` issue; filled in there)."""
    raise NotImplementedError("clip.load is being written")


def __getattr__(name: str) -> Any:
    # `clip.clip._tokenizer` resolves lazily: the tokenizer is built on first use, never at import.
    if name == "_tokenizer":
        from ._tokenize import get_tokenizer

        return get_tokenizer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
