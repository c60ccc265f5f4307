"""The contrastive loss CLIP is trained with, on one process or across a `torch.distributed` group.

    logits_per_image, logits_per_text = model(images, texts)
    loss = contrastive_loss(logits_per_image, logits_per_text)

The paper's pseudocode: for a batch of N matching (image, text) pairs, the cross-entropy of each
row of the N x N similarity matrix against its diagonal entry, averaged over the image rows and
the text rows. `ClipLoss` computes the same from normalised features and the logit scale, and
under `torch.distributed` gathers the features of every rank first, so that each image is
contrasted with the texts of the whole global batch, not only those of its own rank.
"""

import math
import numbers
import warnings
from typing import Any, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["contrastive_loss", "ClipLoss", "gather_features"]

# Input sanity checks. Those reading values cost a device sync, so they run on the first call only
# (of the process for `contrastive_loss`, of each instance for `ClipLoss`) and only warn.
MAX_SCALE = 100.0  # the paper clips the logit scale multiplier at 100
NORM_TOLERANCE = 0.1  # unit-norm features: row norms in [0.9, 1.1], far above fp16/bf16 rounding
# model.logit_scale (the log) at initialisation, ln(1 / 0.07), and at the clip, ln(100): a
# multiplier this close to either is almost surely the log passed where .exp() belongs
KNOWN_LOG_SCALES = (math.log(1 / 0.07), math.log(MAX_SCALE))
LOG_SCALE_TOLERANCE = 2e-3  # fp16 rounds these values by < 1e-3
_logits_checked = False  # contrastive_loss: the magnitude check has run in this process


def contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy against the diagonal: (CE(images -> texts) + CE(texts -> images)) / 2.

    Args:
        logits_per_image: (N, N) scaled similarities, row i = image i against every text.
        logits_per_text: (N, N) the transpose, row j = text j against every image.

    Returns:
        The scalar loss, computed in float32 at least (fp16 and bf16 logits are widened first).

    Raises TypeError for logits that are not floating-point tensors and ValueError for an empty
    batch or mismatched shapes. The first call of the process warns when a logit exceeds 110 in
    magnitude: CLIP's are at most 100 (unit-norm features times a scale of at most 100), so the
    features were probably not normalised.
    """
    global _logits_checked
    _check_logits(logits_per_image, logits_per_text)
    if not _logits_checked:
        _logits_checked = True
        largest = logits_per_image.detach().abs().max().item()  # one device sync, once per process
        if largest > MAX_SCALE * (1 + NORM_TOLERANCE):
            warnings.warn(
                f"contrastive_loss: logits reach {largest:.4g}, while CLIP's are at most {MAX_SCALE:g} "
                "(unit-norm features times model.logit_scale.exp(), clipped at 100): normalise the "
                "features (F.normalize(x, dim=-1)) before taking their products; checked on the first "
                "call only",
                stacklevel=2,
            )
    return _contrastive_loss(logits_per_image, logits_per_text)


def _require_floating(what: str, value: Any, prefix: str, meaning: str, advice: str, shape: str = "") -> None:
    """A TypeError, worded `prefix` + `what` ..., unless `value` is a floating-point tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{prefix}{what} must be a torch.Tensor{shape}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{prefix}{what} must be floating point ({meaning}), got {value.dtype}{advice}")


def _check_logits(logits_per_image: Any, logits_per_text: Any) -> None:
    for what, logits in (("logits_per_image", logits_per_image), ("logits_per_text", logits_per_text)):
        _require_floating(what, logits, "", "scaled similarities", ": convert with .float()")
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
    if logits_per_image.shape[0] == 0:
        raise ValueError("an empty batch (N=0) has no contrastive loss: skip it")


def _contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
    """`contrastive_loss` of square logits, unchecked (ClipLoss checks its own inputs)."""
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

    Call with ``(image_features, text_features, logit_scale)``: (N, D) floating-point features, each
    row of unit norm, and the positive scale *multiplier* (``model.logit_scale.exp()``), as a float
    or a one-element tensor. Returns the scalar loss.

    Raises TypeError (a flag that is not a bool, integer features, a scale that is not a number or
    tensor) or ValueError (an empty batch, a per-sample scale, a scale that is not positive) naming
    the argument. The first call of each instance also checks values, with one device sync: it
    raises for a scale tensor that is not positive and warns when feature rows are far from unit
    norm or the scale looks like the log (``model.logit_scale`` itself, not its ``.exp()``).
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False) -> None:
        super().__init__()
        for name, value in (("local_loss", local_loss), ("gather_with_grad", gather_with_grad)):
            if not isinstance(value, bool):
                raise TypeError(f"ClipLoss: {name} must be a bool (True or False), got {value!r}")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self._values_checked = False  # the first call's value checks (one device sync) have run
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
        _check_features(image_features, text_features)
        _check_scale(logit_scale)
        if not getattr(self, "_values_checked", False):  # getattr: instances pickled before the check
            self._values_checked = True
            _check_values(image_features, text_features, logit_scale)
        rank, world = _distributed()
        if world == 1:
            logits_per_image = logit_scale * image_features @ text_features.t()
            return _contrastive_loss(logits_per_image, logits_per_image.t())
        all_images, all_texts = gather_features(image_features, text_features, self.gather_with_grad)
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_texts.t()  # (N, world * N)
            logits_per_text = logit_scale * text_features @ all_images.t()
            count = image_features.shape[0]
            labels = self._labels_for(count, image_features.device, rank * count)
            return _symmetric_cross_entropy(logits_per_image, logits_per_text, labels)
        logits_per_image = logit_scale * all_images @ all_texts.t()  # (world * N, world * N)
        return _contrastive_loss(logits_per_image, logits_per_image.t())


def _check_features(image_features: Any, text_features: Any) -> None:
    for what, features in (("image_features", image_features), ("text_features", text_features)):
        _require_floating(what, features, "ClipLoss: ", "unit-norm features", "", " (N, D)")
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "ClipLoss expects image and text features of the same shape (N, D); got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    if image_features.shape[0] == 0:
        raise ValueError("ClipLoss: an empty batch (N=0) has no contrastive loss: skip it")


def _check_scale(logit_scale: Union[torch.Tensor, float]) -> None:
    """Type and shape of the scale on every call (free); a Python number's value too."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(
                "ClipLoss: logit_scale must be one number for the whole batch (model.logit_scale.exp(), "
                f"a 0-d tensor), got a tensor of shape {tuple(logit_scale.shape)}"
            )
        return
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise TypeError(
            "ClipLoss: logit_scale must be the scale multiplier model.logit_scale.exp() (a 0-d tensor or "
            f"a float), got {type(logit_scale).__name__}"
        )
    _check_positive(float(logit_scale))


def _check_positive(scale: float) -> None:
    if not scale > 0 or math.isinf(scale):
        raise ValueError(
            "ClipLoss: logit_scale must be a positive, finite multiplier (model.logit_scale.exp()), got "
            f"{scale}"
        )


def _check_values(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: Union[torch.Tensor, float]
) -> None:
    """The first call's checks of values: one device sync for the norms and the scale together."""
    with torch.no_grad():
        norms = torch.cat([image_features.float().norm(dim=-1), text_features.float().norm(dim=-1)])
        stats = [norms.min(), norms.max()]
        if isinstance(logit_scale, torch.Tensor):
            stats.append(logit_scale.detach().float().reshape(()).to(norms.device))
        values = torch.stack(stats).tolist()
    smallest, largest = values[0], values[1]
    scale = values[2] if isinstance(logit_scale, torch.Tensor) else float(logit_scale)
    _check_positive(scale)
    if isinstance(logit_scale, nn.Parameter) or any(
        abs(scale - log) < LOG_SCALE_TOLERANCE for log in KNOWN_LOG_SCALES
    ):
        warnings.warn(
            f"ClipLoss: logit_scale is {scale:.4g}, which looks like model.logit_scale itself (the log of "
            "the scale): pass model.logit_scale.exp() (checked on the first call only)",
            stacklevel=3,
        )
    if not (1 - NORM_TOLERANCE <= smallest and largest <= 1 + NORM_TOLERANCE):
        warnings.warn(
            f"ClipLoss: feature rows have norms from {smallest:.4g} to {largest:.4g}, but the loss expects "
            "unit-norm features: normalise them first (F.normalize(features, dim=-1)); checked on the "
            "first call only",
            stacklevel=3,
        )
