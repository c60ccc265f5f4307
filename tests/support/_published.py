"""The release's published outputs, the README procedures that produce them, and real-weight lookup.

Shared by tests/test_published.py, tests/test_consistency.py, tests/test_cli.py and
tests/data/make_published_golden.py. Two README examples are reproduced:

* CLIP.png against "a diagram", "a dog", "a cat": the softmax of ``logits_per_image``;
* CIFAR-100 test image 3637 against "a photo of a {label}" for the 100 classes: the softmax of
  100 x the cosine similarities, top 5.

Each runs either on the released ViT-B/32 (when its weights are cached, or may be downloaded:
``CLIP_ALLOW_DOWNLOAD=1``) against the published numbers, or on a tiny test-made archive against
numbers the original implementation produced for it (tests/data/published_golden.json).
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent.parent  # tests/
REPO_ROOT = HERE.parent
CLIP_PNG = REPO_ROOT / "CLIP.png"
GOLDEN_PATH = HERE / "data" / "published_golden.json"
REGENERATE = "stale golden data: regenerate with tests/data/make_published_golden.py"

ALLOW_DOWNLOAD_ENV = "CLIP_ALLOW_DOWNLOAD"
DATA_DIR_ENV = "CLIP_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache"  # where the README's CIFAR-100 example keeps the dataset

# ---- Published figures (FACTS.md, "Published outputs") --------------------------------------
README_TEXTS = ("a diagram", "a dog", "a cat")
PUBLISHED_README_PROBS = ((0.9927937, 0.00421068, 0.00299572),)
CIFAR_TEMPLATE = "a photo of a {}"
CIFAR_IMAGE_INDEX = 3637
PUBLISHED_CIFAR_TOP5 = (
    ("snake", 0.6531),
    ("turtle", 0.1229),
    ("sweet_pepper", 0.0383),
    ("lizard", 0.0188),
    ("crocodile", 0.0175),
)
SIMILARITY_SCALE = 100.0  # the README's CIFAR example scales cosine similarities by a fixed 100

# ---- Tolerances ---------------------------------------------------------------------------------
# Real weights against the published numbers: we run fp32 on the CPU; the published runs may have
# been fp16 on a GPU (the README's code picks "cuda" when available; its printed probabilities carry
# float32 digits, so at least the softmax was fp32, but how the features were computed is not
# known). fp16 keeps ~3 significant digits, so unit-norm features carry errors of about
# 1e-3, which the logit scale of 100 turns into logit errors up to ~0.1, i.e. relative changes up
# to ~10% in each probability (d log p = d logit for the small ones). Hence rtol=0.1 per label, the
# rtol the original's own jit/non-jit test uses. The top probability is then pinned by the small
# ones (they sum to 1), and the ranking is asserted separately. atol covers the printed rounding
# (4 significant digits for the CIFAR percentages).
PUBLISHED_RTOL = 0.1
PUBLISHED_ATOL = 1e-4
# Tiny archives against the original in fp32 on the CPU: the same arithmetic up to the order of
# float additions (SDPA vs nn.MultiheadAttention, other BLAS kernels on other CPUs), ~1e-6 relative
# on features, i.e. ~1e-4 on logits at scale 100, ~1e-4 relative on probabilities. (Measured here:
# 3e-9 relative, the precision the JSON keeps.) atol only matters for probabilities below 1e-2.
GOLDEN_RTOL = 1e-4
GOLDEN_ATOL = 1e-6

PATTERN_SIZE = 32  # CIFAR images are 32 x 32
PATTERN_STEPS = (7, 13, 50)  # per (x, y, channel) increments of the deterministic test pattern
LEVELS = 256


# ---- The README procedures ----------------------------------------------------------------------


def readme_label_probs(
    model: torch.nn.Module,
    preprocess: Any,
    image: Image.Image,
    texts: Sequence[str] = README_TEXTS,
    device: str = "cpu",
) -> np.ndarray:
    """The README's first example: softmax over `texts` of ``logits_per_image``; shape [1, len(texts)]."""
    import clip

    pixels = preprocess(image).unsqueeze(0).to(device)  # [1, 3, R, R]
    tokens = clip.tokenize(list(texts)).to(device)
    with torch.no_grad():
        logits_per_image, _ = model(pixels, tokens)
    return logits_per_image.float().softmax(dim=-1).cpu().numpy()


def cifar_top5(
    model: torch.nn.Module,
    preprocess: Any,
    image: Image.Image,
    classes: Sequence[str],
    device: str = "cpu",
) -> List[Tuple[str, float]]:
    """The README's second example: the 5 most likely classes for `image`, with probabilities."""
    import clip

    pixels = preprocess(image).unsqueeze(0).to(device)
    tokens = clip.tokenize([CIFAR_TEMPLATE.format(name) for name in classes]).to(device)
    with torch.no_grad():
        image_features = model.encode_image(pixels).float()  # [1, D]
        text_features = model.encode_text(tokens).float()  # [C, D]
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    similarity = (SIMILARITY_SCALE * image_features @ text_features.T).softmax(dim=-1)  # [1, C]
    values, indices = similarity[0].topk(5)
    return [(classes[int(i)], float(v)) for v, i in zip(values, indices)]


def pattern_image() -> Image.Image:
    """A deterministic 32 x 32 RGB image (pure arithmetic: the same with any numpy or Pillow)."""
    y, x, c = np.meshgrid(np.arange(PATTERN_SIZE), np.arange(PATTERN_SIZE), np.arange(3), indexing="ij")
    dx, dy, dc = PATTERN_STEPS
    pixels = ((x * dx + y * dy + c * dc + x * y) % LEVELS).astype(np.uint8)  # [H, W, 3]
    return Image.fromarray(pixels, "RGB")


def image_sha256(image: Image.Image) -> str:
    """SHA256 of the RGB pixel bytes of `image`."""
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def load_golden() -> Dict[str, Any]:
    """tests/data/published_golden.json (the original's outputs on the tiny archives)."""
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


# ---- Real weights and data ---------------------------------------------------------------------


def download_allowed() -> bool:
    """True when ``CLIP_ALLOW_DOWNLOAD=1``: tests may fetch released weights and datasets."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV) == "1"


def released_model(name: str) -> str:
    """The name to pass to `clip.load` for released weights, or skip the test, saying how to run it.

    Runs when the file is in the cache (``$CLIP_CACHE_DIR`` or ``~/.cache/clip``; `clip.load`
    checks its SHA256), or when ``CLIP_ALLOW_DOWNLOAD=1`` lets `clip.load` download it.
    """
    from clip._weights.download import default_cache_dir
    from clip.clip import _MODELS

    url = _MODELS[name]
    cached = os.path.join(default_cache_dir(), os.path.basename(url))
    if os.path.isfile(cached) or download_allowed():
        return name
    pytest.skip(
        f"needs the released {name} weights, not found at {cached}. To run: set "
        f"{ALLOW_DOWNLOAD_ENV}=1 to download them, or save {url} there (or set CLIP_CACHE_DIR to a "
        "directory holding it); `pytest -m real_weights` selects these tests"
    )


def cifar100_test_set() -> Any:
    """torchvision's CIFAR-100 test split from ``$CLIP_DATA_DIR`` (default ``~/.cache``), or skip.

    Downloaded only when ``CLIP_ALLOW_DOWNLOAD=1``.
    """
    from torchvision.datasets import CIFAR100

    root = os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    folder = os.path.join(root, CIFAR100.base_folder)
    if not os.path.isdir(folder) and not download_allowed():
        pytest.skip(
            f"needs the CIFAR-100 test set, not found at {folder}. To run: set {ALLOW_DOWNLOAD_ENV}=1 "
            f"to download it with torchvision, or set {DATA_DIR_ENV} to the directory holding "
            f"{CIFAR100.base_folder}/"
        )
    return CIFAR100(root, train=False, download=download_allowed())
