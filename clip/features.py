"""Image features of whole datasets (linear probes), and retrieval recall (Flickr30k / COCO style).

>>> import clip
>>> from clip import features
>>> model, preprocess = clip.load("ViT-B/32")
>>> train_x, train_y = features.extract(model, CIFAR100(root, train=True, transform=preprocess))
>>> recalls = features.recall_at_k(image_features, text_features, text_to_image)
>>> recalls["text_to_image"][1], recalls["image_to_text"][5]
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

__all__ = ["extract", "recall_at_k"]

DEFAULT_BATCH_SIZE = 100  # the release's linear-probe example
SIMILARITY_CHUNK = 1024  # query rows per similarity block: bounds memory on COCO-sized sets
RETRIEVAL_DIRECTIONS = ("image_to_text", "text_to_image")

Device = Union[str, torch.device, None]


def extract(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = 0,
    device: Device = None,
    progress: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``model.encode_image`` over every item of `dataset`, in order: ``(features, labels)``.

    `dataset` is a map-style dataset of preprocessed images (``(3, R, R)`` tensors, e.g. a
    torchvision dataset built with ``transform=preprocess``), either alone or as ``(image, label)``
    pairs. It is read through a `DataLoader` with `num_workers` worker processes (pinned memory when
    `device` is CUDA). `device` defaults to the model's. Returns ``features``, float32 ``(N, embed_dim)``
    on the CPU, not normalised (as the release's linear-probe example uses them), and ``labels``
    ``(N,)`` (None when the items carry none). No gradients; a tqdm bar when `progress`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    features, labels = [], []
    with torch.no_grad(), tqdm(total=len(dataset), desc="features", unit="img", disable=not progress) as bar:
        for batch in loader:
            images, batch_labels = _split(batch)
            features.append(model.encode_image(images.to(device, non_blocking=True)).float().cpu())
            if batch_labels is not None:
                labels.append(_labels_tensor(batch_labels))
            bar.update(len(images))
    if not features:
        raise ValueError("the dataset is empty: there is nothing to extract")
    if labels and len(labels) != len(features):
        raise ValueError("some items of the dataset carry a label and others do not")
    return torch.cat(features), (torch.cat(labels) if labels else None)


def _split(batch: Any) -> Tuple[torch.Tensor, Optional[Any]]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1]
    raise TypeError(
        "dataset items must be preprocessed image tensors or (image tensor, label) pairs; build the "
        "dataset with transform=preprocess"
    )


def _labels_tensor(batch_labels: Any) -> torch.Tensor:
    """A batch of labels as collated by the DataLoader, as a tensor; TypeError for non-numbers."""
    if isinstance(batch_labels, torch.Tensor):
        return batch_labels
    try:
        return torch.as_tensor(batch_labels)
    except (TypeError, ValueError, RuntimeError):
        first = batch_labels[0] if isinstance(batch_labels, (list, tuple)) and batch_labels else batch_labels
        raise TypeError(
            f"dataset labels must be numbers (class indices), got {type(first).__name__} labels such as "
            f"{first!r}: map them to indices (e.g. with a target_transform)"
        ) from None


def recall_at_k(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: Union[Sequence[int], torch.Tensor],
    ks: Union[int, Sequence[int]] = (1, 5, 10),
) -> Dict[str, Dict[int, float]]:
    """Retrieval recall at each k of `ks`, in both directions, by cosine similarity.

    `image_features` ``(N_images, D)`` and `text_features` ``(N_texts, D)`` need not be normalised;
    ``text_to_image[t]`` is the index of the image that text ``t`` describes (Flickr30k and COCO
    have five captions per image). Returns ``{"text_to_image": {k: r}, "image_to_text": {k: r}}``
    with fractions in [0, 1]: a text is a hit at k when its image is among the k images most similar
    to it; an image is a hit at k when any of its texts is among the k texts most similar to it.
    Images that no text describes are left out of the image-to-text recall. `ks` may be one int.

    Raises ValueError when a feature row holds NaN or infinity or is all zeros (its similarities
    are undefined, so no recall computed from it is right), naming the input and the row, and
    TypeError when `text_to_image` is not integers (floats or bools).
    """
    images, texts = _check_features(image_features, text_features)
    owner = torch.as_tensor(text_to_image)
    if owner.is_floating_point() or owner.is_complex() or owner.dtype == torch.bool:
        raise TypeError(
            f"text_to_image must hold integer image indices, got {owner.dtype} (a float index would be cut "
            "to an integer without a word); pass ints, e.g. text_to_image.long() of whole numbers"
        )
    owner = owner.to(device=images.device, dtype=torch.long)
    if owner.shape != (texts.shape[0],):
        raise ValueError(
            f"text_to_image must hold one image index per text ({texts.shape[0]}), got {tuple(owner.shape)}"
        )
    if len(owner) and (int(owner.min()) < 0 or int(owner.max()) >= images.shape[0]):
        raise ValueError(f"text_to_image holds indices outside 0..{images.shape[0] - 1}")
    given = ks
    ks = [ks] if isinstance(ks, int) and not isinstance(ks, bool) else _as_list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a positive integer or a sequence of them, got {given!r}")
    _check_defined(images, "image_features")
    _check_defined(texts, "text_features")
    described = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    described[owner] = True
    if not bool(described.any()):
        raise ValueError("no texts: there is nothing to retrieve")

    text_hits = _first_hit_rank(texts, images, lambda rows, top: top == owner[rows].view(-1, 1), max(ks))
    image_hits = _first_hit_rank(images, texts, lambda rows, top: owner[top] == rows.view(-1, 1), max(ks))
    image_hits = image_hits[described]
    return {
        "image_to_text": {k: float((image_hits < k).float().mean()) for k in ks},
        "text_to_image": {k: float((text_hits < k).float().mean()) for k in ks},
    }


def _as_list(ks: Any) -> List[Any]:
    try:
        return list(ks)
    except TypeError:
        raise TypeError(f"ks must be an int or a sequence of ints, got {type(ks).__name__}") from None


def _check_defined(normalized: torch.Tensor, what: str) -> None:
    """ValueError naming the first row of unit-normalised features that is not finite."""
    bad = (~torch.isfinite(normalized).all(dim=1)).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"{what} row {int(bad[0])} holds NaN or infinity, or is all zeros ({len(bad)} such rows of "
            f"{normalized.shape[0]}): its cosine similarities are undefined, so no recall is right. Find "
            "where those values come from (the inputs or the model) first"
        )


def _check_features(
    image_features: torch.Tensor, text_features: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    for what, value in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(value, torch.Tensor) or value.ndim != 2:
            raise ValueError(f"{what} must be a 2-D tensor (N, D)")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image and text features differ in width: {image_features.shape[1]} vs {text_features.shape[1]}"
        )
    images = image_features.float()
    texts = text_features.float().to(images.device)
    return images / images.norm(dim=-1, keepdim=True), texts / texts.norm(dim=-1, keepdim=True)


def _first_hit_rank(queries: torch.Tensor, candidates: torch.Tensor, is_hit: Any, max_k: int) -> torch.Tensor:
    """Per query: the rank (0-based) of its first relevant candidate among the `max_k` most similar,
    or `max_k` when none is there."""
    k = min(max_k, candidates.shape[0])
    ranks = []
    for start in range(0, queries.shape[0], SIMILARITY_CHUNK):
        rows = torch.arange(start, min(start + SIMILARITY_CHUNK, queries.shape[0]), device=queries.device)
        top = (queries[rows] @ candidates.T).topk(k, dim=1).indices  # [chunk, k]
        hits = is_hit(rows, top)  # [chunk, k] bool
        first = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.full_like(rows, max_k))
        ranks.append(first)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=queries.device)
