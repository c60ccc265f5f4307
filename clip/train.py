"""Fine-tune a CLIP (or train one from scratch) on image-caption pairs listed in a CSV/TSV file.

    from clip.train import TrainConfig, train
    history = train(TrainConfig(train_data="pairs.csv", model="ViT-B/32", epochs=2, lr=1e-5))

The command line is ``python -m clip train`` (see ``clip train --help``); under ``torchrun`` it
trains with DistributedDataParallel (gloo on CPUs, nccl on GPUs), every rank on its share of each
global batch, the contrastive loss over the whole global batch (`clip.loss.ClipLoss`), and only
rank 0 writing logs and checkpoints.

Conventions (those of open_clip's training script): AdamW, no weight decay on gains, biases,
embeddings and the logit scale; a cosine learning-rate schedule after a linear warmup, set every
step; the logit scale clamped at ln(100) after every step, as in the paper; master weights in fp32
whatever the checkpoint holds (released weights are fp16: training them in fp16 gives NaNs); the
amp modes compute under `torch.autocast`. Checkpoints (``LOGS/checkpoints/epoch_N.pt``) are written
atomically and hold ``{"state_dict": ...}`` beside the optimizer state: `clip.load` reads them, and
``resume`` continues from one to the result an uninterrupted run gives. A ``LOGS`` folder that
already holds a run is refused unless that run is resumed (see clip/_train_run.py).
"""

import contextlib
import dataclasses
import functools
import json
import logging
import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ._train_data import CsvDataset, collate, default_separator
from ._train_run import (
    CHECKPOINT_DIR,
    LATEST,
    LOG_FILE,
    append_log,
    check_logs,
    latest_checkpoint,
    one_line,
    read_resume,
    save_checkpoint,
)
from .loss import ClipLoss, contrastive_loss
from .model import CLIP, HEAD_WIDTH, RESNET_TOTAL_STRIDE, CLIPDimensions

__all__ = [
    "TrainConfig",
    "train",
    "cosine_lr",
    "parameter_groups",
    "build_from_config",
    "read_model_config",
    "check_logs",
    "latest_checkpoint",
    "PRECISIONS",
    "CHECKPOINT_DIR",
    "LOG_FILE",
    "LATEST",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "amp", "amp_bf16")
MAX_LOGIT_SCALE = math.log(100)  # the paper clips the temperature so logits are scaled by at most 100
ADAM_BETAS = (0.9, 0.98)  # open_clip's (and the paper's) values for ViT training
ADAM_EPS = 1e-6
FUSED_ADAMW_DEVICES = ("cpu", "cuda")
TOKENIZER_VOCAB = 49408  # ids clip.tokenize makes: 0 to 49407 (the end-of-text token)
CONFIG_INT_FIELDS = (
    "embed_dim",
    "image_resolution",
    "vision_width",
    "context_length",
    "vocab_size",
    "transformer_width",
    "transformer_heads",
    "transformer_layers",
)
RESNET_STAGES = 4  # a ResNet image tower's vision_layers: blocks in each of its 4 stages
PERCENT = 100.0


@dataclass
class TrainConfig:
    """Everything a training run depends on; the field names are the command line's flags.

    Exactly one of `model` (a released name or a checkpoint file `clip.load` reads) and
    `model_config` (a JSON file of `clip.model.CLIPDimensions` fields: train from scratch) is set.
    """

    train_data: str
    val_data: Optional[str] = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: Optional[str] = None  # None: "," for .csv files, else a tab
    model: Optional[str] = None
    model_config: Optional[str] = None
    epochs: int = 32
    batch_size: int = 64
    lr: float = 5.0e-4
    wd: float = 0.2
    warmup: int = 10_000
    precision: str = "fp32"
    grad_checkpointing: bool = False
    lock_image: bool = False
    lock_text: bool = False
    workers: int = 1
    save_frequency: int = 1
    resume: Optional[str] = None
    logs: str = "./logs"
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting and what to do."""
        if (self.model is None) == (self.model_config is None):
            raise ValueError("pass exactly one of --model (a released name or checkpoint) and --model-config")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        for name in ("epochs", "batch_size", "save_frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        for name in ("warmup", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be 0 or more; got {getattr(self, name)}")
        if self.lr <= 0 or self.wd < 0:
            raise ValueError(f"--lr must be positive and --wd not negative; got {self.lr} and {self.wd}")
        for name in ("train_data", "val_data", "model_config"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"--{name.replace('_', '-')} {path}: no such file")


# ------------------------------------------------------------------------------------------------
# pieces, each usable on its own


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Learning rate at `step` (0-based): linear warmup to `base_lr`, then a cosine decay to 0.

    The schedule spans steps 0 to `total` - 1; from `total` on it is 0. With `warmup` >= `total`
    the run ends while still warming up (the rate never reaches `base_lr`). Raises ValueError for
    a negative `step`, `warmup` or `total`, or a `base_lr` that is not positive, naming it.
    """
    _check_schedule(step, base_lr, warmup, total)
    if step >= total:
        return 0.0  # past the end (the cosine's own value there when warmup < total)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps)) * base_lr


def _check_schedule(step: int, base_lr: float, warmup: int, total: int) -> None:
    for name, value in (("step", step), ("warmup", warmup), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"cosine_lr: {name} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"cosine_lr: {name} must be 0 or more, got {value}")
    if isinstance(base_lr, bool) or not isinstance(base_lr, numbers.Real) or not 0 < base_lr < math.inf:
        raise ValueError(f"cosine_lr: base_lr must be a positive, finite number, got {base_lr!r}")


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, the logit scale (all < 2-D) and embeddings (token, positional, class)."""
    return param.ndim < 2 or name.endswith("embedding") or name.endswith("embedding.weight")


def parameter_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """AdamW groups of the trainable parameters: decayed weights, and the rest at weight decay 0.

    Raises ValueError when `weight_decay` is negative or not finite (a negative decay grows the
    weights), TypeError when it is not a number.
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real):
        raise TypeError(f"parameter_groups: weight_decay must be a number, got {type(weight_decay).__name__}")
    if not 0 <= weight_decay < math.inf:
        raise ValueError(f"parameter_groups: weight_decay must be 0 or more and finite, got {weight_decay}")
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def read_model_config(path: str) -> Dict[str, Any]:
    """The `CLIPDimensions` fields in the JSON file `path`, checked: a ValueError names the file and
    the key of the first value that cannot make a CLIP, and what it must be."""
    try:
        with open(path, encoding="utf-8") as handle:
            dims = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-config {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"--model-config {path}: not a UTF-8 text file of JSON") from exc
    fields = [f.name for f in dataclasses.fields(CLIPDimensions)]
    if not isinstance(dims, dict) or sorted(dims) != sorted(fields):
        given = sorted(dims) if isinstance(dims, dict) else type(dims).__name__
        raise ValueError(
            f"--model-config {path}: expected a JSON object with exactly the keys {fields}; got {given}"
        )

    def bad(key: str, must: str) -> ValueError:
        return ValueError(f"--model-config {path}: {key!r} must be {must}; got {dims[key]!r}")

    def positive(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    for key in CONFIG_INT_FIELDS:
        if not positive(dims[key]):
            raise bad(key, "a positive integer")
    layers, patch = dims["vision_layers"], dims["vision_patch_size"]
    resnet = isinstance(layers, list)
    if resnet and (len(layers) != RESNET_STAGES or not all(map(positive, layers))):
        raise bad("vision_layers", f"a positive integer (ViT) or a list of {RESNET_STAGES} (ResNet)")
    if not resnet and not positive(layers):
        raise bad("vision_layers", f"a positive integer (ViT) or a list of {RESNET_STAGES} (ResNet)")
    if not resnet and not (positive(patch) and patch <= dims["image_resolution"]):
        raise bad("vision_patch_size", "a positive integer no larger than 'image_resolution' for a ViT")
    if resnet and patch is not None:
        raise bad("vision_patch_size", "null for a ResNet image tower")
    if not resnet and dims["vision_width"] % HEAD_WIDTH:
        raise bad("vision_width", f"a multiple of {HEAD_WIDTH} for a ViT (its heads are {HEAD_WIDTH} wide)")
    if resnet and dims["vision_width"] % 2:
        raise bad("vision_width", "an even number for a ResNet (its attention pooling has width / 2 heads)")
    if resnet and dims["image_resolution"] % RESNET_TOTAL_STRIDE:
        raise bad("image_resolution", f"a multiple of {RESNET_TOTAL_STRIDE} for a ResNet")
    if dims["transformer_width"] % dims["transformer_heads"]:
        raise bad("transformer_heads", f"a divisor of 'transformer_width' ({dims['transformer_width']})")
    if dims["vocab_size"] < TOKENIZER_VOCAB:
        raise bad("vocab_size", f"at least {TOKENIZER_VOCAB}, the number of token ids clip.tokenize makes")
    if resnet:
        dims["vision_layers"] = tuple(layers)
    return dims


def build_from_config(path: str) -> CLIP:
    """A freshly initialised fp32 CLIP from a JSON file of `CLIPDimensions` fields (`read_model_config`)."""
    dims = read_model_config(path)
    try:
        return CLIP(**dims)
    except (RuntimeError, OverflowError, MemoryError) as exc:  # sizes too large to allocate
        raise ValueError(f"--model-config {path}: cannot build this model ({one_line(exc)})") from exc


def _load_model(config: TrainConfig) -> CLIP:
    if config.model_config is not None:
        return build_from_config(config.model_config)
    from .clip import load

    model, _ = load(config.model, device="cpu", dtype=torch.float32)  # fp32 master weights, exact values
    return model


class _Features(nn.Module):
    """What DistributedDataParallel wraps: normalised features of both towers and the logit scale."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = F.normalize(self.model.encode_image(images), dim=-1)
        text_features = F.normalize(self.model.encode_text(texts), dim=-1)
        return image_features, text_features, self.model.logit_scale.exp()


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "amp" and device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class _Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _resume(
    path: str, model: CLIP, optimizer: torch.optim.Optimizer, scaler: Optional["torch.amp.GradScaler"]
) -> int:
    """Load the checkpoint at `path` into the run; the epoch it ends. ValueError when it does not fit."""
    checkpoint = read_resume(path)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ValueError(
            f"--resume {path}: its weights do not fit this model ({one_line(exc, skip_first=True)}); "
            "resume with the run's own --model or --model-config"
        ) from exc
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(
            f"--resume {path}: its optimizer state does not fit this run ({one_line(exc)}); resume with "
            "the run's own --lock-image and --lock-text"
        ) from exc
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    return int(checkpoint["epoch"])


# ------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model: CLIP, dataset: CsvDataset, batch_size: int, device: torch.device, precision: str
) -> Dict[str, float]:
    """Validation loss and recall@1 both ways; zero-shot top-1 when the file has a `label` column.

    Rows whose image cannot be read are left out (counted as `val_skipped`). The loss is the
    contrastive loss of each batch, averaged weighted by batch size; recall is over the whole set.
    Zero-shot: the classes are the distinct labels; each label's text is its own prompt.
    """
    was_training = model.training
    model.eval()
    image_chunks, text_chunks, kept = [], [], []
    loss_sum, count = 0.0, 0
    scale = model.logit_scale.exp().float()
    for start in range(0, len(dataset), batch_size):
        rows = range(start, min(start + batch_size, len(dataset)))
        loaded = [(row, dataset.load_image(row)) for row in rows]
        loaded = [(row, image) for row, image in loaded if image is not None]
        if not loaded:
            continue
        images = torch.stack([image for _, image in loaded]).to(device)
        tokens = dataset.tokenize([dataset.captions[row] for row, _ in loaded]).to(device)
        with _autocast(precision, device):
            image_features = F.normalize(model.encode_image(images).float(), dim=-1)
            text_features = F.normalize(model.encode_text(tokens).float(), dim=-1)
        logits = scale * image_features @ text_features.t()
        loss_sum += contrastive_loss(logits, logits.t()).item() * len(loaded)
        count += len(loaded)
        image_chunks.append(image_features)
        text_chunks.append(text_features)
        kept += [row for row, _ in loaded]
    metrics: Dict[str, float] = {"val_skipped": float(len(dataset) - count)}
    if not count:
        model.train(was_training)
        return metrics
    images, texts = torch.cat(image_chunks), torch.cat(text_chunks)
    similarity = images @ texts.t()
    truth = torch.arange(count, device=similarity.device)
    captions = [dataset.captions[row] for row in kept]
    # a retrieved text counts when its caption equals the true one (repeated captions are common)
    image_to_text = [captions[int(j)] == captions[i] for i, j in enumerate(similarity.argmax(dim=1))]
    metrics.update(
        val_loss=loss_sum / count,
        image_to_text_r1=PERCENT * sum(image_to_text) / count,
        text_to_image_r1=PERCENT * (similarity.t().argmax(dim=1) == truth).float().mean().item(),
    )
    if dataset.labels is not None:
        labels = [dataset.labels[row] for row in kept]
        classes = sorted(set(labels))
        tokens = dataset.tokenize(classes).to(device)
        with _autocast(precision, device):
            class_features = F.normalize(model.encode_text(tokens).float(), dim=-1)
        predicted = (images @ class_features.t()).argmax(dim=1).tolist()
        metrics["zero_shot_top1"] = PERCENT * sum(classes[p] == y for p, y in zip(predicted, labels)) / count
        metrics["zero_shot_classes"] = float(len(classes))
    model.train(was_training)
    return metrics


def _describe(entry: Dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {entry['epoch']}/{epochs}"]
    if "loss" in entry:
        parts += [f"loss {entry['loss']:.4f}", f"lr {entry['lr']:.3g}"]
    else:
        parts.append("(before training)")
    if "val_loss" in entry:
        parts.append(f"val_loss {entry['val_loss']:.4f}")
        parts.append(f"i2t R@1 {entry['image_to_text_r1']:.1f}% t2i R@1 {entry['text_to_image_r1']:.1f}%")
    if "zero_shot_top1" in entry:
        parts.append(
            f"zero-shot top1 {entry['zero_shot_top1']:.1f}% of {entry['zero_shot_classes']:.0f} classes"
        )
    skipped = int(entry.get("skipped", 0)) + int(entry.get("val_skipped", 0))
    if skipped or entry.get("empty_captions"):
        parts.append(f"bad rows skipped {skipped} (+{entry.get('empty_captions', 0)} empty captions)")
    if "seconds" in entry:
        parts.append(f"{entry['seconds']:.1f} s, {entry['steps_per_s']:.2f} steps/s")
    return "  ".join(parts)


# ------------------------------------------------------------------------------------------------
# the loop


def train(config: TrainConfig) -> List[Dict[str, Any]]:
    """Run the training `config` describes; return one dict of figures per epoch (every rank).

    Entry 0 (only with `val_data`, when not resuming) is the validation before training. Keys:
    epoch, loss, lr, steps, seconds, steps_per_s, skipped, and with validation val_loss,
    image_to_text_r1, text_to_image_r1 (percent), zero_shot_top1 (percent, with labels).
    """
    config.validate()
    check_logs(config.logs, config.resume)  # every rank, before any of them writes
    env = _init_distributed()
    try:
        return _train(config, env)
    finally:
        if env.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, env: _Distributed) -> List[Dict[str, Any]]:
    """The training run of this process: model, data, optimiser, then the epochs; the epochs' lines."""
    from tqdm import tqdm

    device = torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)
    model = _prepare_model(config, device)
    train_set, val_set = _datasets(config, model, env.world)
    loader, sampler = _loader(config, env, train_set, device)
    total_steps = len(loader) * config.epochs
    optimizer, scaler = _optimizer(config, model, device)
    start_epoch = _resume_point(config, env, model, optimizer, scaler)
    net: nn.Module = _Features(model)
    if env.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = ClipLoss(gather_with_grad=True)  # exact single-process gradients (see ClipLoss)

    def report(entry: Dict[str, Any]) -> None:  # rank 0: the console (logging) and LOGS/out.log
        line = _describe(entry, config.epochs)
        logger.info(line)
        append_log(config.logs, line)

    history: List[Dict[str, Any]] = []
    if val_set is not None and start_epoch == 0 and env.main:
        entry = {"epoch": 0, **evaluate(model, val_set, config.batch_size, device, config.precision)}
        history.append(entry)
        report(entry)
    for epoch in range(start_epoch, config.epochs):
        entry = _train_epoch(
            config,
            env,
            model,
            net,
            loss_fn,
            optimizer,
            scaler,
            loader,
            sampler,
            epoch,
            total_steps,
            device,
            tqdm,
        )
        entry["empty_captions"] = train_set.empty_captions
        if env.main:
            if val_set is not None:
                entry.update(evaluate(model, val_set, config.batch_size, device, config.precision))
            done = epoch + 1
            if done % config.save_frequency == 0 or done == config.epochs:
                save_checkpoint(_checkpoint_state(config, model, optimizer, scaler, done), config.logs, done)
            report(entry)
        history.append(entry)
        if env.world > 1:
            dist.barrier()  # other ranks wait for rank 0's validation and checkpoint
    return history


def _prepare_model(config: TrainConfig, device: torch.device) -> CLIP:
    """The model to train, in fp32 on `device`, with the towers locked and checkpointing as asked."""
    model = _load_model(config).float().to(device)  # fp32 master weights whatever the file holds
    if config.lock_image:
        model.lock_image_tower()
    if config.lock_text:
        model.lock_text_tower()
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def _datasets(config: TrainConfig, model: CLIP, world: int) -> Tuple[CsvDataset, Optional[CsvDataset]]:
    """The training and validation pairs, preprocessed and tokenised for `model`.

    Raises ValueError when no training row has a readable image, or there are fewer usable rows than
    one global batch.
    """
    from ._preprocess import _transform
    from ._tokenize import tokenize

    # picklable (a partial of a module-level function): data loader workers may be spawned
    tokens_of = functools.partial(tokenize, context_length=model.context_length, truncate=True)
    transform = _transform(model.visual.input_resolution)
    separator = config.csv_separator or default_separator(config.train_data)
    keys = (config.csv_img_key, config.csv_caption_key)
    train_set = CsvDataset(config.train_data, *keys, separator, transform, tokens_of)
    val_set = None
    if config.val_data is not None:
        val_separator = config.csv_separator or default_separator(config.val_data)
        val_set = CsvDataset(config.val_data, *keys, val_separator, transform, tokens_of)
    train_set.first_readable()  # a ValueError that says why when no row has a readable image
    if len(train_set) < config.batch_size * world:
        raise ValueError(
            f"{config.train_data}: {len(train_set)} usable rows{train_set.missing_note()}, fewer than one "
            f"global batch ({config.batch_size} x {world} processes); lower --batch-size"
        )
    return train_set, val_set


def _loader(
    config: TrainConfig, env: _Distributed, train_set: CsvDataset, device: torch.device
) -> Tuple[Any, Any]:
    """(DataLoader, its DistributedSampler) of this rank's share of each epoch's global batches."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    # the same permutation per epoch (seed + epoch) for any number of ranks: rank r takes every
    # world-th index, so a global batch holds the same pairs as one process's batch of world x size
    sampler = DistributedSampler(
        train_set, num_replicas=env.world, rank=env.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0,
    )
    return loader, sampler


def _optimizer(
    config: TrainConfig, model: CLIP, device: torch.device
) -> Tuple[torch.optim.Optimizer, Optional[torch.amp.GradScaler]]:
    """AdamW over `parameter_groups`, and the gradient scaler of fp16 autocast on CUDA (else None)."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.wd),
        lr=config.lr,
        betas=ADAM_BETAS,
        eps=ADAM_EPS,
        fused=device.type in FUSED_ADAMW_DEVICES,  # one kernel per step: the 49k-token embedding is large
    )
    scaler = torch.amp.GradScaler("cuda") if config.precision == "amp" and device.type == "cuda" else None
    return optimizer, scaler


def _resume_point(
    config: TrainConfig,
    env: _Distributed,
    model: CLIP,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
) -> int:
    """The epoch to start from: 0, or that of the --resume checkpoint, whose state is loaded."""
    resume = latest_checkpoint(config.logs) if config.resume == LATEST else config.resume
    if resume is None:
        return 0
    start_epoch = _resume(str(resume), model, optimizer, scaler)
    if env.main:
        logger.info("resumed from %s at epoch %d", resume, start_epoch)
    return start_epoch


def _checkpoint_state(
    config: TrainConfig,
    model: CLIP,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    done: int,
) -> Dict[str, Any]:
    """What epoch_N.pt holds: the epoch count, the weights, the optimiser and scaler, the config."""
    return {
        "epoch": done,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in vars(config).items()},
    }


def _batches(loader: Any, bar: Any) -> Iterator[Tuple[torch.Tensor, torch.Tensor, Set[int]]]:
    for batch in loader:
        yield batch
        bar.update(1)


def _train_epoch(
    config: TrainConfig,
    env: _Distributed,
    model: CLIP,
    net: nn.Module,
    loss_fn: ClipLoss,
    optimizer: torch.optim.Optimizer,
    scaler: Optional["torch.amp.GradScaler"],
    loader: Any,
    sampler: Any,
    epoch: int,
    total_steps: int,
    device: torch.device,
    tqdm: Any,
) -> Dict[str, Any]:
    sampler.set_epoch(epoch)
    model.train()
    steps = len(loader)
    losses: List[float] = []
    bad_rows: Set[int] = set()
    lr = config.lr
    start = time.perf_counter()
    with tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not env.main, leave=False
    ) as bar:
        for index, (images, texts, bad) in enumerate(_batches(loader, bar)):
            step = epoch * steps + index
            lr = cosine_lr(step, config.lr, config.warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(device, non_blocking=True)
            texts = texts.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(config.precision, device):
                image_features, text_features, scale = net(images, texts)
                loss = loss_fn(image_features, text_features, scale)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
            bad_rows |= bad
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.3g}")
    seconds = time.perf_counter() - start
    if env.world > 1:  # the same bad row may be met by several ranks: count it once
        every: List[Optional[Set[int]]] = [None] * env.world
        dist.all_gather_object(every, bad_rows)
        bad_rows = set().union(*(rows or set() for rows in every))
    return {
        "epoch": epoch + 1,
        "loss": sum(losses) / len(losses),
        "lr": lr,
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "skipped": len(bad_rows),
    }
