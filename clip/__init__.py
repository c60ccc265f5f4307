"""`clip`: a faithful, drop-in mirror of OpenAI's CLIP release.

>>> import clip
>>> clip.available_models()
>>> model, preprocess = clip.load("ViT-B/32", device="cpu")
>>> tokens = clip.tokenize(["a diagram", "a dog", "a cat"])
"""

from ._versions import check_installed

check_installed()  # one clear ImportError on a too-old torch, before anything fails deep inside

from . import explain, features, loss, model, score, zeroshot  # noqa: E402
from ._preprocess import preprocess_batch  # noqa: E402
from ._quantize import quantize  # noqa: E402
from .clip import available_models, load, tokenize  # noqa: E402

__all__ = [
    "available_models",
    "load",
    "tokenize",
    "preprocess_batch",
    "model",
    "zeroshot",
    "features",
    "loss",
    "quantize",
    "explain",
    "score",
]
__version__ = "1.0.0"
