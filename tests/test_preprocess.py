"""Image preprocessing: `_transform` against the original's outputs, `preprocess_batch` against both.

Golden outputs come from tests/data/make_preprocess_golden.py, which runs the original's
`_transform` (clip-anytorch, in a separate process) on the seeded images of tests/support/_images.py and on
CLIP.png. A summary matches only if the SHA256 of the fp32 bytes matches, i.e. bit for bit.
"""

import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import torch
from _images import (
    RESOLUTIONS,
    build_images,
    case_names,
    image_digest,
    make_image,
    make_smooth_rgb,
    summarize,
)
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

import clip.clip
from clip._preprocess import (
    BICUBIC,
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    _convert_image_to_rgb,
    _transform,
    preprocess_batch,
)

HERE = Path(__file__).resolve().parent
GOLDEN_PATH = HERE / "data" / "preprocess_golden.json"
CLIP_PNG = HERE.parent / "CLIP.png"
REGENERATE = "regenerate with tests/data/make_preprocess_golden.py"
HUGE = {"L-1x10000", "L-10000x1"}  # seconds each; checked once, through preprocess_batch
# Pillow warns when converting a palette image whose transparency is given as bytes (as the original does).
PALETTE_WARNING = "ignore:Palette images with Transparency:UserWarning"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops: see conftest.py


@pytest.fixture(scope="module")
def golden() -> Dict[str, Any]:
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def images() -> Dict[str, Image.Image]:
    return build_images()


@pytest.fixture(scope="module")
def batch_of_all(images: Dict[str, Image.Image]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        return preprocess_batch(list(images.values()), num_workers=2)


@pytest.fixture
def default_dtype() -> Iterator[None]:
    saved = torch.get_default_dtype()
    yield
    torch.set_default_dtype(saved)


def assert_matches(tensor: torch.Tensor, expected: Dict[str, Any], what: str) -> None:
    """Bit-for-bit comparison with a golden summary; on a mismatch, say how far off the samples are."""
    actual = summarize(tensor)
    if actual["sha256"] == expected["sha256"]:
        return
    got = np.asarray(actual["sample"])
    want = np.asarray(expected["sample"])
    pytest.fail(
        f"{what}: output differs from the original's: shape {actual['shape']} vs {expected['shape']}, "
        f"dtype {actual['dtype']} vs {expected['dtype']}, sum {actual['sum']!r} vs {expected['sum']!r}, "
        f"max |diff| over {got.size} samples {np.abs(got - want).max() if got.shape == want.shape else 'n/a'}"
    )


def reference_batch(items: List[Any], n_px: int = 224) -> torch.Tensor:
    """What the release's per-image transform gives, stacked (paths opened with PIL first)."""
    transform = _transform(n_px)
    rows = []
    for item in items:
        if isinstance(item, Image.Image):
            rows.append(transform(item))
        else:
            with Image.open(item) as image:
                rows.append(transform(image))
    return torch.stack(rows)


# --- the transform itself ------------------------------------------------------------------------


def test_transform_has_the_release_stages() -> None:
    transform = _transform(336)
    assert isinstance(transform, Compose)
    resize, crop, to_rgb, to_tensor, normalize = transform.transforms
    assert (
        isinstance(resize, Resize)
        and resize.size == 336
        and resize.interpolation == InterpolationMode.BICUBIC
    )
    assert resize.max_size is None
    assert isinstance(crop, CenterCrop) and tuple(crop.size) == (336, 336)
    assert to_rgb is _convert_image_to_rgb
    assert isinstance(to_tensor, ToTensor)
    assert isinstance(normalize, Normalize)
    # The values the release states (FACTS.md, "preprocess").
    assert tuple(normalize.mean) == (0.48145466, 0.4578275, 0.40821073) == OPENAI_DATASET_MEAN
    assert tuple(normalize.std) == (0.26862954, 0.26130258, 0.27577711) == OPENAI_DATASET_STD
    assert BICUBIC == InterpolationMode.BICUBIC


def test_clip_clip_reexports_the_transform() -> None:
    assert clip.clip._transform is _transform
    assert clip.clip._convert_image_to_rgb is _convert_image_to_rgb
    assert clip.clip.BICUBIC is BICUBIC


def test_convert_image_to_rgb_converts_and_leaves_the_input_alone() -> None:
    image = make_image("RGBA", (5, 4), np.random.default_rng(0))
    before = image.tobytes()
    converted = _convert_image_to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (5, 4)
    assert image.mode == "RGBA" and image.tobytes() == before


@pytest.mark.golden
def test_golden_covers_every_case_and_the_images_are_unchanged(
    golden: Dict[str, Any], images: Dict[str, Image.Image]
) -> None:
    assert list(golden["images"]) == case_names()
    for name, image in images.items():
        assert image_digest(image) == golden["images"][name]["image_sha256"], (
            f"test image {name} is not the one the golden file was made from ({REGENERATE})"
        )


@pytest.mark.golden
@pytest.mark.filterwarnings(PALETTE_WARNING)
@pytest.mark.parametrize("name", [name for name in case_names() if name not in HUGE])
def test_transform_matches_the_original(
    name: str, golden: Dict[str, Any], images: Dict[str, Image.Image]
) -> None:
    assert_matches(_transform(224)(images[name]), golden["images"][name]["output"], name)


@pytest.mark.golden
@pytest.mark.parametrize("n_px", RESOLUTIONS)
def test_transform_matches_the_original_at_every_released_resolution(
    n_px: int, golden: Dict[str, Any], images: Dict[str, Image.Image]
) -> None:
    with Image.open(CLIP_PNG) as image:
        assert image_digest(image) == golden["resolutions"]["CLIP.png"]["image_sha256"]
        assert_matches(
            _transform(n_px)(image), golden["resolutions"]["CLIP.png"]["outputs"][str(n_px)], "CLIP.png"
        )
    for name, entry in golden["resolutions"].items():
        if name != "CLIP.png":
            assert_matches(_transform(n_px)(images[name]), entry["outputs"][str(n_px)], f"{name} at {n_px}")


# --- preprocess_batch against the original ------------------------------------------------------


@pytest.mark.golden
def test_batch_matches_the_original_on_every_image(
    golden: Dict[str, Any], batch_of_all: torch.Tensor
) -> None:
    names = case_names()
    assert batch_of_all.shape == (len(names), 3, 224, 224) and batch_of_all.dtype == torch.float32
    for row, name in zip(batch_of_all, names):
        assert_matches(row, golden["images"][name]["output"], f"preprocess_batch on {name}")


@pytest.mark.golden
@pytest.mark.parametrize("n_px", RESOLUTIONS)
def test_batch_of_paths_matches_the_original_at_every_released_resolution(
    n_px: int, golden: Dict[str, Any]
) -> None:
    batch = preprocess_batch([CLIP_PNG, str(CLIP_PNG)], n_px=n_px, num_workers=2)
    assert batch.shape == (2, 3, n_px, n_px)
    for row in batch:
        assert_matches(row, golden["resolutions"]["CLIP.png"]["outputs"][str(n_px)], f"CLIP.png at {n_px}")


# --- preprocess_batch against the per-image transform, in process ------------------------------


def mixed_images(count: int, seed: int) -> List[Image.Image]:
    rng = np.random.default_rng(seed)
    modes = ("RGB", "RGBA", "L", "P", "LA", "CMYK")
    out = []
    for index in range(count):
        size = (int(rng.integers(1, 400)), int(rng.integers(1, 400)))
        out.append(make_image(modes[index % len(modes)], size, rng))
    return out


def test_every_8_bit_level_of_every_channel_is_normalised_bit_for_bit() -> None:
    # A 224 x 224 RGB image is neither resized nor cropped, so its levels reach the normalisation
    # as they are; each level appears in each channel at many positions.
    rng = np.random.default_rng(1)
    levels = np.tile(np.arange(256, dtype=np.uint8), 224 * 224 // 256 + 1)[: 224 * 224]
    pixels = np.stack([rng.permutation(levels) for _ in range(3)], axis=-1).reshape(224, 224, 3)
    image = Image.frombytes("RGB", (224, 224), pixels.tobytes())
    batch = preprocess_batch([image, image.transpose(Image.Transpose.ROTATE_90)])
    assert torch.equal(batch, reference_batch([image, image.transpose(Image.Transpose.ROTATE_90)]))
    assert torch.equal(batch[0].view(torch.int32), _transform(224)(image).view(torch.int32))  # same bits


@pytest.mark.parametrize("n_px", [1, 7, 224, 288])
def test_batch_equals_stacked_transform_on_mixed_images(n_px: int) -> None:
    items = mixed_images(12, seed=n_px)
    assert torch.equal(preprocess_batch(items, n_px=n_px, num_workers=3), reference_batch(items, n_px))


@pytest.mark.parametrize("num_workers", [None, 0, 1, 2, 5])
def test_batch_result_does_not_depend_on_the_number_of_workers(num_workers: Any) -> None:
    items = mixed_images(7, seed=3)
    assert torch.equal(preprocess_batch(items, num_workers=num_workers), reference_batch(items))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_batch_follows_the_default_dtype_like_to_tensor(dtype: torch.dtype, default_dtype: None) -> None:
    items = mixed_images(4, seed=5)
    torch.set_default_dtype(dtype)
    batch = preprocess_batch(items)
    reference = reference_batch(items)
    assert batch.dtype == reference.dtype == dtype
    assert torch.equal(batch, reference)


def test_batch_of_files_jpeg_png_str_and_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    paths: List[Any] = []
    for index, (mode, fmt) in enumerate([("RGB", "JPEG"), ("L", "JPEG"), ("RGBA", "PNG"), ("RGB", "PNG")]):
        image = make_smooth_rgb((int(rng.integers(300, 700)), int(rng.integers(300, 700))), rng).convert(mode)
        path = tmp_path / f"image{index}.{fmt.lower()}"
        image.save(path, fmt)
        paths.append(path if index % 2 else str(path))
    batch = preprocess_batch(paths, num_workers=2)
    assert torch.equal(batch, reference_batch(paths))


def test_duplicates_and_lazily_opened_images(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    make_smooth_rgb((640, 480), np.random.default_rng(2)).save(path, "JPEG")
    lazy = Image.open(path)  # not loaded yet: the same object twice must not be decoded by two threads
    other = make_image("RGBA", (300, 200), np.random.default_rng(3))
    items = [lazy, other, lazy, str(path), other, path]
    batch = preprocess_batch(items, num_workers=4)
    expected = reference_batch([path, other])
    assert torch.equal(batch, expected[[0, 1, 0, 0, 1, 0]])
    lazy.close()


@pytest.mark.filterwarnings(PALETTE_WARNING)
def test_images_passed_in_are_not_modified() -> None:
    items = mixed_images(6, seed=9) + [make_image("P+index", (40, 30), np.random.default_rng(4))]
    before = [(im.mode, im.size, im.tobytes(), dict(im.info)) for im in items]
    preprocess_batch(items, num_workers=2)
    assert [(im.mode, im.size, im.tobytes(), dict(im.info)) for im in items] == before


def test_workers_do_the_work_off_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = set()
    real_convert = Image.Image.convert

    def spy(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        seen.add(threading.current_thread().name)
        return real_convert(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", spy)
    items = mixed_images(8, seed=12)
    preprocess_batch(items, num_workers=2)
    assert seen and all(name.startswith("clip-preprocess") for name in seen)


# --- edge cases and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("n_px", [224, 336])
def test_empty_batch(n_px: int) -> None:
    batch = preprocess_batch([], n_px=n_px)
    assert batch.shape == (0, 3, n_px, n_px) and batch.dtype == torch.float32


@pytest.mark.parametrize("bad", [42, None, b"bytes", np.zeros((4, 4, 3), np.uint8), torch.zeros(3, 4, 4)])
def test_a_non_image_item_is_a_type_error_naming_its_index_and_type(bad: Any) -> None:
    items = [make_image("RGB", (8, 8), np.random.default_rng(0)), bad]
    with pytest.raises(TypeError, match=rf"item 1 is a .*{type(bad).__name__}"):
        preprocess_batch(items)


@pytest.mark.parametrize("single", ["photo.jpg", Path("photo.jpg"), Image.new("RGB", (4, 4))])
def test_a_single_image_or_path_instead_of_a_sequence_is_a_type_error(single: Any) -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        preprocess_batch(single)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (10, 10)).save(good)
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match=r"image 1 .*missing\.jpg"):
        preprocess_batch([good, missing], num_workers=2)


@pytest.mark.parametrize("content", [b"not an image at all", b""])
def test_a_file_that_is_not_an_image_names_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(OSError, match=r"image 0 .*notes\.txt.* could not be read"):
        preprocess_batch([path])


def test_a_truncated_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    make_smooth_rgb((400, 300), np.random.default_rng(6)).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"image 0 .*cut\.jpg.* could not be read"):
        preprocess_batch([str(path)])


@pytest.mark.parametrize(
    "n_px, error",
    [(0, ValueError), (-224, ValueError), (224.0, TypeError), ("224", TypeError), (True, TypeError)],
)
def test_bad_n_px(n_px: Any, error: type) -> None:
    with pytest.raises(error, match="n_px must be"):
        preprocess_batch([], n_px=n_px)


@pytest.mark.parametrize("num_workers, error", [(-1, ValueError), (2.0, TypeError), ("2", TypeError)])
def test_bad_num_workers(num_workers: Any, error: type) -> None:
    with pytest.raises(error, match="num_workers must be None or an int"):
        preprocess_batch([], num_workers=num_workers)


def test_no_file_handles_are_left_open(tmp_path: Path) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count open files")
    paths = [tmp_path / f"image{index}.png" for index in range(4)]
    for index, path in enumerate(paths):
        Image.new("RGB", (50 + index, 40)).save(path)
    before = len(os.listdir("/proc/self/fd"))
    preprocess_batch(paths, num_workers=2)
    assert len(os.listdir("/proc/self/fd")) == before
