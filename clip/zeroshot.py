"""Zero-shot classification with prompt ensembles, as in the release's notebooks.

>>> import clip
>>> from clip import zeroshot
>>> model, preprocess = clip.load("ViT-B/32")
>>> classifier = zeroshot.build_classifier(model, zeroshot.IMAGENET_CLASSES, zeroshot.IMAGENET_TEMPLATES)
>>> logits = zeroshot.predict(model, images, classifier)           # [N, 1000], 100 x cosine
>>> top1, top5 = zeroshot.accuracy(logits, targets, topk=(1, 5))  # correct counts, as the release

The class names and templates are package data (``clip/prompts/*.json``), read on first access:

* ``IMAGENET_CLASSES`` (1000) and ``IMAGENET_TEMPLATES`` (80): the release's edited ImageNet class
  names and the templates behind its published ImageNet zero-shot results;
* ``CIFAR10_CLASSES`` (10), ``CIFAR100_CLASSES`` (100) and ``CIFAR_TEMPLATES`` (18): the names and
  templates of the release's CIFAR evaluation (names as words: ``"aquarium fish"``, not
  ``"aquarium_fish"``).
"""

import functools
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from .clip import tokenize

__all__ = [
    "IMAGENET_CLASSES",
    "IMAGENET_TEMPLATES",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR_TEMPLATES",
    "build_classifier",
    "accuracy",
    "predict",
]

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
LOGIT_SCALE = 100.0  # the release's notebooks scale cosine similarities by a fixed 100
DEFAULT_BATCH_SIZE = 256

# Public name -> (package data file, key in it). Read lazily by the module's __getattr__.
_DATA: Dict[str, Tuple[str, str]] = {
    "IMAGENET_CLASSES": ("imagenet.json", "classes"),
    "IMAGENET_TEMPLATES": ("imagenet.json", "templates"),
    "CIFAR10_CLASSES": ("cifar.json", "cifar10_classes"),
    "CIFAR100_CLASSES": ("cifar.json", "cifar100_classes"),
    "CIFAR_TEMPLATES": ("cifar.json", "templates"),
}

Device = Union[str, torch.device, None]

# Declared for type checkers and `__all__`; the values come from `__getattr__` on first access.
IMAGENET_CLASSES: Tuple[str, ...]
IMAGENET_TEMPLATES: Tuple[str, ...]
CIFAR10_CLASSES: Tuple[str, ...]
CIFAR100_CLASSES: Tuple[str, ...]
CIFAR_TEMPLATES: Tuple[str, ...]


@functools.cache
def _read(file_name: str) -> Dict[str, Any]:
    return json.loads((PROMPTS_DIR / file_name).read_text(encoding="utf-8"))


def __getattr__(name: str) -> Tuple[str, ...]:
    if name in _DATA:
        file_name, key = _DATA[name]
        return tuple(_read(file_name)[key])  # a tuple: callers cannot alter the shared lists
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(list(globals()) + list(_DATA))


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def build_classifier(
    model: torch.nn.Module,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Device = None,
    progress: bool = True,
) -> torch.Tensor:
    """The zero-shot classifier of the release's ImageNet notebook: an ``(embed_dim, n_classes)`` tensor.

    Column ``c`` is the mean of the unit-length text embeddings of every template filled in with
    ``classnames[c]`` (``template.format(classname)``), scaled to unit length again. The prompts of
    all classes are encoded together, `batch_size` texts per `encode_text` call (a tqdm bar counts
    them when `progress`), without gradients. The result is float32 on `device` (default: the
    model's device).
    """
    classnames, templates = _check_prompts(classnames, templates)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    prompts = [template.format(name) for name in classnames for template in templates]
    owner = torch.arange(len(classnames), device=device).repeat_interleave(len(templates))  # prompt -> class
    sums: Optional[torch.Tensor] = None
    with (
        torch.no_grad(),
        tqdm(total=len(prompts), desc="class embeddings", unit="text", disable=not progress) as bar,
    ):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            embeddings = model.encode_text(tokenize(chunk).to(device)).float()  # [chunk, D]
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
            if sums is None:
                sums = torch.zeros(len(classnames), embeddings.shape[1], device=device)
            sums.index_add_(0, owner[start : start + len(chunk)], embeddings)
            bar.update(len(chunk))
    assert sums is not None
    means = sums / len(templates)  # [classes, D]
    return (means / means.norm(dim=-1, keepdim=True)).T.contiguous()  # [D, classes]


def _check_prompts(classnames: Sequence[str], templates: Sequence[str]) -> Tuple[List[str], List[str]]:
    for what, items in (("classnames", classnames), ("templates", templates)):
        if isinstance(items, str):
            raise TypeError(f"{what} must be a sequence of strings, not one string: wrap it in a list")
        if len(items) == 0:
            raise ValueError(f"{what} is empty: pass at least one")
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"{what}[{index}] is a {type(item).__name__}, not a str")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' where the class name goes")
    return list(classnames), list(templates)


def predict(model: torch.nn.Module, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, n_classes)`` of preprocessed `images` ``(N, 3, R, R)``: 100 x the cosine similarity
    of each image's features to each column of `classifier` (from `build_classifier`), as in the
    release's notebook. Float32, on the model's device; no gradients."""
    device = _model_device(model)
    with torch.no_grad():
        features = model.encode_image(images.to(device)).float()  # [N, D]
        features = features / features.norm(dim=-1, keepdim=True)
        return LOGIT_SCALE * features @ classifier.to(device=device, dtype=torch.float32)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> List[float]:
    """For each k in `topk`, how many rows of `logits` ``(N, n_classes)`` have their target class
    (``targets``, ``(N,)`` column indices) among their k largest logits.

    Counts, as floats, like the release notebook's ``accuracy``: they add up over batches; divide by
    the number of images for a fraction.
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (N, n_classes) and targets (N,), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    ks = list(topk)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"topk must hold positive integers, got {topk!r}")
    if max(ks) > logits.shape[1]:
        raise ValueError(f"top-{max(ks)} asked of {logits.shape[1]} classes: use k <= {logits.shape[1]}")
    predicted = logits.topk(max(ks), dim=1).indices  # [N, max k]
    hits = predicted == targets.to(predicted.device).view(-1, 1)
    return [float(hits[:, :k].any(dim=1).sum()) for k in ks]
