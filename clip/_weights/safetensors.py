"""Reading and writing ``.safetensors`` files: a JSON header, then raw little-endian tensor bytes.

Reading memory-maps the file (a private copy-on-write mapping, registered so that
:func:`clip._weights.mapping.materialize_` releases its pages while it copies a built model out of
it) and checks every header entry against the file before any tensor is made: nothing in such a
file is code.
Writing goes through the ``safetensors`` library, into a temporary file renamed into place
(:func:`clip._atomic.replacing`).
"""

import json
import mmap
import os
import struct
from typing import Dict, Mapping, Optional

import torch

from .._atomic import replacing
from .errors import CheckpointError
from .mapping import register_mapping

__all__ = ["looks_like_safetensors", "read_safetensors", "write_safetensors"]

HEADER_LENGTH = struct.Struct("<Q")  # the first 8 bytes: the size of the JSON header
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the header
METADATA_KEY = "__metadata__"

DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """True if the first bytes of a file of `file_size` bytes are a safetensors header."""
    if len(head) < HEADER_LENGTH.size + 1:
        return False
    (length,) = HEADER_LENGTH.unpack_from(head)
    return 2 <= length <= min(MAX_HEADER_BYTES, file_size - HEADER_LENGTH.size) and head[8:9] == b"{"


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, memory-mapped on the CPU, in the file's order.

    Raises:
        CheckpointError: the header is malformed or a tensor lies outside the file.
    """
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        prefix = f.read(HEADER_LENGTH.size)
        if len(prefix) != HEADER_LENGTH.size:
            raise CheckpointError(f"{path!r} is too short to be a .safetensors file")
        (length,) = HEADER_LENGTH.unpack(prefix)
        if length > min(MAX_HEADER_BYTES, file_size - HEADER_LENGTH.size):
            raise CheckpointError(
                f"{path!r}: the .safetensors header claims {length} bytes; the file is corrupt"
            )
        raw = f.read(length)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{path!r}: the .safetensors header is not valid JSON ({exc})") from exc
        data_start = HEADER_LENGTH.size + length
        mapping: Optional[mmap.mmap] = None
        if file_size > data_start:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            register_mapping(mapping)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path!r}: the .safetensors header is not a JSON object")
    out: Dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        out[name] = _tensor(path, name, entry, mapping, data_start, file_size)
    return out


def _tensor(
    path: str, name: str, entry: object, mapping: Optional[mmap.mmap], data_start: int, file_size: int
) -> torch.Tensor:
    def corrupt(problem: str) -> CheckpointError:
        return CheckpointError(f"{path!r}: tensor {name!r} {problem}; the file is corrupt or truncated")

    if not isinstance(entry, dict):
        raise corrupt("has no header entry")
    dtype = DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if dtype is None:
        raise corrupt(f"has the unsupported dtype {entry.get('dtype')!r}")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise corrupt(f"has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise corrupt(f"has invalid data offsets {offsets!r}")
    begin, end = offsets
    numel = 1
    for size in shape:
        numel *= size
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not 0 <= begin <= end or end - begin != numel * itemsize or data_start + end > file_size:
        raise corrupt(f"declares bytes {begin}..{end} for {numel} elements of {dtype}")
    if numel == 0 or mapping is None:
        return torch.empty(shape, dtype=dtype)
    offset = data_start + begin
    flat = torch.frombuffer(mapping, dtype=torch.uint8, count=end - begin, offset=offset)
    flat = flat.view(dtype) if offset % itemsize == 0 else flat.clone().view(dtype)
    return flat.view(shape)


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the CPU, contiguous and owning its whole storage (the library refuses views
    that share memory); copied only where needed."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str, metadata: Optional[Mapping[str, str]] = None
) -> None:
    """Write `tensors` to `path` atomically (a temporary file in the same folder, then a rename),
    with the mode ``open()`` gives under the umask; `path` is left as it was on an error or Ctrl-C."""
    from safetensors.torch import save_file

    owned = {name: _standalone(tensor) for name, tensor in tensors.items()}
    with replacing(path) as tmp:
        save_file(owned, tmp, metadata=dict(metadata or {}))
