"""Images for the server: uploads decoded with their refusals worded for a client, and thumbnails.

An upload that is not an image, is truncated, or claims more pixels than Pillow's
``Image.MAX_IMAGE_PIXELS`` (a decompression bomb) is refused with an :class:`ImageRefused` that
carries the HTTP status and a message naming no file of the machine. Thumbnails are JPEGs no
larger than a square of `size` pixels, made from collection items only.
"""

import io
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageRefused", "decode_upload", "thumbnail_jpeg"]

BAD_REQUEST = 400
TOO_LARGE = 413
NOT_FOUND = 404
THUMB_QUALITY = 85


class ImageRefused(Exception):
    """An image that cannot be used: `status` (400 or 413) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _too_many_pixels(image: Image.Image) -> bool:
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and image.width * image.height > limit


def _decode(source: Union[io.BytesIO, Path], what: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            if _too_many_pixels(image):  # Pillow only warns below twice its limit; refuse here
                raise ImageRefused(
                    TOO_LARGE,
                    f"{what} claims {image.width} x {image.height} pixels, more than the "
                    f"{Image.MAX_IMAGE_PIXELS} allowed (a possible decompression bomb)",
                )
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise ImageRefused(
            TOO_LARGE,
            f"{what} claims more than {Image.MAX_IMAGE_PIXELS} pixels (a possible decompression bomb)",
        ) from None
    except UnidentifiedImageError:
        raise ImageRefused(BAD_REQUEST, f"{what} is not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageRefused(BAD_REQUEST, f"{what} is truncated or damaged and cannot be decoded") from None


def decode_upload(data: bytes, what: str = "the upload") -> Image.Image:
    """The uploaded bytes `data` as an RGB image, or an ImageRefused saying why not."""
    if not data:
        raise ImageRefused(BAD_REQUEST, f"{what} is empty")
    return _decode(io.BytesIO(data), what)


def thumbnail_jpeg(source: Union[Path, bytes], size: int) -> bytes:
    """A JPEG of the image at `source` (a path, or the image file's bytes) fitting in `size` x `size`
    pixels (aspect ratio kept).

    Raises ImageRefused with status 404 (worded without the path) when the file is gone or can no
    longer be read as an image.
    """
    try:
        opened = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(opened) as probe:  # a JPEG decodes at a fraction of its size when that is enough
            probe.draft("RGB", (size, size))
            if _too_many_pixels(probe):
                raise ImageRefused(NOT_FOUND, "the item's image has too many pixels for a thumbnail")
            probe.load()
            image = probe.convert("RGB")
    except Image.DecompressionBombError:
        raise ImageRefused(NOT_FOUND, "the item's image has too many pixels for a thumbnail") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageRefused(NOT_FOUND, "the item's file is gone or no longer reads as an image") from None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    return buffer.getvalue()
