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
TEMPLATE_PROBE = "class name"  # what a template is test-filled with before any text is encoded

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
    all classes are encoded together, shortest first, `batch_size` texts per `encode_text` call (a
    tqdm bar counts them when `progress`), without gradients: each call then computes about as many
    positions as its texts have tokens (see `CLIP.encode_text`). The result is float32 on `device`
    (default: the model's device).
    """
    classnames, templates = _check_prompts(classnames, templates)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    prompts = [template.format(name) for name in classnames for template in templates]
    tokens = tokenize(prompts)  # [prompts, 77]
    # shortest first: encode_text computes each batch up to its longest text only (see its docs)
    order = torch.sort(tokens.argmax(dim=-1), stable=True).indices
    owner = torch.arange(len(classnames)).repeat_interleave(len(templates))[order].to(device)  # -> class
    sums: Optional[torch.Tensor] = None
    with (
        torch.no_grad(),
        tqdm(total=len(prompts), desc="class embeddings", unit="text", disable=not progress) as bar,
    ):
        for start in range(0, len(prompts), batch_size):
            chunk = order[start : start + batch_size]
            embeddings = model.encode_text(tokens[chunk].to(device)).float()  # [chunk, D]
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
        try:
            template.format(TEMPLATE_PROBE)
        except (IndexError, KeyError, ValueError):
            raise ValueError(
                f"template {template!r} cannot be filled with one class name: it must hold exactly one "
                "'{}' (write a literal brace as '{{' or '}}')"
            ) from None
    return list(classnames), list(templates)


def predict(model: torch.nn.Module, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, n_classes)`` of preprocessed `images` ``(N, 3, R, R)``: 100 x the cosine similarity
    of each image's features to each column of `classifier` (from `build_classifier`), as in the
    release's notebook. Float32, on the model's device; no gradients.

    Raises TypeError when `images` or `classifier` is not a tensor, and ValueError when `classifier`
    is not ``(embed_dim, n_classes)`` or either holds no values (the meta device)."""
    for what, value in (("images", images), ("classifier", classifier)):
        if not isinstance(value, torch.Tensor):
            hint = ": stack the preprocessed images with torch.stack(images)" if what == "images" else ""
            raise TypeError(f"{what} must be a torch.Tensor, got {type(value).__name__}{hint}")
        if value.is_meta:
            raise ValueError(f"{what} is on the meta device and holds no values: pass a tensor with data")
    if classifier.ndim != 2:
        raise ValueError(
            f"classifier must be 2-D (embed_dim, n_classes), as build_classifier returns; got shape "
            f"{tuple(classifier.shape)}"
        )
    device = _model_device(model)
    with torch.no_grad():
        features = model.encode_image(images.to(device)).float()  # [N, D]
        if classifier.shape[0] != features.shape[1]:
            raise ValueError(
                f"classifier must have shape (embed_dim, n_classes) = ({features.shape[1]}, n_classes) for "
                f"this model, as build_classifier returns; got {tuple(classifier.shape)}"
                + (" (transposed? pass classifier.T)" if classifier.shape[1] == features.shape[1] else "")
            )
        features = features / features.norm(dim=-1, keepdim=True)
        return LOGIT_SCALE * features @ classifier.to(device=device, dtype=torch.float32)


def accuracy(
    logits: torch.Tensor,
    targets: Union[torch.Tensor, Sequence[int]],
    topk: Union[int, Sequence[int]] = (1, 5),
) -> List[float]:
    """For each k in `topk`, how many rows of `logits` ``(N, n_classes)`` have their target class
    (``targets``, ``(N,)`` integer column indices: a tensor or a sequence) among their k largest logits.

    Counts, as floats, like the release notebook's ``accuracy``: they add up over batches; divide by
    the number of images for a fraction. `topk` may be one int (``topk=1`` -> ``[top1]``).

    Raises ValueError when `logits` hold NaN (a NaN row is no prediction), or a target is not a class
    index in ``[0, n_classes)``; TypeError when `logits` is not a tensor or `targets` are not integers.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor (N, n_classes), got {type(logits).__name__}")
    targets = _checked_targets(targets)
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (N, n_classes) and targets (N,), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    ks = [topk] if isinstance(topk, int) and not isinstance(topk, bool) else _as_list(topk, "topk")
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"topk must be a positive integer or a sequence of them, got {topk!r}")
    if max(ks) > logits.shape[1]:
        raise ValueError(f"top-{max(ks)} asked of {logits.shape[1]} classes: use k <= {logits.shape[1]}")
    if logits.is_floating_point():
        nan_rows = torch.isnan(logits).any(dim=1).nonzero().flatten()
        if len(nan_rows):
            raise ValueError(
                f"logits hold NaN in {len(nan_rows)} of {logits.shape[0]} rows (the first: row "
                f"{int(nan_rows[0])}): a NaN row has no prediction to count; find where the NaN comes from "
                "(the images or the model) before measuring accuracy"
            )
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(
            f"targets must be class indices in [0, {logits.shape[1]}) for {logits.shape[1]} classes; got "
            f"values from {int(targets.min())} to {int(targets.max())}"
        )
    predicted = logits.topk(max(ks), dim=1).indices  # [N, max k]
    hits = predicted == targets.to(predicted.device).view(-1, 1)
    return [float(hits[:, :k].any(dim=1).sum()) for k in ks]


def _as_list(values: Any, what: str) -> List[Any]:
    try:
        return list(values)
    except TypeError:
        raise TypeError(f"{what} must be an int or a sequence of ints, got {type(values).__name__}") from None


def _checked_targets(targets: Union[torch.Tensor, Sequence[int]]) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        if isinstance(targets, (str, bytes)):
            raise TypeError(
                f"targets must be a tensor or a sequence of class indices, got {type(targets).__name__}"
            )
        try:
            targets = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                "targets must be a tensor or a sequence of integer class indices, got "
                f"{type(targets).__name__}"
            ) from None
        if targets.numel() == 0:
            targets = targets.long()  # an empty list reads as float32
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"targets must hold integer class indices, got dtype {targets.dtype}; map the labels to class "
            "indices (targets.long() if they are whole numbers)"
        )
    return targets
