"""`clip`: a faithful, drop-in mirror of OpenAI's CLIP release.

>>> import clip
>>> clip.available_models()
>>> model, preprocess = clip.load("ViT-B/32", device="cpu")
>>> tokens = clip.tokenize(["a diagram", "a dog", "a cat"])
"""

from . import model
from ._preprocess import preprocess_batch
from ._quantize import quantize
from .clip import available_models, load, tokenize

__all__ = ["available_models", "load", "tokenize", "preprocess_batch", "model", "quantize"]
__version__ = "1.0.0"
