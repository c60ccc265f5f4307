"""Memory-mapped checkpoint weights: the mappings the readers made, and moving a model built on
them into memory of its own.

The readers (:mod:`clip._weights.torchscript`, :mod:`clip._weights.safetensors`) map files privately
and record each mapping with :func:`register_mapping`; :func:`materialize_` finds a tensor's mapping
with :func:`mapping_at` and releases its pages while it copies.
"""

import mmap
import weakref
from typing import Callable, Optional, Tuple

import torch

__all__ = ["register_mapping", "mapping_at", "materialize_"]

COPY_CHUNK_BYTES = 8 * 1024 * 1024  # mapped bytes copied (then released) at a time

_MAPPINGS: "weakref.WeakValueDictionary[int, mmap.mmap]" = weakref.WeakValueDictionary()  # by address


def register_mapping(mapping: mmap.mmap) -> None:
    """Record a private file mapping so that :func:`mapping_at` finds it (held weakly)."""
    if len(mapping):
        base = torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr()
        _MAPPINGS[base] = mapping


def mapping_at(ptr: int) -> Optional[Tuple[int, mmap.mmap]]:
    """(base address, mapping) of the registered mapping holding address `ptr`, if any."""
    for base, mapping in list(_MAPPINGS.items()):
        if base <= ptr < base + len(mapping):
            return base, mapping
    return None


def _release_pages(mapped: Tuple[int, mmap.mmap], start: int, end: int) -> None:
    """Drop the resident pages lying wholly inside addresses [start, end) of a mapping.

    The mappings are private and never written before this point, so the kernel simply re-reads
    the file should the pages be touched again: releasing them never changes any tensor's values.
    """
    base, mapping = mapped
    first = -(-(start - base) // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours keep theirs
    last = (end - base) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def _owned_copy(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A copy of `tensor` in memory of its own; pages of a mapped source are released as it goes."""
    mapped = mapping_at(tensor.data_ptr()) if tensor.device.type == "cpu" and tensor.numel() else None
    if mapped is None or device.type != "cpu" or not tensor.is_contiguous():
        result = tensor.to(device=device, dtype=dtype, copy=True)
        if mapped is not None:
            storage = tensor.untyped_storage()
            _release_pages(mapped, storage.data_ptr(), storage.data_ptr() + storage.nbytes())
        return result
    # chunk by chunk, so that at most one chunk of the source is resident beside the result
    result = torch.empty(tensor.shape, dtype=dtype, device=device)
    source, target = tensor.reshape(-1), result.view(-1)
    step = max(1, COPY_CHUNK_BYTES // tensor.element_size())
    begin = tensor.data_ptr()
    for offset in range(0, source.numel(), step):
        target[offset : offset + step].copy_(source[offset : offset + step])
        end = begin + min(offset + step, source.numel()) * tensor.element_size()
        _release_pages(mapped, begin, end)
    return result


def materialize_(
    module: torch.nn.Module,
    device: torch.device,
    dtype: Optional[Callable[[torch.Tensor], torch.dtype]] = None,
    keep_mapped: bool = False,
) -> torch.nn.Module:
    """Move every parameter and buffer of `module` to owned memory on `device`, in place.

    Each tensor is copied (cast to ``dtype(tensor)`` when given) and, where it was memory-mapped
    from a checkpoint, the pages it occupied are released as the copy proceeds, so peak memory
    stays near the size of the result instead of result plus file. Mapped tensors must not have
    been written to before (released pages are re-read from the file, dropping private changes).

    With `keep_mapped`, a tensor already on `device` in its target dtype is left as it is (a
    memory-mapped one stays mapped: `clip.load(..., mmap=True)`); only the others are copied.
    """

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        target = dtype(tensor) if dtype is not None else tensor.dtype
        if keep_mapped and tensor.device == device and tensor.dtype == target:
            return tensor
        return _owned_copy(tensor, device, target)

    return module._apply(convert)
