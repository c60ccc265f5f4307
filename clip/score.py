"""CLIPScore: how well a caption fits an image, without reference captions (Hessel et al., 2021).

>>> import clip
>>> from clip import score
>>> model, preprocess = clip.load("ViT-B/32")
>>> images = torch.stack([preprocess(Image.open(p)) for p in paths])
>>> score.clip_score(model, images, captions)                  # (N,), each in [0, 2.5]
>>> score.ref_clip_score(model, images, captions, references)  # (N,), each in [0, 1.43]

The definitions of "CLIPScore: A Reference-free Evaluation Metric for Image Captioning" (Hessel,
Holtzman, Forbes, Le Bras and Choi, EMNLP 2021), as their reference implementation computes them:

* every caption and reference is prefixed with ``"A photo depicts "`` and tokenized with
  ``truncate=True``; image and text features are L2-normalised;
* ``CLIP-S(c, v) = 2.5 * max(cos(v, c), 0)`` for image v and caption c;
* ``RefCLIP-S(c, R, v) = H-mean(CLIP-S(c, v), max(max_{r in R} cos(c, r), 0))``, the harmonic mean
  ``2ab / (a + b)``, 0 when both terms are 0.

The paper reports the mean over a corpus, times 100 in its tables. Other libraries report
``100 * cos`` (see docs/explain.md for converting).
"""

from typing import List, Sequence

import torch
from tqdm import tqdm

__all__ = ["clip_score", "ref_clip_score", "CAPTION_PREFIX", "CLIPSCORE_WEIGHT"]

CAPTION_PREFIX = "A photo depicts "  # the paper's prompt, before every caption and reference
CLIPSCORE_WEIGHT = 2.5  # w of the paper: stretches cosines (rarely above 0.4) towards [0, 1]
DEFAULT_BATCH_SIZE = 64
DEFAULT_CONTEXT = 77  # clip.tokenize's context, for a model that does not say its own


def clip_score(
    model: torch.nn.Module,
    images: torch.Tensor,
    captions: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    prefix: str = CAPTION_PREFIX,
) -> torch.Tensor:
    """CLIP-S of each pair (image n, caption n): ``2.5 * max(cos(image, "A photo depicts " + caption), 0)``.

    `images` are (N, 3, R, R) preprocessed images (the `preprocess` of `clip.load`, stacked), on any
    device (moved to the model's); `captions` N strings. Works with any model `clip.load` returns
    (jit, bf16, int8). Returns a float32 CPU tensor (N,); the corpus score is its mean.
    `prefix` is put before each caption (the paper's "A photo depicts "; "" for none).
    """
    image_features = _image_features(model, images, batch_size, progress)
    captions = _texts(captions, "captions")
    _same_count(image_features, captions)
    caption_features = _text_features(model, captions, batch_size, progress, prefix)
    return _clip_s(image_features, caption_features)


def ref_clip_score(
    model: torch.nn.Module,
    images: torch.Tensor,
    captions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    prefix: str = CAPTION_PREFIX,
) -> torch.Tensor:
    """RefCLIP-S of each pair: the harmonic mean of CLIP-S and the best reference's cosine.

    ``H-mean(CLIP-S(c, v), max(max_{r in R} cos(c, r), 0))``, where `references[n]` is the list of
    reference captions of image n (at least one each); references get the same "A photo depicts "
    prefix as captions. 0 where both terms are 0. Returns a float32 CPU tensor (N,).
    """
    image_features = _image_features(model, images, batch_size, progress)
    captions = _texts(captions, "captions")
    _same_count(image_features, captions)
    if (
        isinstance(references, str)
        or not isinstance(references, Sequence)
        or len(references) != len(captions)
    ):
        count = len(references) if isinstance(references, Sequence) else type(references).__name__
        raise ValueError(
            f"references must hold one list of reference captions per image: {len(captions)} images, "
            f"got {count}"
        )
    flat: List[str] = []
    owners: List[int] = []
    for index, refs in enumerate(references):
        refs = _texts(refs, f"references[{index}]")
        flat += refs
        owners += [index] * len(refs)
    caption_features = _text_features(model, captions, batch_size, progress, prefix)
    reference_features = _text_features(model, flat, batch_size, progress, prefix)
    clip_s = _clip_s(image_features, caption_features)
    similarity = (reference_features * caption_features[owners]).sum(dim=-1)  # cos(c_owner, r)
    best = torch.full((len(captions),), float("-inf")).scatter_reduce(
        0, torch.tensor(owners), similarity, reduce="amax"
    )
    ref_term = best.clamp(min=0)
    total = clip_s + ref_term
    harmonic = 2 * clip_s * ref_term / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, harmonic, torch.zeros_like(total))


def _clip_s(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    return CLIPSCORE_WEIGHT * (image_features * text_features).sum(dim=-1).clamp(min=0)


def _texts(values: Sequence[str], what: str) -> List[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{what} must be a list of strings; got {type(values).__name__}")
    values = list(values)
    if not values:
        raise ValueError(f"{what} is empty: give at least one caption")
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{what} must hold strings; got a {type(value).__name__}")
    return values


def _same_count(image_features: torch.Tensor, captions: List[str]) -> None:
    if image_features.shape[0] != len(captions):
        raise ValueError(
            f"CLIPScore scores pairs (image n, caption n): got {image_features.shape[0]} images and "
            f"{len(captions)} captions"
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _model_device(model: torch.nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _image_features(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int, progress: bool
) -> torch.Tensor:
    """L2-normalised float32 image features (N, D) on the CPU."""
    _check_batch_size(batch_size)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shown = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a float tensor (N, 3, R, R) of preprocessed images; got {shown}. Use the "
            "`preprocess` returned by clip.load and torch.stack the results"
        )
    if images.shape[0] == 0:
        raise ValueError("images is empty: there is nothing to score")
    device = _model_device(model)
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, images.shape[0], batch_size), desc="images", disable=not progress):
            features = model.encode_image(images[start : start + batch_size].to(device)).float()
            out.append((features / features.norm(dim=-1, keepdim=True)).cpu())
    return torch.cat(out)


def _text_features(
    model: torch.nn.Module, texts: List[str], batch_size: int, progress: bool, prefix: str
) -> torch.Tensor:
    """L2-normalised float32 features (N, D) of prefix + text, tokenized with truncate=True."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string; got {type(prefix).__name__}")
    from ._tokenize import tokenize

    device = _model_device(model)
    context = int(getattr(model, "context_length", DEFAULT_CONTEXT))  # a tensor buffer in jit archives
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="texts", disable=not progress):
            chunk = [prefix + text for text in texts[start : start + batch_size]]
            tokens = tokenize(chunk, context_length=context, truncate=True)
            features = model.encode_text(tokens.to(device)).float()
            out.append((features / features.norm(dim=-1, keepdim=True)).cpu())
    return torch.cat(out)
