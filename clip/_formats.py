"""Recognising a checkpoint file by its content and reading its weights, running nothing from it.

* TorchScript archives (the release): :mod:`clip._archive`'s restricted reader.
* ``torch.save`` files of a state dict (optionally wrapped in ``{"state_dict": ...}``, optionally
  with DataParallel's ``module.`` prefix): ``torch.load(..., weights_only=True)``.
"""

import os
import pickle
from typing import Any, Dict, Mapping

import torch

from ._archive import (
    EMPTY_ZIP_MAGIC,
    ZIP_MAGIC,
    PathLike,
    archive_root,
    check_file,
    has_compressed_members,
    is_torchscript_zip,
    open_zip,
    read_archive,
    sniff,
    unknown_format_error,
)
from ._errors import CheckpointError, UnsafeCheckpointError

__all__ = ["LEGACY_TORCH_MAGIC", "read_state_dict"]

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickled value of a pre-1.6 torch.save file
WRAPPER_KEYS = ("state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."


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

    Accepts the released TorchScript archives and ``torch.save`` files of a state dict (optionally
    wrapped as ``{"state_dict": ...}`` or ``{"model_state_dict": ...}``, optionally with the
    ``module.`` prefix of DataParallel). The three scalar entries of the release
    (``input_resolution``, ``context_length``, ``vocab_size``) are kept when present.

    Raises:
        UnsafeCheckpointError: the file asks to run code.
        CheckpointError: the file is missing, empty, not a checkpoint (e.g. an HTML page saved by a
            failed download), or corrupt. The message says which and what to do.
    """
    path = os.fspath(path)
    check_file(path)
    head = sniff(path)
    if head.startswith(ZIP_MAGIC):
        with open_zip(path) as zf:
            root = archive_root(path, zf)
            if is_torchscript_zip(zf, root):
                return read_archive(path, zf, root, os.path.getsize(path))
            compressed = has_compressed_members(path, zf)
        # compressed members cannot be memory-mapped: torch.load inflates them (sizes checked above)
        return _unwrap(path, _torch_load(path, mmap=not compressed))
    if head.startswith(EMPTY_ZIP_MAGIC):
        raise CheckpointError(f"{path!r} is an empty zip archive, not a checkpoint")
    if _is_legacy_torch_file(head):
        return _unwrap(path, _torch_load(path, mmap=False))
    raise unknown_format_error(path, head)


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
