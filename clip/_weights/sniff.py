"""What a file is from its first bytes: a checkpoint's magic numbers, or an HTML page saved in its place.

:func:`looks_like_html` is the one HTML check of the package: :mod:`clip._weights.download` asks it
about a download whose checksum failed, :mod:`clip._weights.formats` about a file no reader knows.
It looks for a page's opening tags anywhere in the first :data:`SNIFF_BYTES` bytes, so a page that
starts with a comment or a byte-order mark is recognised too.
"""

import os

from .errors import CheckpointError

__all__ = [
    "ZIP_MAGIC",
    "EMPTY_ZIP_MAGIC",
    "SNIFF_BYTES",
    "check_file",
    "sniff",
    "looks_like_html",
    "unknown_format_error",
]

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
SNIFF_BYTES = 1024  # bytes read from the start of a file to recognise its format, or an HTML page
HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")  # compared in lower case


def check_file(path: str) -> int:
    """Return the size of `path`, or raise CheckpointError if it is not a readable, non-empty file."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a directory; pass the path of a checkpoint file (.pt) inside it")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path!r} is not a regular file; pass the path of a checkpoint file (.pt)")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(
            f"checkpoint file {path!r} is empty (0 bytes); the download or copy probably failed. "
            "Delete it and download it again."
        )
    return size


def sniff(path: str) -> bytes:
    """The first :data:`SNIFF_BYTES` bytes of `path` (fewer for a shorter file). OSError if unreadable."""
    with open(path, "rb") as f:
        return f.read(SNIFF_BYTES)


def looks_like_html(head: bytes) -> bool:
    """True if `head`, the first bytes of a file, holds an HTML (or XML) page's opening tags."""
    start = head[:SNIFF_BYTES].lower()
    return any(marker in start for marker in HTML_MARKERS)


def unknown_format_error(path: str, head: bytes) -> CheckpointError:
    """The error for a file no reader recognises: an HTML page saved by a failed download, or else
    a file that is not a checkpoint at all."""
    if looks_like_html(head):
        return CheckpointError(
            f"{path!r} looks like an HTML page, not a checkpoint: the download probably failed (an error "
            "or sign-in page was saved instead). Delete the file and download it again."
        )
    return CheckpointError(
        f"{path!r} is not a PyTorch checkpoint (neither a TorchScript archive nor a torch.save file; it "
        f"starts with {head[:16]!r}). Pass a CLIP checkpoint file, or a model name from "
        "clip.available_models()."
    )
