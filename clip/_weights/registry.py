"""The released models: one entry per name, with everything known about where its weights live.

Each entry holds the release URL (whose folder name is the file's SHA256), the open_clip hub repo
that keeps a copy of the same weights (all nine models), and the transformers repo (ViT models
only). `clip.clip._MODELS` (the original's name -> URL table) is :data:`RELEASE_URLS`, derived from
the entries.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .hub import HubFile

__all__ = [
    "ReleasedModel",
    "RELEASED",
    "RELEASE_URLS",
    "OPEN_CLIP_FILES",
    "TRANSFORMERS_FILE",
    "released",
    "release_url",
    "hub_files",
]

RELEASE_BASE = "https://openaipublic.azureedge.net/clip/models"
# The two file names open_clip tries in its hub repos, in its order; transformers keeps one file.
OPEN_CLIP_FILES: Tuple[str, ...] = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TRANSFORMERS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint: its name, release file and SHA256, and its hub copies."""

    name: str  # as `clip.available_models()` lists it
    file_name: str  # the release file's name
    sha256: str  # of the release file; also the folder of its URL
    open_clip_repo: str  # a hub repo with open_clip's copy of the weights
    transformers_repo: Optional[str] = None  # a hub repo with transformers' copy (ViT models)

    @property
    def url(self) -> str:
        """The release URL, as the original's `_MODELS` holds it."""
        return f"{RELEASE_BASE}/{self.sha256}/{self.file_name}"

    def hub_files(self) -> List[HubFile]:
        """The hub copies, in the order they are tried: open_clip's, then transformers'."""
        files = [HubFile(self.open_clip_repo, name) for name in OPEN_CLIP_FILES]
        if self.transformers_repo:
            files.append(HubFile(self.transformers_repo, TRANSFORMERS_FILE))
        return files


_ENTRIES = (
    ReleasedModel(
        "RN50",
        "RN50.pt",
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        "timm/resnet50_clip.openai",
    ),
    ReleasedModel(
        "RN101",
        "RN101.pt",
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
        "timm/resnet101_clip.openai",
    ),
    ReleasedModel(
        "RN50x4",
        "RN50x4.pt",
        "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
        "timm/resnet50x4_clip.openai",
    ),
    ReleasedModel(
        "RN50x16",
        "RN50x16.pt",
        "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
        "timm/resnet50x16_clip.openai",
    ),
    ReleasedModel(
        "RN50x64",
        "RN50x64.pt",
        "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
        "timm/resnet50x64_clip.openai",
    ),
    ReleasedModel(
        "ViT-B/32",
        "ViT-B-32.pt",
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        "timm/vit_base_patch32_clip_224.openai",
        "openai/clip-vit-base-patch32",
    ),
    ReleasedModel(
        "ViT-B/16",
        "ViT-B-16.pt",
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        "timm/vit_base_patch16_clip_224.openai",
        "openai/clip-vit-base-patch16",
    ),
    ReleasedModel(
        "ViT-L/14",
        "ViT-L-14.pt",
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        "timm/vit_large_patch14_clip_224.openai",
        "openai/clip-vit-large-patch14",
    ),
    ReleasedModel(
        "ViT-L/14@336px",
        "ViT-L-14-336px.pt",
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        "timm/vit_large_patch14_clip_336.openai",
        "openai/clip-vit-large-patch14-336",
    ),
)
RELEASED: Dict[str, ReleasedModel] = {entry.name: entry for entry in _ENTRIES}  # in the release's order
# The original's name -> URL table. `clip.clip._MODELS` is this very dict, so that pointing a name at
# a mirror there (`clip.clip._MODELS[name] = url`, as projects written for the original do) redirects
# its download: `release_url` reads the table at call time.
RELEASE_URLS: Dict[str, str] = {entry.name: entry.url for entry in _ENTRIES}


def released(name: str) -> Optional[ReleasedModel]:
    """The registry entry of a released model name, or None for any other string."""
    return RELEASED.get(name)


def release_url(name: str) -> Optional[str]:
    """The URL the release file of `name` is downloaded from, as :data:`RELEASE_URLS` holds it now;
    None for a name that is not in the table."""
    return RELEASE_URLS.get(name)


def hub_files(name: str) -> List[HubFile]:
    """The hub copies of a released model (none for another name), in the order they are tried."""
    entry = RELEASED.get(name)
    return entry.hub_files() if entry is not None else []
