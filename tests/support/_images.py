"""Seeded synthetic images of every PIL mode and many sizes, and a compact summary of a tensor.

Shared by tests/test_preprocess.py and tests/data/make_preprocess_golden.py: the golden script runs
the original's transform on `build_images()` and stores `summarize(...)` of each result; the test
rebuilds the same images with this same code and compares. `image_digest` guards against the images
themselves drifting (a different numpy or Pillow); if it trips, regenerate the golden file.

The images are the same bytes on every CPU (golden files made on one machine are checked on
others): pixels come from integer draws, and the one float computation (`make_smooth_rgb`) uses
only exactly rounded IEEE-754 operations. The transform's outputs are compared bit for bit: PIL
resamples 8-bit images in fixed-point integer arithmetic, and ToTensor/Normalize are a division,
a subtraction and a division per value, each rounded exactly on every CPU.

Only numpy, Pillow and torch are imported here, so the golden script can load this file by path
while the original `clip` package is the one on `sys.path`.
"""

import hashlib
import io
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

SEED = 20210105  # CLIP's release date, as a fixed seed
SAMPLE_SEED = 7
SAMPLES_PER_TENSOR = 64
RESOLUTIONS = (224, 288, 336, 384, 448)  # the released models' input resolutions

# Every mode the test covers; "P+index" and "P+bytes" are palette images with a transparent index
# and with per-entry transparency bytes.
MODES = ("RGB", "RGBA", "L", "LA", "P", "P+index", "P+bytes", "CMYK", "I;16", "I", "F", "1", "YCbCr")
MODE_SIZES = ((1, 1), (53, 37), (480, 640))  # (width, height): one pixel, upscaled, downscaled
# Odd sizes and extreme aspect ratios, in RGB; (224, 224) is returned unresized by `Resize`,
# (224, 225) and (999, 223) give centre crops whose offsets are halves (rounded to even).
RGB_SIZES = (
    (3, 7),
    (224, 224),
    (225, 224),
    (224, 225),
    (999, 223),
    (1000, 700),
    (700, 1000),
    (2000, 5),
    (5, 2000),
    (1601, 37),
)
# One pixel by ten thousand: `Resize` makes these 224 x 2,240,000, so they cost seconds and are
# built in the cheapest mode.
HUGE_CASES = (("L", (1, 10000)), ("L", (10000, 1)))

CHANNELS = {"RGB": 3, "YCbCr": 3, "RGBA": 4, "CMYK": 4, "LA": 2, "L": 1}
PALETTE_ENTRIES = 256
F_MODE_RANGE = (-40, 300)  # "F" images reach below 0 and above 255: the conversion must clip
F_MODE_STEPS = 256  # values are multiples of 1/256
SMOOTH_NOISE = 6  # +-6 levels of integer noise on the smooth image


def case_names(include_huge: bool = True) -> List[str]:
    """Names of the images `build_images` makes, in order."""
    names = [f"{mode}-{w}x{h}" for mode in MODES for (w, h) in MODE_SIZES]
    names += [f"RGB-{w}x{h}" for (w, h) in RGB_SIZES]
    names.append("RGB-smooth-800x600")
    if include_huge:
        names += [f"{mode}-{w}x{h}" for mode, (w, h) in HUGE_CASES]
    return names


def build_images(include_huge: bool = True) -> Dict[str, Image.Image]:
    """Every test image, keyed by name ("<mode>-<width>x<height>"); each has its own seeded RNG."""
    specs: List[Tuple[str, Tuple[int, int]]] = [(mode, size) for mode in MODES for size in MODE_SIZES]
    specs += [("RGB", size) for size in RGB_SIZES]
    images: Dict[str, Image.Image] = {}
    for index, (mode, (w, h)) in enumerate(specs):
        images[f"{mode}-{w}x{h}"] = make_image(mode, (w, h), np.random.default_rng([SEED, index]))
    images["RGB-smooth-800x600"] = make_smooth_rgb((800, 600), np.random.default_rng([SEED, len(specs)]))
    if include_huge:
        for offset, (mode, (w, h)) in enumerate(HUGE_CASES, start=len(specs) + 1):
            images[f"{mode}-{w}x{h}"] = make_image(mode, (w, h), np.random.default_rng([SEED, offset]))
    assert list(images) == case_names(include_huge)
    return images


def make_image(mode: str, size: Tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Uniform noise in `mode` (noise makes bicubic overshoot and clip, the hardest case to match)."""
    w, h = size
    if mode in CHANNELS:
        pixels = rng.integers(0, 256, size=(h, w, CHANNELS[mode]), dtype=np.uint8)
        return Image.frombytes(mode, size, pixels.tobytes())
    if mode.startswith("P"):
        image = Image.frombytes("P", size, rng.integers(0, 256, size=(h, w), dtype=np.uint8).tobytes())
        image.putpalette(rng.integers(0, 256, size=3 * PALETTE_ENTRIES, dtype=np.uint8).tobytes(), "RGB")
        if mode == "P+index":
            image.info["transparency"] = int(rng.integers(0, PALETTE_ENTRIES))
        elif mode == "P+bytes":
            image.info["transparency"] = rng.integers(0, 256, size=PALETTE_ENTRIES, dtype=np.uint8).tobytes()
        return image
    if mode == "I;16":
        return Image.frombytes(mode, size, rng.integers(0, 2**16, size=(h, w)).astype("<u2").tobytes())
    if mode == "I":
        # Below 0 and above 255 as well, so the conversion to 8 bits has to clip.
        return Image.frombytes(mode, size, rng.integers(-300, 600, size=(h, w)).astype("=i4").tobytes())
    if mode == "F":
        # Integers / 256: exact in float32 (no float arithmetic that could round differently).
        ints = rng.integers(F_MODE_RANGE[0] * F_MODE_STEPS, F_MODE_RANGE[1] * F_MODE_STEPS, size=(h, w))
        return Image.frombytes(mode, size, (ints / F_MODE_STEPS).astype("=f4").tobytes())
    if mode == "1":
        bits = rng.integers(0, 2, size=(h, w)).astype(bool)
        return Image.frombytes(mode, size, np.packbits(bits, axis=1).tobytes())
    raise ValueError(f"no builder for mode {mode!r}")


def make_smooth_rgb(size: Tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image: gradients and a few blobs plus mild noise.

    Integer draws and +, -, *, / only (each rounded exactly by IEEE-754, one operation at a time):
    no exp and no normal draws, whose results differ in the last bit between libms and SIMD paths,
    so the pixels are the same on every CPU.
    """
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    channels = []
    for _ in range(3):
        cx, cy, r = (float(v) for v in (rng.integers(0, w), rng.integers(0, h), rng.integers(50, 300)))
        dx, dy = x - cx, y - cy
        blob = 120.0 * (r * r) / (r * r + (dx * dx + dy * dy))  # a rational bump, 120 at the centre
        ramp = float(rng.integers(0, 120)) * (x / w) + float(rng.integers(0, 120)) * (y / h)
        noise = rng.integers(-SMOOTH_NOISE, SMOOTH_NOISE + 1, size=(h, w)).astype(np.float64)
        channels.append(blob + ramp + noise)
    pixels = np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
    return Image.frombytes("RGB", size, pixels.tobytes())


def image_digest(image: Image.Image) -> str:
    """SHA256 of everything about an image that the transform reads."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}|{image.size}|".encode())
    digest.update(image.tobytes())
    if image.mode == "P":
        digest.update(bytes(image.getpalette() or []))
        digest.update(repr(image.info.get("transparency")).encode())
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA256 of a tensor's dtype, shape and raw bytes: equal digests mean bit-identical tensors."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}|{tuple(data.shape)}|".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def summarize(tensor: torch.Tensor) -> Dict[str, Any]:
    """A few hundred bytes that pin a float32 tensor down: its digest, sums and seeded samples.

    Computed with numpy (single-threaded): tiny torch ops on shared, busy CPUs can each stall for
    milliseconds waiting for intra-op threads.
    """
    flat = tensor.detach().cpu().reshape(-1).numpy()
    count = min(SAMPLES_PER_TENSOR, flat.size)
    index = np.sort(np.random.default_rng(SAMPLE_SEED).choice(flat.size, size=count, replace=False))
    as_double = flat.astype(np.float64)
    return {
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "sha256": tensor_digest(tensor),
        "sum": float(as_double.sum()),
        "sum_of_squares": float(np.dot(as_double, as_double)),
        "sample_index": [int(i) for i in index],
        "sample": [float(v) for v in flat[index]],
    }


BOMB_SIDE = 20000  # 400 megapixels claimed: over twice Pillow's limit, so refused, not warned about


def bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """Write a PNG of a few dozen bytes whose header claims `side` x `side` pixels (a decompression
    bomb as Pillow sees it) at `path`; return `path`."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # signature (8 bytes), IHDR length (4) and type (4), then width and height; the CRC covers type + 13 bytes
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path
