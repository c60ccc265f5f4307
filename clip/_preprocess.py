"""The release's image transform, and a threaded batch equivalent that gives identical tensors.

`_transform(n_px)` is the preprocessing the release pairs with every model: resize the shorter side to
`n_px` (bicubic), crop the centre `n_px` x `n_px`, convert to RGB, scale to [0, 1], and normalise with
the mean and standard deviation of the dataset the models were trained on.

`preprocess_batch` runs the same PIL stages (the very same transform objects) for many images in a
thread pool, since Pillow releases the GIL while it decodes and resamples, then turns the whole batch
into normalised values by table look-up. The table holds what `ToTensor` and `Normalize` make of
each of the 256 levels of each channel, computed by those very transforms, so every element comes out
bit for bit the same as `torch.stack([_transform(n_px)(image) for image in images])`.
"""

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

__all__ = ["BICUBIC", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD", "preprocess_batch"]

BICUBIC = InterpolationMode.BICUBIC

# Per-channel (R, G, B) statistics of the release's training images, as the release states them.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

_RGB_CHANNELS = 3
_LEVELS = 256  # values an 8-bit channel can take
# Integer dtypes used to copy float values bit for bit, by element size in bytes.
_INT_OF_WIDTH = {2: torch.int16, 4: torch.int32, 8: torch.int64}

ImageInput = Union[Image.Image, str, os.PathLike]


def _convert_image_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _pil_stages(n_px: int) -> List[Callable[[Image.Image], Image.Image]]:
    """The PIL part of the release's transform: everything before the conversion to a tensor."""
    return [Resize(n_px, interpolation=BICUBIC), CenterCrop(n_px), _convert_image_to_rgb]


def _transform(n_px: int) -> Compose:
    """The release's preprocessing for a model whose input resolution is `n_px`.

    Takes a PIL image of any mode and size; returns a float tensor of shape [3, n_px, n_px].
    """
    return Compose([*_pil_stages(n_px), ToTensor(), Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])


def preprocess_batch(
    images: Sequence[ImageInput],
    n_px: int = 224,
    num_workers: Optional[int] = None,
    *,
    pin_memory: bool = False,
) -> torch.Tensor:
    """Preprocess many images at once, exactly as the release's `preprocess` does one at a time.

    Decoding and resizing dominate the cost; they run in `num_workers` threads, so the speed-up over
    the one-image-at-a-time loop grows with the CPU cores that are free (the work per image is the
    same). Per-image tensor operations are replaced by one table look-up, which also avoids the
    stalls small intra-op-parallel torch ops can suffer on busy machines.

    Args:
        images: PIL images, or paths (str or os.PathLike) to image files, which are opened with PIL
            inside the worker threads. Images passed in are not modified (Pillow may load the pixel
            data of a lazily opened image, as the release's transform does too).
        n_px: the model's input resolution (`model.visual.input_resolution`).
        num_workers: threads that decode and resize; None uses one per available CPU, 0 or 1 does
            all the work in the calling thread.
        pin_memory: (keyword-only) write the batch straight into page-locked ("pinned") memory, so
            that ``batch.to("cuda", non_blocking=True)`` is an asynchronous copy that overlaps with
            GPU work, without the extra copy ``batch.pin_memory()`` makes. Needs a GPU.

    Returns:
        A tensor of shape [N, 3, n_px, n_px] in torch's default float dtype (float32 unless changed),
        equal element for element to `torch.stack([_transform(n_px)(im) for im in images])`.

    Raises:
        TypeError: `images` is not a sequence, one of its items is not an image or a path, or
            `n_px` / `num_workers` is not an int.
        ValueError: `n_px` or `num_workers` is out of range.
        RuntimeError: `pin_memory=True` on a machine where page-locked memory cannot be allocated
            (no GPU).
        FileNotFoundError, OSError: a path does not exist or is not an image Pillow can read.
        ValueError: an image is in a mode Pillow cannot resize or convert to RGB (e.g. "La").
        PIL.Image.DecompressionBombError: a file declares more pixels than Pillow's limit
            (`PIL.Image.MAX_IMAGE_PIXELS`, left as Pillow sets it).
        Each message names the image's index (and path).
    """
    items = _check_images(images)
    _check_n_px(n_px)
    workers = _resolve_num_workers(num_workers)
    if not isinstance(pin_memory, bool):
        raise TypeError(f"pin_memory must be True or False, not {pin_memory!r}")

    # Each distinct item is processed once: the same image object listed twice must not be loaded
    # by two threads at the same time.
    first_index: Dict[Any, int] = {}
    unique: List[int] = []
    duplicate_of: Dict[int, int] = {}
    for index, item in enumerate(items):
        key = id(item) if isinstance(item, Image.Image) else ("path", os.fspath(item))
        if key in first_index:
            duplicate_of[index] = first_index[key]
        else:
            first_index[key] = index
            unique.append(index)

    stages = Compose(_pil_stages(n_px))
    table = _normalization_table()  # [3, 256]: the normalised value of each 8-bit level per channel
    out = _empty_batch((len(items), _RGB_CHANNELS, n_px, n_px), table.dtype, pin_memory)  # [N, C, H, W]
    # Values are copied from the table as raw bits (an int view of the same width), so any float
    # dtype works, including those numpy does not know (bfloat16).
    bits = _INT_OF_WIDTH[table.element_size()]
    table_bits = table.view(bits).numpy()
    out_bits = out.view(bits).numpy()

    def fill(index: int) -> None:
        pixels = np.asarray(_rgb_image(items[index], index, stages))  # [H, W, C] uint8
        for channel in range(_RGB_CHANNELS):
            # mode="clip" only skips the bounds check: 8-bit levels are always valid indices.
            np.take(table_bits[channel], pixels[:, :, channel], out=out_bits[index, channel], mode="clip")

    _run(fill, unique, min(workers, len(unique)))
    for index, source in duplicate_of.items():
        out_bits[index] = out_bits[source]
    return out


def _empty_batch(shape: Tuple[int, ...], dtype: torch.dtype, pin_memory: bool) -> torch.Tensor:
    try:
        return torch.empty(shape, dtype=dtype, pin_memory=pin_memory)
    except RuntimeError as exc:
        if not pin_memory:
            raise
        raise RuntimeError(
            f"preprocess_batch(pin_memory=True) could not allocate page-locked memory ({exc}). Pinned "
            "memory only helps copies to a GPU: pass pin_memory=False (the default) on a machine without one."
        ) from exc


def _check_images(images: Any) -> List[ImageInput]:
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise TypeError(
            f"preprocess_batch expects a sequence of images or paths, got a single {type(images).__name__}; "
            "wrap it in a list"
        )
    try:
        items = list(images)
    except TypeError:
        raise TypeError(
            f"preprocess_batch expects a sequence of images or paths, got {type(images).__name__}"
        ) from None
    for index, item in enumerate(items):
        if not isinstance(item, (Image.Image, str, os.PathLike)):
            raise TypeError(
                f"preprocess_batch: item {index} is a {type(item).__module__}.{type(item).__qualname__}; "
                "expected a PIL.Image.Image or a path (str or os.PathLike) to an image file"
            )
    return items


def _check_n_px(n_px: Any) -> None:
    if isinstance(n_px, bool) or not isinstance(n_px, int):
        raise TypeError(f"n_px must be an int (the model's input resolution), got {type(n_px).__name__}")
    if n_px < 1:
        raise ValueError(f"n_px must be a positive int (the model's input resolution), got {n_px}")


def _resolve_num_workers(num_workers: Any) -> int:
    if num_workers is None:
        return _available_cpus()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int):
        raise TypeError(f"num_workers must be None or an int, got {type(num_workers).__name__}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be None or an int >= 0, got {num_workers}")
    return max(num_workers, 1)


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def _run(work: Callable[[int], None], indices: List[int], workers: int) -> None:
    """Call `work` on every index, in `workers` threads; re-raise the first failure, in index order."""
    if workers <= 1:
        for index in indices:
            work(index)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip-preprocess") as pool:
        futures: List[Future] = [pool.submit(work, index) for index in indices]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _rgb_image(item: ImageInput, index: int, stages: Compose) -> Image.Image:
    """Resize, crop and convert one image (opening it first if it is a path)."""
    if isinstance(item, Image.Image):
        return _staged(item, index, stages)
    path = os.fspath(item)
    try:
        image = Image.open(path)
    except Exception as exc:
        raise _read_error(index, path, exc) from exc
    with image:
        try:
            image.load()
        except Exception as exc:
            raise _read_error(index, path, exc) from exc
        return _staged(image, index, stages)


def _staged(image: Image.Image, index: int, stages: Compose) -> Image.Image:
    """`stages(image)`; a failure (a mode Pillow cannot resize or convert, a lazily opened file that
    turns out truncated) is re-raised naming the image, with the original error as its cause."""
    try:
        return stages(image)
    except (OSError, ValueError) as exc:
        filename = getattr(image, "filename", "")
        where = f"preprocess_batch: image {index}" + (f" ({filename!r})" if filename else "")
        where += f", mode {image.mode!r}, size {image.size}"
        if isinstance(exc, OSError):
            raise OSError(f"{where} could not be decoded ({type(exc).__name__}: {exc})") from exc
        raise ValueError(
            f"{where} cannot be preprocessed ({exc}); convert it to a mode Pillow can resize and "
            "convert to RGB first (e.g. image.convert('LA') for 'La', then pass that)"
        ) from exc


def _read_error(index: int, path: Union[str, bytes], exc: Exception) -> Exception:
    where = f"preprocess_batch: image {index} ({path!r})"
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(f"{where}: no such file")
    if isinstance(exc, Image.DecompressionBombError):
        return Image.DecompressionBombError(f"{where}: {exc}")
    return OSError(f"{where} could not be read as an image ({type(exc).__name__}: {exc})")


def _normalization_table() -> torch.Tensor:
    """What `ToTensor` then `Normalize` make of each 8-bit level in each channel: [3, 256].

    Built by running those very transforms on an image that holds every level once per channel, so
    the table is exact by construction: both are element-wise, so an output element depends only on
    its channel and its input level. The dtype is torch's default float dtype, as for `ToTensor`.
    """
    levels = np.arange(_LEVELS, dtype=np.uint8).repeat(_RGB_CHANNELS)  # [R0 G0 B0 R1 G1 B1 ...]
    image = Image.frombytes("RGB", (_LEVELS, 1), levels.tobytes())
    table = Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)(ToTensor()(image))  # [3, 1, 256]
    return table[:, 0, :].contiguous()  # [3, 256]
