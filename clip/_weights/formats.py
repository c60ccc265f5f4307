"""Recognising a checkpoint file by its content and reading its weights, running nothing from it.

* TorchScript archives (the release): :mod:`clip._weights.torchscript`'s restricted reader.
* ``torch.save`` files of a state dict (optionally wrapped in ``{"state_dict": ...}``, optionally
  with DataParallel's ``module.`` prefix): ``torch.load(..., weights_only=True)``.
* ``.safetensors`` files: :mod:`clip._weights.safetensors` (memory-mapped, header checked).
* open_clip's and transformers' key layouts, and transformers model directories: converted to the
  release's layout by :mod:`clip._weights.layouts`.
"""

import json
import os
import pickle
from typing import Any, Dict, Mapping, Optional

import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .layouts import HF_ACTIVATION, is_hf_layout, release_from_hf
from .registry import OPEN_CLIP_FILES, TRANSFORMERS_FILE
from .safetensors import looks_like_safetensors, read_safetensors
from .sniff import EMPTY_ZIP_MAGIC, ZIP_MAGIC, check_file, sniff, unknown_format_error
from .torchscript import (
    PathLike,
    archive_root,
    has_compressed_members,
    is_torchscript_zip,
    open_zip,
    read_archive,
)

__all__ = ["LEGACY_TORCH_MAGIC", "read_state_dict"]

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickled value of a pre-1.6 torch.save file
WRAPPER_KEYS = ("state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."
CONFIG_FILE = "config.json"
# weight files of a model folder, in the order they are tried: transformers', then open_clip's
TRANSFORMERS_BIN_FILE = "pytorch_model.bin"  # transformers' older weight file (no hub copy listed uses it)
DIRECTORY_WEIGHT_FILES = (TRANSFORMERS_FILE, TRANSFORMERS_BIN_FILE, *OPEN_CLIP_FILES)


def _is_legacy_torch_file(head: bytes) -> bool:
    # pickle protocol 2 header, then the magic number as a LONG1 of 10 bytes
    magic = LEGACY_TORCH_MAGIC.to_bytes(10, "little")
    return head.startswith(b"\x80\x02\x8a\x0a" + magic)


def _unwrap(path: str, obj: Any) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors). "
            "Save a CLIP model with torch.save(model.state_dict(), path)."
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path!r}: entries {bad[:5]} of the saved dict are not tensors; expected a state dict "
            "(torch.save(model.state_dict(), path))"
        )
    state = dict(obj)
    if all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):  # saved from a DataParallel wrapper
        state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read the weights of a CLIP checkpoint on the CPU without running code from the file.

    The format is recognised by content, not by the file's name:

    * the released TorchScript archives (read by :mod:`clip._weights.torchscript`);
    * ``torch.save`` files of a state dict, optionally wrapped as ``{"state_dict": ...}`` or
      ``{"model_state_dict": ...}`` (open_clip's training checkpoints), optionally with the
      ``module.`` prefix of DataParallel (read with ``torch.load(..., weights_only=True)``);
    * ``.safetensors`` files (memory-mapped; the header is checked against the file);
    * any of these in open_clip's layout (the release's key names) or in transformers'
      ``CLIPModel`` layout (converted), and transformers model directories (``config.json`` with
      ``model.safetensors`` or ``pytorch_model.bin``) or open_clip hub folders.

    The result is in the release's layout. The three scalar entries of the release
    (``input_resolution``, ``context_length``, ``vocab_size``) are kept when present.

    Raises:
        UnsafeCheckpointError: the file asks to run code.
        CheckpointError: the file is missing, empty, not a checkpoint (e.g. an HTML page saved by a
            failed download), or corrupt. The message says which and what to do.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_directory(path)
    return _release_layout(path, _read_file(path))


def _read_file(path: str) -> Dict[str, torch.Tensor]:
    file_size = check_file(path)
    head = sniff(path)
    if head.startswith(ZIP_MAGIC):
        with open_zip(path) as zf:
            root = archive_root(path, zf)
            if is_torchscript_zip(zf, root):
                return read_archive(path, zf, root, file_size)
            compressed = has_compressed_members(path, zf)
        # compressed members cannot be memory-mapped: torch.load inflates them (sizes checked above)
        return _unwrap(path, _torch_load(path, mmap=not compressed))
    if head.startswith(EMPTY_ZIP_MAGIC):
        raise CheckpointError(f"{path!r} is an empty zip archive, not a checkpoint")
    if _is_legacy_torch_file(head):
        return _unwrap(path, _torch_load(path, mmap=False))
    if looks_like_safetensors(head, file_size):
        state = read_safetensors(path)
        if not state:
            raise CheckpointError(f"{path!r} is a .safetensors file without tensors, not a checkpoint")
        return _unwrap(path, state)
    raise unknown_format_error(path, head)


def _read_directory(path: str) -> Dict[str, torch.Tensor]:
    """A transformers model directory or a folder holding one of the hub's weight files."""
    for name in DIRECTORY_WEIGHT_FILES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            config = _read_config(os.path.join(path, CONFIG_FILE))
            return _release_layout(candidate, _read_file(candidate), config)
    raise CheckpointError(
        f"{path!r} is a directory; pass the path of a checkpoint file (.pt, .bin, .safetensors) inside "
        f"it, or a transformers CLIPModel directory (holding {' or '.join(DIRECTORY_WEIGHT_FILES[:2])})"
    )


def _read_config(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{path!r} cannot be read as JSON ({exc}); the model directory is damaged"
        ) from exc
    return config if isinstance(config, dict) else None


def _check_hf_config(path: str, config: Optional[Mapping[str, Any]]) -> None:
    """CheckpointError if a transformers configuration asks for something the release lacks."""
    if config is None:
        return
    for tower in ("text_config", "vision_config"):
        settings = config.get(tower) or {}
        activation = settings.get("hidden_act", HF_ACTIVATION) if isinstance(settings, Mapping) else None
        if activation != HF_ACTIVATION:
            raise CheckpointError(
                f"{path!r}: its configuration sets {tower}.hidden_act={activation!r}; the release's "
                f"model only has {HF_ACTIVATION!r}, so these weights would give other outputs"
            )


def _release_layout(
    path: str, state: Dict[str, torch.Tensor], config: Optional[Mapping[str, Any]] = None
) -> Dict[str, torch.Tensor]:
    if is_hf_layout(state):
        _check_hf_config(path, config)
        return release_from_hf(state)
    return state


def _torch_load(path: str, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Unsupported global" in message or "Weights only load failed" in message:
            raise UnsafeCheckpointError(
                f"{path!r} asks to run code or build objects that loading weights never needs; refusing "
                f"to load it (nothing from the file was run). Details: {message.splitlines()[0]}"
            ) from exc
        raise CheckpointError(
            f"{path!r}: cannot read the pickled state dict ({exc}); the file is corrupt"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path!r}: cannot read the checkpoint ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated. Delete it and download it again."
        ) from exc
