"""The contrastive loss CLIP is trained with, on one process or across a `torch.distributed` group.

    logits_per_image, logits_per_text = model(images, texts)
    loss = contrastive_loss(logits_per_image, logits_per_text)

The paper's pseudocode: for a batch of N matching (image, text) pairs, the cross-entropy of each
row of the N x N similarity matrix against its diagonal entry, averaged over the image rows and
the text rows. `ClipLoss` computes the same from normalised features and the logit scale, and
under `torch.distributed` gathers the features of every rank first, so that each image is
contrasted with the texts of the whole global batch, not only those of its own rank.
"""

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["contrastive_loss", "ClipLoss", "gather_features"]


def contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy against the diagonal: (CE(images -> texts) + CE(texts -> images)) / 2.

    Args:
        logits_per_image: (N, N) scaled similarities, row i = image i against every text.
        logits_per_text: (N, N) the transpose, row j = text j against every image.

    Returns:
        The scalar loss, computed in float32 at least (fp16 and bf16 logits are widened first).
    """
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(
            "logits_per_image must be a square (N, N) matrix of matching pairs; got "
            f"{tuple(logits_per_image.shape)}"
        )
    if logits_per_text.shape != logits_per_image.shape:
        raise ValueError(
            f"logits_per_text must have the shape of logits_per_image {tuple(logits_per_image.shape)}; "
            f"got {tuple(logits_per_text.shape)}"
        )
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return _symmetric_cross_entropy(logits_per_image, logits_per_text, labels)


def _symmetric_cross_entropy(
    logits_per_image: torch.Tensor, logits_per_text: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    def widened(logits: torch.Tensor) -> torch.Tensor:  # fp16/bf16 -> fp32; fp32 and fp64 kept
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    return (
        F.cross_entropy(widened(logits_per_image), labels) + F.cross_entropy(widened(logits_per_text), labels)
    ) / 2


def _distributed() -> Tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(
    image_features: torch.Tensor, text_features: torch.Tensor, with_grad: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the features of every rank, in rank order: (N, D) each -> (world * N, D) each.

    Every rank must pass the same batch size. With `with_grad`, gradients flow back to the rank
    that computed each slice (the all-gather's backward sums them there); without, only this
    rank's own slice (put back in place) carries gradients. Outside `torch.distributed`, the
    inputs are returned as they are.
    """
    rank, world = _distributed()
    if world == 1:
        return image_features, text_features
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(image_features), dim=0), torch.cat(all_gather(text_features), dim=0)
    gathered: List[torch.Tensor] = []
    for local in (image_features, text_features):
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.detach().contiguous())
        parts[rank] = local  # this rank's own features keep their graph
        gathered.append(torch.cat(parts, dim=0))
    return gathered[0], gathered[1]


class ClipLoss(nn.Module):
    """The contrastive loss of normalised features and the logit scale, over the global batch.

    Args:
        local_loss: under `torch.distributed`, compute only this rank's rows (its images against
            every text, its texts against every image), labels offset by rank. The mean over
            ranks equals the global loss, at 1/world of the cost per rank. Default False: every
            rank computes the whole (global N x global N) loss.
        gather_with_grad: let gradients flow through the gathered features of other ranks. With
            True, gradients averaged over ranks by DistributedDataParallel equal those of one
            process on the global batch. With False (the default, as open_clip), only a rank's
            own features receive gradients, and averaged gradients of the features' parameters
            are 1/world of the single-process ones (the logit scale's are not scaled).

    Call with ``(image_features, text_features, logit_scale)``: (N, D) features, each row of unit
    norm, and the scale *multiplier* (``model.logit_scale.exp()``), as a 0-d tensor or a float.
    Returns the scalar loss.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self._labels: Optional[torch.Tensor] = None  # cached for the last (size, device, offset)
        self._labels_key: Optional[Tuple[int, torch.device, int]] = None

    def _labels_for(self, count: int, device: torch.device, offset: int) -> torch.Tensor:
        key = (count, device, offset)
        if self._labels is None or self._labels_key != key:
            self._labels = torch.arange(offset, offset + count, device=device)
            self._labels_key = key
        return self._labels

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        if image_features.dim() != 2 or image_features.shape != text_features.shape:
            raise ValueError(
                "ClipLoss expects image and text features of the same shape (N, D); got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        rank, world = _distributed()
        if world == 1:
            logits_per_image = logit_scale * image_features @ text_features.t()
            return contrastive_loss(logits_per_image, logits_per_image.t())
        all_images, all_texts = gather_features(image_features, text_features, self.gather_with_grad)
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_texts.t()  # (N, world * N)
            logits_per_text = logit_scale * text_features @ all_images.t()
            count = image_features.shape[0]
            labels = self._labels_for(count, image_features.device, rank * count)
            return _symmetric_cross_entropy(logits_per_image, logits_per_text, labels)
        logits_per_image = logit_scale * all_images @ all_texts.t()  # (world * N, world * N)
        return contrastive_loss(logits_per_image, logits_per_image.t())
