"""Public entry points of the release: `available_models`, `load`, `tokenize`.

This module keeps every name the original `clip.clip` exposes importable from the same path
(`_MODELS`, `_download`, `_transform`, `_convert_image_to_rgb`, `BICUBIC`, `_Tokenizer`, `_tokenizer`),
and the errors `load` raises (`CheckpointError`, `UnsafeCheckpointError`, `DownloadError`). The work
itself lives in private modules, one per concern; the weights' in `clip._weights`.
"""

import os
import sys
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from . import _incidental_names
from ._preprocess import BICUBIC, _convert_image_to_rgb, _transform  # noqa: F401 - the original's names
from ._quantize import check_quantize_request, quantize_
from ._tokenize import get_tokenizer, set_tokenizer, tokenize
from ._weights import (
    CheckpointError,
    UnsafeCheckpointError,  # noqa: F401 - raised by load; importable from here, as DownloadError is
    is_torchscript_archive,
    materialize_,
    read_state_dict,
)
from ._weights.download import (
    DownloadError,  # noqa: F401 - raised by load; importable from here
    _download,  # noqa: F401 - the original's name
    default_cache_dir,
)
from ._weights.jit import load_jit
from ._weights.registry import RELEASE_URLS
from ._weights.sources import resolve
from .model import build_model
from .simple_tokenizer import SimpleTokenizer as _Tokenizer  # noqa: F401 - the original's name

__all__ = ["available_models", "load", "tokenize"]

# The original's name -> URL table: the registry's own dict (clip/_weights/registry.py), so that a
# name pointed at a mirror here (`_MODELS[name] = url`) is downloaded from it.
_MODELS: Dict[str, str] = RELEASE_URLS


def available_models() -> List[str]:
    """Return the names of the released CLIP models, in the release's order."""
    return list(_MODELS.keys())


def load(
    name: Union[str, "os.PathLike[str]"],
    device: Union[str, torch.device, None] = None,
    jit: bool = False,
    download_root: Union[str, None] = None,
    *,
    dtype: Optional[torch.dtype] = None,
    quantize: Optional[str] = None,
    mmap: bool = False,
) -> Tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """Load a CLIP model and the image transform that goes with it.

    Args:
        name: a name from `available_models()` (found on disk or downloaded once, verified by
            SHA256; see docs/weights.md, "Where the weights come from"), or the path of a checkpoint
            file or model directory in any format `clip._weights.formats.read_state_dict` reads (release
            archive, torch.save state dict, .safetensors, open_clip, transformers).
        device: "cpu", "cuda", "cuda:N", a `torch.device`, ... (case-insensitive). Default: "cuda"
            when a GPU is available, else "cpu", decided at call time.
        jit: False (default) builds the Python model from the weights, read without running any
            code from the file. True returns the archive's own TorchScript module, with its graph
            constants patched for `device` (this compiles code from the file: trusted files only).
        download_root: where released models are cached. Default: `$CLIP_CACHE_DIR` if set, else
            `~/.cache/clip`.
        dtype: (keyword-only) cast every floating-point weight to this dtype, e.g. `torch.bfloat16`
            for bf16 inference on the CPU. Default: float32 on the CPU; on a GPU the release's mixed
            precision (fp16 weights, fp32 norms and embeddings). Only with jit=False. Without it,
            weights pass through the release's fp16 rounding as in the original; with it, the
            file's values are cast directly, so `dtype=torch.float32` loads an fp32 checkpoint
            (e.g. from `clip train`) exactly.
        quantize: (keyword-only) "int8" for int8 inference on the CPU: every linear product of both
            towers with int8 weights and dynamically quantised activations (see `clip.quantize`).
            Default None. Only with jit=False, device "cpu" and dtype None or torch.float32.
        mmap: (keyword-only) True keeps weights memory-mapped from the file instead of copying them
            into memory of their own, where the file already stores them in the model's dtype (e.g.
            an fp32 .safetensors file from `clip convert --dtype float32`, loaded with
            dtype=torch.float32): loading then costs about the time to build the model. The mapping
            is private (writing to the weights never writes the file), but the file must stay
            unchanged and in place while the model is used. Weights that need converting are copied
            as usual, with a warning saying how to avoid it. Default False. Only with jit=False and
            device "cpu".

    Returns:
        (model, preprocess): the model in eval mode on `device`, and the torchvision transform
        turning a PIL image into the model's input tensor.

    Raises:
        RuntimeError: the name is neither a released model nor an existing file ("Model ... not
            found; available models = [...]"), or the device is not available.
        ValueError: a malformed device string, an unsupported dtype or quantize value, mmap=True
            with jit=True or a device other than the CPU.
        TypeError: `name`, `jit`, `mmap` or `download_root` of the wrong type.
        CheckpointError: (a RuntimeError and ValueError) the file is not a usable CLIP checkpoint;
            the message says why and what to do. UnsafeCheckpointError if it asks to run code.
        DownloadError: the download failed or did not verify.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name or a file path (str), not {type(name).__name__}")
    if not isinstance(jit, bool):
        raise TypeError(f"jit must be True or False, not {jit!r}")
    if download_root is not None and not isinstance(download_root, (str, os.PathLike)):
        raise TypeError(
            f"download_root must be a directory path (str or os.PathLike) or None, not "
            f"{type(download_root).__name__}"
        )
    target = _resolve_device(device)
    cast = _resolve_dtype(dtype, jit)
    check_quantize_request(quantize, jit, target, cast)
    _check_mmap_request(mmap, jit, target)
    model_path = _resolve_path(name, download_root)

    if jit:
        if is_torchscript_archive(model_path):
            try:
                scripted = load_jit(model_path, target)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"{model_path!r} could not be loaded as TorchScript ({exc}). Try jit=False, or delete "
                    "the file and download it again."
                ) from exc
            return scripted, _transform(int(scripted.input_resolution.item()))
        warnings.warn(
            f"File {model_path} is not a JIT archive. Loading as a state dict instead", stacklevel=2
        )

    state_dict = read_state_dict(model_path)
    try:
        # an explicit dtype is applied to the file's own values, so an fp32 file (a fine-tune) stays
        # exact; by default, and for fp16 files (the release), the release's conversion as before
        conv = state_dict.get("visual.conv1.weight")
        exact = cast is not None and isinstance(conv, torch.Tensor) and conv.dtype == torch.float32
        model = build_model(state_dict, share_memory=True, release_precision=not exact)
    except ValueError as exc:
        raise CheckpointError(
            f"{model_path!r} is not a CLIP checkpoint the release's code can build: {exc}"
        ) from exc
    del state_dict  # the model now holds the only references to the file's mapped tensors
    if cast is None and target.type == "cpu":
        cast = torch.float32  # fp16 matmuls are slow or missing on CPUs: the original's model.float()
    if mmap:
        _warn_unmapped(model, model_path, cast, dtype_given=dtype is not None)
    materialize_(model, target, None if cast is None else _floating_to(cast), keep_mapped=mmap)
    if quantize is not None:
        quantize_(model)
    return model, _transform(model.visual.input_resolution)


def _check_mmap_request(mmap: bool, jit: bool, device: torch.device) -> None:
    """The checks `clip.load(..., mmap=...)` makes before reading anything."""
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap must be True or False, not {mmap!r}")
    if not mmap:
        return
    if jit:
        raise ValueError("mmap=True is only supported with jit=False (the default): pass jit=False")
    if device.type != "cpu":
        raise ValueError(
            f"mmap=True keeps the weights in the file's memory map, which only the CPU reads; got device "
            f"{str(device)!r}. Pass device='cpu', or drop mmap=True (weights are then copied to the device)."
        )


def _warn_unmapped(model: torch.nn.Module, path: str, dtype: torch.dtype, dtype_given: bool) -> None:
    """Warn, for mmap=True, when weights must be converted (copied) instead of staying mapped."""
    tensors = [*model.parameters(), *model.buffers()]
    converted = [t for t in tensors if t.is_floating_point() and t.dtype != dtype]
    if not converted:
        return
    wanted = str(dtype).replace("torch.", "")
    if dtype_given:
        stored = " and ".join(sorted({str(t.dtype).replace("torch.", "") for t in converted}))
        why = f"are stored as {stored}"
    else:  # even a float32 file's weights are rounded through float16 first, as the original does
        why = "take the release's float16 rounding (no dtype given)"
    warnings.warn(
        f"mmap=True: {len(converted)} of {len(tensors)} weights of {path} {why}, so they were converted "
        f"to {wanted} in memory of their own; only weights already in the model's dtype stay "
        f"memory-mapped. Load a {wanted} file with dtype=torch.{wanted}; to make one once: "
        f"`clip convert {path} model-{wanted}.safetensors --dtype {wanted}`.",
        stacklevel=3,
    )


def _floating_to(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.dtype]:
    return lambda tensor: dtype if tensor.is_floating_point() else tensor.dtype


def _available_devices() -> List[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def _resolve_device(device: Union[str, torch.device, int, None]) -> torch.device:
    """The requested device, checked to exist before anything is downloaded or read."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device.strip().lower())
        except RuntimeError as exc:
            raise ValueError(
                f"device {device!r} is not a device string; pass one of {_available_devices()} "
                "(or a torch.device)"
            ) from exc
    elif isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise ValueError(f"device index {device} is negative; pass a CUDA device index >= 0, or 'cpu'")
        resolved = torch.device("cuda", device)  # torch's convention: an index names a CUDA device
    else:
        raise ValueError(f"device must be a string like 'cpu' or 'cuda:0', or a torch.device; got {device!r}")

    available = _available_devices()
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} was requested but CUDA is not available on this machine (available: "
                f"{available}); pass device='cpu'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(
                f"device {device!r} was requested but this machine has {count} CUDA device(s) (available: "
                f"{available}); pass one of those"
            )
        return resolved
    backend = getattr(torch, resolved.type, None) if resolved.type != "mps" else torch.backends.mps
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return resolved
    raise RuntimeError(
        f"device {device!r} was requested but {resolved.type!r} is not available on this machine "
        f"(available: {available}); pass one of those"
    )


def _resolve_dtype(dtype: Optional[torch.dtype], jit: bool) -> Optional[torch.dtype]:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating-point torch.dtype such as torch.float32, torch.float16 or "
            f"torch.bfloat16; got {dtype!r}"
        )
    if jit:
        raise ValueError(
            "dtype is only supported with jit=False: the TorchScript graphs cast to fixed dtypes. Pass "
            "jit=False (the default) to get a model in another dtype."
        )
    return dtype


def _resolve_path(name: str, download_root: Optional[str]) -> str:
    if name in _MODELS:
        located = resolve(name, download_root or default_cache_dir(), allow_download=True)
        if not located.is_release_file:  # a hub copy: said, so that nobody mistakes it for the release's
            warnings.warn(f"clip.load({name!r}): using {located.source} ({located.path})", stacklevel=3)
        return located.path
    if os.path.isfile(name) or os.path.isdir(name):  # a directory: a transformers model folder
        return name
    if os.path.exists(name):  # a device, a pipe, a socket: never read (it could block or never end)
        raise CheckpointError(f"{name!r} is not a regular file; pass the path of a checkpoint file (.pt)")
    raise RuntimeError(f"Model {name} not found; available models = {available_models()}")


class _ClipModule(types.ModuleType):
    """`clip.clip` itself, whose `_tokenizer` is read and assigned as in the original.

    Reading it builds the shared tokenizer on first use (never at import); assigning one
    (`clip.clip._tokenizer = my_tokenizer`) makes `clip.tokenize` use it; deleting it restores the
    default, built again on next use.
    """

    @property
    def _tokenizer(self) -> Any:
        return get_tokenizer()

    @_tokenizer.setter
    def _tokenizer(self, tokenizer: Any) -> None:
        set_tokenizer(tokenizer)

    @_tokenizer.deleter
    def _tokenizer(self) -> None:
        set_tokenizer(None)


__getattr__ = _incidental_names.module_getattr(__name__, _incidental_names.CLIP_CLIP)  # Compose, tqdm, ...
sys.modules[__name__].__class__ = _ClipModule
