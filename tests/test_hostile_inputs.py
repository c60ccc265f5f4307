"""Hostile inputs across the whole API: each case raises a clear error (type, and a message saying
what was wrong and what to do) or is handled correctly, and leaves the cache and the disk as they
were (``unchanged``: listing and SHA256 of every file, before and after).

Cases covered by other test files are not repeated here; the table says where each case lives
("tokenizer:" = tests/test_tokenizer.py, and so on; "here:" = this module). "(fix)" marks a case that
needed a library change to pass; "(xfail)" one that needs a change in clip/model.py.

================================  ===========================================================================
case                              test
================================  ===========================================================================
**Text**
None, ints, bytes as texts        tokenizer: test_non_text_argument_raises_type_error
None/bytes/int/list as items      tokenizer: test_non_str_item_raises_type_error_naming_index_and_type
a generator of texts              tokenizer: test_accepts_sequences_and_generators_without_mutating
a generator that raises           here: test_generator_errors_are_not_masked (fix)
a generator of non-str            here: test_generator_of_non_str_items
NUL bytes, lone surrogates        tokenizer: test_nul_and_lone_surrogates_behave_like_the_original
1 MB texts                        tokenizer: test_megabyte_texts_truncate_like_the_original
a 10 MB text                      here: test_ten_megabyte_text (fix: the message quotes its start only)
a 1 MB word without a space       here: test_megabyte_word_is_handled_and_not_cached (fix)
100k texts in one call            here: test_hundred_thousand_texts_memory_is_bounded
ids outside the vocabulary        model: test_bad_text_raises (49408, -1);
                                  here: test_token_ids_far_outside_the_vocabulary (2**40)
**Images**                        (``preprocess`` = ``_transform(224)``, and ``clip.preprocess_batch``)
13 PIL modes, 1x1 and larger      preprocess: test_transform_matches_the_original (golden),
                                  test_batch_matches_the_original_on_every_image
the 8 other PIL modes             here: test_remaining_pil_modes, test_mode_pillow_cannot_convert (fix)
1x10000 and 10000x1               preprocess: test_batch_matches_the_original_on_every_image
truncated JPEG, by path           preprocess: test_a_truncated_file_names_the_path
truncated JPEG, opened image      here: test_truncated_jpeg_opened_lazily (fix)
PNG: corrupt CRC or data          here: test_png_with_corrupt_idat_crc_decodes_like_the_intact_file,
                                  test_png_with_corrupt_header_or_data
animated GIF                      here: test_animated_gif_gives_the_first_frame
decompression bomb                here: test_pillow_bomb_guard_is_untouched, test_decompression_bomb_*
EXIF-rotated JPEG                 here: test_exif_rotation_is_ignored_like_the_original
16-bit, float images in memory    preprocess: modes I;16, I, F of the golden tests above
16-bit PNG, float TIFF files      here: test_sixteen_bit_png_and_float_tiff_files
**Model inputs**
wrong channels / size (ViT)       model: test_bad_image_shape_names_expected_shape
wrong size (ResNet)               here: test_resnet_wrong_resolution_names_expected_shape
uint8 image tensor                model: test_uint8_image_warns
tokens too long; float tokens     model: test_bad_text_raises
shorter tokens                    model: test_short_text_matches_padded
empty batches (N=0)               here: test_empty_batches
NaN / inf images                  here: test_nan_and_inf_images_do_not_crash
L=0, bool, non-tensor inputs      here: test_malformed_model_inputs_are_named
**Checkpoints**                   (``clip.load(path)``)
a directory; a missing path       load: test_directory_name, test_unknown_name
a FIFO, /dev/zero                 here: test_non_regular_files (fix)
an HTML page saved as .pt         load: test_html_page_error_says_the_download_failed
empty, random, truncated, zip     here: test_wrong_files_through_load (reader alone: checkpoint: test_*)
pickle calling os.system          load: test_unsafe_archive_is_refused_and_not_run
builtins.eval; jit; legacy        here: test_code_in_checkpoints_never_runs
missing keys / wrong shapes       load: test_missing_keys_are_named, test_wrong_shapes_are_named
zip bombs                         here: test_zip_bombs_are_refused (fix for torch.save archives),
                                  test_compressed_torch_save_archive_still_loads (fix)
records pointing outside          here: test_records_pointing_outside; storage keys:
                                  checkpoint: test_storage_keys_cannot_point_outside_the_archive
other architectures               here: test_other_architectures_are_named_not_built
**Downloads**                     (``clip.load(name)``, ``_MODELS`` pointed at a local server)
server stalls                     here: test_download_stall_times_out
fewer / more bytes than length    here: test_download_short_body_is_kept_for_resuming,
                                  test_download_long_body_is_discarded
an HTML page                      load: test_corrupt_download_is_not_loaded;
                                  download: test_html_page_instead_of_file (the message)
redirects: followed, file://,     here: test_download_redirects
loop
read-only cache; full disk        here: test_download_read_only_cache, test_download_disk_full
stale lock of a killed process    here: test_download_stale_lock_of_killed_process
ten processes, one model          here: test_ten_processes_load_the_same_model
cache root is a file; bad type    here: test_download_root_problems (fix for the type)
**Devices**
cuda, CUDA, cuda:7, mps           load: test_cuda_without_a_gpu, test_cuda_index_out_of_range,
(patched)                         test_mps_when_unavailable
the same unpatched; meta, -1      here: test_unavailable_devices_on_this_machine (fix for -1)
================================  ===========================================================================
"""

import builtins
import errno
import hashlib
import io
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pytest
import torch
from _checkpoints import (
    archive_root,
    example_inputs,
    make_release_dir,
    release_archive,
    release_file_name,
    rewrite_zip,
    save_state_dict,
)
from _faults import DiskFullFile
from _http_server import FileServer, sha256_hex
from _images import make_image, make_smooth_rgb
from PIL import Image

import clip
import clip._weights.download as dl
import clip.clip as clip_module
from clip._preprocess import _transform, preprocess_batch
from clip._tokenize import get_tokenizer
from clip._weights import LEGACY_TORCH_MAGIC, CheckpointError, UnsafeCheckpointError
from clip._weights.download import DownloadError

POSIX = sys.platform != "win32"
TOO_LONG = "is too long for context length 77$"
EOT = 49407
PILLOW_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's own definition


# ----------------------------------------------------------------------------------------------
# Disk snapshots


def snapshot(*roots: Path) -> Dict[str, Optional[str]]:
    """Every path under `roots` -> SHA256 of its contents ("<dir>" for folders; None: root absent)."""
    state: Dict[str, Optional[str]] = {}
    for root in roots:
        if not root.exists():
            state[str(root)] = None
            continue
        for path in sorted(root.rglob("*")):
            key = str(path)
            if path.is_dir():
                state[key] = "<dir>"
            elif path.is_file():
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[key] = "<special>"
    return state


def changes(before: Dict[str, Optional[str]], after: Dict[str, Optional[str]]) -> Dict[str, List[str]]:
    """What differs between two snapshots."""
    return {
        "created": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in before if k in after and before[k] != after[k]),
    }


@contextmanager
def unchanged(*roots: Path) -> Iterator[None]:
    """Assert that nothing under `roots` is created, removed or changed inside the block."""
    before = snapshot(*roots)
    yield
    diff = changes(before, snapshot(*roots))
    if any(diff.values()):
        raise AssertionError(f"the disk changed: {diff}")


def test_unchanged_detects_every_kind_of_change(tmp_path: Path) -> None:
    (tmp_path / "kept").write_bytes(b"a")
    (tmp_path / "edited").write_bytes(b"a")
    (tmp_path / "removed").write_bytes(b"a")
    before = snapshot(tmp_path)
    with pytest.raises(AssertionError, match="the disk changed"), unchanged(tmp_path):
        (tmp_path / "edited").write_bytes(b"b")
        (tmp_path / "removed").unlink()
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "created.partial").write_bytes(b"")
    assert changes(before, snapshot(tmp_path)) == {
        "created": [str(tmp_path / "sub"), str(tmp_path / "sub" / "created.partial")],
        "removed": [str(tmp_path / "removed")],
        "changed": [str(tmp_path / "edited")],
    }
    with unchanged(tmp_path):  # reading changes nothing
        snapshot(tmp_path)


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """No case may write to the default cache; no download may wait for the 30 s default timeout."""
    default_cache = tmp_path_factory.mktemp("default-cache") / "clip"
    monkeypatch.setenv(dl.CACHE_DIR_ENV, str(default_cache))
    monkeypatch.setenv(dl.TIMEOUT_ENV, "5")
    yield
    assert not default_cache.exists(), "something was written to the default cache"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops: see conftest.py


# ----------------------------------------------------------------------------------------------
# Text


def test_generator_errors_are_not_masked() -> None:
    def captions() -> Iterator[str]:
        yield "a photo of a cat"
        raise TypeError("the caption source failed")

    with pytest.raises(TypeError, match="^the caption source failed$"):
        clip.tokenize(captions())


def test_generator_of_non_str_items() -> None:
    with pytest.raises(TypeError, match=r"texts\[2\] must be a str, got bytes"):
        clip.tokenize(t for t in ["a", "b", b"c"])


def test_ten_megabyte_text() -> None:
    text = "a photo of a cat on a mat. " * 388_000  # 10.5 MB of plain text
    assert len(text) > 10_000_000
    start = time.perf_counter()
    row = clip.tokenize(text, truncate=True)
    elapsed = time.perf_counter() - start
    head = clip.tokenize(text[:1000], truncate=True)
    assert torch.equal(row, head)  # the first 76 ids depend only on the start of the text
    assert row[0, -1].item() == EOT
    assert elapsed < 20, elapsed  # ~0.3 s here: the text is cleaned piecewise, not whole
    with pytest.raises(RuntimeError, match=TOO_LONG) as info:
        clip.tokenize(["fine", text])
    message = str(info.value)
    assert len(message) < 1000  # the original quotes all 10 MB
    assert message.startswith("Input a photo of a cat") and f"{len(text):,} characters" in message
    assert "truncate=True" in message


def test_megabyte_word_is_handled_and_not_cached() -> None:
    word = "x" * 1_000_000  # one pre-token: BPE has to see all of it
    row = clip.tokenize(word, truncate=True)
    assert row.shape == (1, 77) and row[0, 0].item() == EOT - 1 and row[0, -1].item() == EOT
    with pytest.raises(RuntimeError, match=TOO_LONG):
        clip.tokenize(word)
    cached = get_tokenizer()._word_cache
    assert max(len(key) for key in cached) <= 64  # the megabyte word was not kept


def test_hundred_thousand_texts_memory_is_bounded() -> None:
    texts = [f"a photo of item {index} on shelf {index % 97}" for index in range(100_000)]
    clip.tokenize(texts[:10])  # build the tokenizer outside the measurement
    tracemalloc.start()
    try:
        tokens = clip.tokenize(texts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output_bytes = 100_000 * 77 * 4  # 30.8 MB of int32, allocated once (a bytearray)
    assert tokens.shape == (100_000, 77) and tokens.dtype == torch.int32
    assert tokens.untyped_storage().nbytes() == output_bytes
    # Measured: peak 52 MB = output + bounded caches (text cache 32k entries); no per-row tensors.
    assert peak < output_bytes + 40 * 2**20, peak
    assert torch.equal(tokens[12_345], clip.tokenize(texts[12_345])[0])


# ----------------------------------------------------------------------------------------------
# Images

OTHER_MODES = ("I;16B", "I;16L", "I;16N", "LAB", "HSV", "RGBX", "RGBa", "PA")


def _noise(mode: str, size: "tuple[int, int]", seed: int) -> Image.Image:
    """Noise in any mode: random bytes of the mode's raw layout."""
    probe = Image.new(mode, (1, 1))
    nbytes = len(probe.tobytes()) * size[0] * size[1]
    data = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    return Image.frombytes(mode, size, data)


@pytest.mark.parametrize("mode", OTHER_MODES)
def test_remaining_pil_modes(mode: str) -> None:
    image = _noise(mode, (61, 40), seed=len(mode))
    single = _transform(224)(image)
    assert single.shape == (3, 224, 224) and torch.isfinite(single).all()
    assert torch.equal(preprocess_batch([image], num_workers=0)[0], single)
    assert image.mode == mode  # the input is not converted in place


def test_mode_pillow_cannot_convert() -> None:
    image = _noise("La", (20, 10), seed=1)
    with pytest.raises(ValueError, match="La"):  # Pillow's own error, as with the original
        _transform(224)(image)
    good = make_image("RGB", (8, 8), np.random.default_rng(0))
    with pytest.raises(
        ValueError, match=r"image 1, mode 'La', size \(20, 10\) cannot be preprocessed"
    ) as info:
        preprocess_batch([good, image], num_workers=2)
    assert "convert" in str(info.value) and isinstance(info.value.__cause__, ValueError)
    assert preprocess_batch([image.convert("LA")]).shape == (1, 3, 224, 224)  # what the message suggests


def _jpeg_bytes(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


def test_truncated_jpeg_opened_lazily(tmp_path: Path) -> None:
    data = _jpeg_bytes(make_smooth_rgb((300, 200), np.random.default_rng(3)))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with unchanged(tmp_path):
        with Image.open(path) as image, pytest.raises(OSError, match="truncated"):
            _transform(224)(image)
        with Image.open(path) as image, pytest.raises(OSError, match=r"image 0 \('.*cut\.jpg'\).*truncated"):
            preprocess_batch([image])


def _png_chunks(data: bytes) -> List["tuple[int, bytes]"]:
    """(offset, type) of every chunk of a PNG file."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((offset, data[offset + 4 : offset + 8]))
        offset += 12 + length
    return chunks


def _png_with(data: bytes, chunk_type: bytes, flip_at: str) -> bytes:
    """`data` with one byte flipped in the first `chunk_type` chunk: its CRC or its payload."""
    offset = next(at for at, kind in _png_chunks(data) if kind == chunk_type)
    (length,) = struct.unpack(">I", data[offset : offset + 4])
    index = offset + 8 + length if flip_at == "crc" else offset + 8 + length // 2
    out = bytearray(data)
    out[index] ^= 0xFF
    return bytes(out)


def _png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_png_with_corrupt_idat_crc_decodes_like_the_intact_file(tmp_path: Path) -> None:
    # Pillow (and so the original) does not check IDAT checksums: the pixels are intact and used.
    intact = _png_of(make_smooth_rgb((90, 70), np.random.default_rng(4)))
    (tmp_path / "intact.png").write_bytes(intact)
    (tmp_path / "crc.png").write_bytes(_png_with(intact, b"IDAT", "crc"))
    with unchanged(tmp_path):
        with Image.open(tmp_path / "intact.png") as image:
            expected = _transform(224)(image)
        with Image.open(tmp_path / "crc.png") as image:
            assert torch.equal(_transform(224)(image), expected)
        assert torch.equal(preprocess_batch([tmp_path / "crc.png"])[0], expected)


@pytest.mark.parametrize(
    "chunk, flip_at", [(b"IHDR", "crc"), (b"IDAT", "data")], ids=["header-crc", "idat-data"]
)
def test_png_with_corrupt_header_or_data(tmp_path: Path, chunk: bytes, flip_at: str) -> None:
    intact = _png_of(make_smooth_rgb((90, 70), np.random.default_rng(5)))
    path = tmp_path / "broken.png"
    path.write_bytes(_png_with(intact, chunk, flip_at))
    with unchanged(tmp_path), pytest.raises(OSError, match=r"image 0 \('.*broken\.png'\) could not be read"):
        preprocess_batch([path])


def test_animated_gif_gives_the_first_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    frames = [make_smooth_rgb((64, 48), rng).convert("P") for _ in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    transform = _transform(224)
    with unchanged(tmp_path):
        with Image.open(path) as gif:
            assert gif.n_frames == 3
            first = transform(gif.copy())  # frame 0, as Pillow gives it
            gif.seek(1)
            second = transform(gif.copy())
        with Image.open(path) as gif:
            assert torch.equal(transform(gif), first)
        assert not torch.equal(first, second)  # the frames differ: the comparisons can fail
        batch = preprocess_batch([path, str(path)], num_workers=2)
    assert torch.equal(batch[0], first) and torch.equal(batch[1], first)


def test_pillow_bomb_guard_is_untouched() -> None:
    # clip is imported (and preprocess used) by now: Pillow's limit is still its own default.
    preprocess_batch([Image.new("RGB", (4, 4))])
    clip.load(str(release_archive("vit")), device="cpu")
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_MAX_PIXELS
    package = Path(clip.__file__).parent
    assigned = [p.name for p in package.glob("*.py") if "MAX_IMAGE_PIXELS =" in p.read_text(encoding="utf-8")]
    assert assigned == []


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file declaring `width` x `height` 8-bit grey pixels (its data is one short row)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20_000, 20_000))  # 400 M pixels in 100 bytes
    start = time.perf_counter()
    with (
        unchanged(tmp_path),
        pytest.raises(Image.DecompressionBombError, match=r"image 0 \('.*bomb\.png'\).*pixels"),
    ):
        preprocess_batch([path], num_workers=2)
    assert time.perf_counter() - start < 5  # refused before decoding


def test_decompression_bomb_warning_reaches_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the limit and twice the limit Pillow warns (then this file's missing data fails).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    path = tmp_path / "large.png"
    path.write_bytes(_png_header_only(150, 100))
    with (
        unchanged(tmp_path),
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(OSError, match=r"image 0 \('.*large\.png'\)"),
    ):
        preprocess_batch([path], num_workers=2)


def test_exif_rotation_is_ignored_like_the_original(tmp_path: Path) -> None:
    image = make_smooth_rgb((120, 60), np.random.default_rng(7))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    (tmp_path / "rotated.jpg").write_bytes(_jpeg_bytes(image, exif=exif.tobytes()))
    (tmp_path / "plain.jpg").write_bytes(_jpeg_bytes(image))
    transform = _transform(224)
    with unchanged(tmp_path):
        with Image.open(tmp_path / "rotated.jpg") as rotated, Image.open(tmp_path / "plain.jpg") as plain:
            assert rotated.getexif()[0x0112] == 6 and rotated.size == (120, 60)
            expected = transform(plain)
            assert torch.equal(transform(rotated), expected)
            assert not torch.equal(transform(plain.transpose(Image.Transpose.ROTATE_270)), expected)
        batch = preprocess_batch([tmp_path / "rotated.jpg"])
    assert torch.equal(batch[0], expected)


def test_sixteen_bit_png_and_float_tiff_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    Image.fromarray(rng.integers(0, 2**16, (50, 70)).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rng.uniform(-40.0, 300.0, (50, 70)).astype(np.float32)).save(tmp_path / "float.tiff")
    with unchanged(tmp_path):
        for name, mode in (("deep.png", "I;16"), ("float.tiff", "F")):
            with Image.open(tmp_path / name) as image:
                assert image.mode == mode
                expected = _transform(224)(image)
            assert torch.isfinite(expected).all()
            assert torch.equal(preprocess_batch([tmp_path / name])[0], expected)


# ----------------------------------------------------------------------------------------------
# Model inputs


@pytest.fixture(scope="module")
def models() -> Dict[str, torch.nn.Module]:
    return {arch: clip.load(str(release_archive(arch)), device="cpu")[0] for arch in ("vit", "resnet")}


def test_resnet_wrong_resolution_names_expected_shape(models: Dict[str, torch.nn.Module]) -> None:
    for shape in [(2, 3, 32, 32), (2, 4, 64, 64), (64, 64, 3)]:
        with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\); got"):
            models["resnet"].encode_image(torch.zeros(shape))


def test_token_ids_far_outside_the_vocabulary(models: Dict[str, torch.nn.Module]) -> None:
    tokens = clip.tokenize(["a cat"]).long()
    tokens[0, 2] = 2**40
    with pytest.raises(ValueError, match=r"must lie in \[0, 49408\)"):
        models["vit"].encode_text(tokens)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_empty_batches(arch: str, models: Dict[str, torch.nn.Module]) -> None:
    # Checked: N=0 is handled, not an error; the results have the shapes the formulas give.
    model = models[arch]
    res = model.visual.input_resolution
    embed_dim = model.text_projection.shape[1]
    images, tokens = torch.zeros(0, 3, res, res), clip.tokenize([])
    with torch.no_grad():
        assert model.encode_image(images).shape == (0, embed_dim)
        assert model.encode_text(tokens).shape == (0, embed_dim)
        logits_per_image, logits_per_text = model(images, clip.tokenize(["a cat", "a dog"]))
        assert logits_per_image.shape == (0, 2) and logits_per_text.shape == (2, 0)
        logits_per_image, _ = model(example_inputs(arch, n_images=2)[0], tokens)
        assert logits_per_image.shape == (2, 0)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_nan_and_inf_images_do_not_crash(arch: str, models: Dict[str, torch.nn.Module]) -> None:
    model = models[arch]
    images, tokens = example_inputs(arch, n_images=3)
    images[1] = float("nan")
    images[2, :, 0, 0] = float("inf")
    with torch.no_grad():
        features = model.encode_image(images)
        clean = model.encode_image(images[:1])
        logits, _ = model(images, tokens)
    assert features.shape == (3, model.text_projection.shape[1])
    assert torch.isnan(features[1]).all()  # NaN propagates to that image only
    torch.testing.assert_close(features[:1], clean, atol=1e-5, rtol=1e-5)  # the others are unaffected
    assert torch.isfinite(logits[0]).all() and torch.isnan(logits[1]).all()


@pytest.mark.parametrize(
    "method, value, error",
    [
        ("encode_text", torch.zeros(2, 0, dtype=torch.long), ValueError),
        ("encode_text", torch.zeros(1, 77, dtype=torch.bool), ValueError),
        ("encode_text", np.zeros((1, 77), dtype=np.int64), TypeError),
        ("encode_image", [[0.0]], TypeError),
    ],
    ids=["tokens-L0", "tokens-bool", "tokens-numpy", "image-list"],
)
def test_malformed_model_inputs_are_named(
    method: str, value: Any, error: type, models: Dict[str, torch.nn.Module]
) -> None:
    with pytest.raises(error, match="encode_"):
        getattr(models["vit"], method)(value)


# ----------------------------------------------------------------------------------------------
# Checkpoints through clip.load(path)


def _load(path: Path, **options: Any) -> Any:
    return clip.load(str(path), device="cpu", **options)


@pytest.mark.skipif(not POSIX, reason="FIFOs and /dev/zero are POSIX")
def test_non_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)  # reading it would block forever
    with unchanged(tmp_path), pytest.raises(CheckpointError, match="not a regular file"):
        _load(fifo)
    if os.path.exists("/dev/zero"):  # reading it would never end
        with pytest.raises(CheckpointError, match="not a regular file"):
            clip.load("/dev/zero", device="cpu")


def _truncated(tmp_path: Path) -> Path:
    data = release_archive("vit").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


WRONG_FILES = {
    "empty": (lambda tmp: tmp / "empty.pt", b"", "empty \\(0 bytes\\).*download it again"),
    "random": (lambda tmp: tmp / "noise.pt", os.urandom(4096), "not a PyTorch checkpoint"),
    "zip-of-text": (lambda tmp: tmp / "docs.pt", None, "not a PyTorch archive"),
    "truncated": (_truncated, None, "truncated.*download it again"),
}


@pytest.mark.parametrize("case", list(WRONG_FILES))
@pytest.mark.parametrize("jit", [False, True], ids=["python", "jit"])
def test_wrong_files_through_load(tmp_path: Path, case: str, jit: bool) -> None:
    where, content, message = WRONG_FILES[case]
    path = where(tmp_path)
    if case == "zip-of-text":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("README.txt", "not weights")
    elif content is not None:
        path.write_bytes(content)
    with unchanged(tmp_path), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "File .* is not a JIT archive", UserWarning)
        with pytest.raises(CheckpointError, match=message):
            _load(path, jit=jit)


class _Calls:
    """Pickles as a call of `func(*args)`: what a malicious checkpoint holds."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _evil_archives(tmp_path: Path, marker: Path) -> Dict[str, Path]:
    source = release_archive("vit")
    data_pkl = f"{archive_root(source)}/data.pkl"
    touch = f"open({str(marker)!r}, 'w').close()"
    payloads = {
        "os.system": pickle.dumps(_Calls(os.system, f"touch {marker}"), protocol=2),
        "builtins.eval": pickle.dumps(_Calls(builtins.eval, touch), protocol=2),
    }
    out = {
        f"archive-{name}": rewrite_zip(source, tmp_path / f"evil-{name}.pt", {data_pkl: payload})
        for name, payload in payloads.items()
    }
    plain = save_state_dict(tmp_path / "plain.pt", "vit")
    out["state-dict-builtins.eval"] = rewrite_zip(
        plain, tmp_path / "evil-sd.pt", {f"{archive_root(plain)}/data.pkl": payloads["builtins.eval"]}
    )
    out["legacy-os.system"] = tmp_path / "evil-legacy.pt"
    out["legacy-os.system"].write_bytes(pickle.dumps(LEGACY_TORCH_MAGIC, protocol=2) + payloads["os.system"])
    plain.unlink()
    return out


def test_code_in_checkpoints_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for name, path in _evil_archives(tmp_path, marker).items():
        with unchanged(tmp_path):
            with pytest.raises(UnsafeCheckpointError, match="nothing from the file was run"):
                _load(path)
            # jit=True compiles code from an archive (trusted files only), but TorchScript's own
            # reader knows no Python globals either; a non-archive falls back to the safe reader.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "File .* is not a JIT archive", UserWarning)
                with pytest.raises(CheckpointError, match="posix.system|builtins.eval|nothing from the file"):
                    _load(path, jit=True)
        assert not marker.exists(), name


def _bomb_member(zout: zipfile.ZipFile, name: str, nbytes: int) -> None:
    """Write `nbytes` of zeros as a deflated member, streaming (never holding them in memory)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    block = bytes(1 << 20)
    with zout.open(info, "w", force_zip64=True) as member:
        for _ in range(nbytes // len(block)):
            member.write(block)


def _with_bomb(source: Path, target: Path, member: str, nbytes: int) -> Path:
    """A copy of the torch archive `source` whose `member` is `nbytes` of deflated zeros."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", compresslevel=1) as zout:
        for info in zin.infolist():
            if info.filename == member:
                _bomb_member(zout, member, nbytes)
            else:
                zout.writestr(info, zin.read(info))
    return target


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    archive = release_archive("vit")
    plain = save_state_dict(tmp_path / "plain.pt", "vit")
    tensor_bomb, pickle_bomb = 32 * 2**20, 80 * 2**20  # data.pkl: above its 64 MiB limit
    bombs = {  # name: (source, bomb)
        "archive tensor": (
            archive,
            _with_bomb(archive, tmp_path / "a.pt", f"{archive_root(archive)}/data/0", tensor_bomb),
        ),
        "archive data.pkl": (
            archive,
            _with_bomb(archive, tmp_path / "b.pt", f"{archive_root(archive)}/data.pkl", pickle_bomb),
        ),
        "torch.save tensor": (
            plain,
            _with_bomb(plain, tmp_path / "c.pt", f"{archive_root(plain)}/data/0", tensor_bomb),
        ),
    }
    for name, (source, path) in bombs.items():
        assert path.stat().st_size < source.stat().st_size + 2**20, name  # megabytes that inflate to 32+ MiB
        start = time.perf_counter()
        with unchanged(tmp_path), pytest.raises(CheckpointError, match="zip bomb|refusing to read") as info:
            _load(path)
        assert time.perf_counter() - start < 5, name  # refused from the sizes, nothing inflated
        assert "data" in str(info.value), name


def test_compressed_torch_save_archive_still_loads(tmp_path: Path) -> None:
    # Re-zipped by some tool (torch never compresses): not a bomb, so it loads, without mmap.
    plain = save_state_dict(tmp_path / "plain.pt", "vit")
    rezipped = rewrite_zip(plain, tmp_path / "rezipped.pt", compress_data=True)
    model, _ = _load(rezipped)
    reference, _ = _load(plain)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


class _Buffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.arange(123, dtype=torch.float32))  # 123 = BININT1 b"K{"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w[:1]


def _central_directory_offset_patched(path: Path, member: str, new_offset: int) -> None:
    """Point the central directory record of `member` at a local header at `new_offset`."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        (name_len,) = struct.unpack("<H", data[at + 28 : at + 30])
        if data[at + 46 : at + 46 + name_len] == name:
            data[at + 42 : at + 46] = struct.pack("<I", new_offset)
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise KeyError(member)


RECORD_PATCHES = {  # data.pkl of _Buffer: storage ("0", FloatStorage, 123 elements), tensor (0, (123,), (1,))
    "size past its storage": (
        b"K\x00(K{t(K\x01t",
        b"K\x00(K\xc8t(K\x01t",
        "reaches element 200 of a storage",
    ),
    "stride past its storage": (b"(K{t(K\x01t", b"(K{t(K\x02t", "reaches element 245 of a storage"),
    "negative offset": (b"K\x00(K{t", b"J\xff\xff\xff\xff(K{t", "invalid tensor geometry"),
    "storage larger than its member": (b"K{tQ", b"J\xff\xff\xff\x7ftQ", "claims 8589934588 bytes"),
}


@pytest.mark.parametrize("case", [*RECORD_PATCHES, "member header past the end"])
def test_records_pointing_outside(tmp_path: Path, case: str) -> None:
    source = tmp_path / "buffer.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(_Buffer(), torch.ones(1), check_trace=False).save(str(source))
    root = archive_root(source)
    target = tmp_path / "tampered.pt"
    if case in RECORD_PATCHES:
        old, new, message = RECORD_PATCHES[case]
        with zipfile.ZipFile(source) as zf:
            pickled = zf.read(f"{root}/data.pkl")
        assert pickled.count(old) == 1, case
        rewrite_zip(source, target, {f"{root}/data.pkl": pickled.replace(old, new)})
    else:
        target.write_bytes(source.read_bytes())
        _central_directory_offset_patched(target, f"{root}/data/0", target.stat().st_size + 4096)
        message = "outside the file|damaged"
    with unchanged(tmp_path), pytest.raises(CheckpointError, match=message):
        _load(target)


def _torchvision_resnet18(tmp_path: Path) -> Path:
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _timm_like_vit(tmp_path: Path) -> Path:
    width, patch, grid, classes = 32, 8, 4, 10
    state = {
        "cls_token": torch.zeros(1, 1, width),
        "pos_embed": torch.zeros(1, grid * grid + 1, width),
        "patch_embed.proj.weight": torch.zeros(width, 3, patch, patch),
        "patch_embed.proj.bias": torch.zeros(width),
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
        "head.weight": torch.zeros(classes, width),
        "head.bias": torch.zeros(classes),
    }
    for block in range(2):
        prefix = f"blocks.{block}."
        state.update(
            {
                prefix + "norm1.weight": torch.ones(width),
                prefix + "attn.qkv.weight": torch.zeros(3 * width, width),
                prefix + "attn.proj.weight": torch.zeros(width, width),
                prefix + "mlp.fc1.weight": torch.zeros(4 * width, width),
                prefix + "mlp.fc2.weight": torch.zeros(width, 4 * width),
            }
        )
    path = tmp_path / "vit_timm.pt"
    torch.save(state, path)
    return path


def _hugging_face_clip(tmp_path: Path) -> Path:
    width = 32
    state = {
        "logit_scale": torch.tensor(4.6),
        "text_model.embeddings.token_embedding.weight": torch.zeros(49408, width),
        "text_model.embeddings.position_embedding.weight": torch.zeros(77, width),
        "text_model.final_layer_norm.weight": torch.ones(width),
        "vision_model.embeddings.class_embedding": torch.zeros(width),
        "vision_model.embeddings.patch_embedding.weight": torch.zeros(width, 3, 8, 8),
        "visual_projection.weight": torch.zeros(width, width),
        "text_projection.weight": torch.zeros(width, width),
    }
    path = tmp_path / "hf_clip.pt"
    torch.save(state, path)
    return path


def _scripted_other_model(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(_Buffer(), torch.ones(1), check_trace=False).save(str(path))
    return path


OTHER_ARCHITECTURES = {
    "torchvision resnet18": (_torchvision_resnet18, "'visual.layer1.0.conv1.weight'"),
    "timm-like ViT": (_timm_like_vit, "'text_projection'"),
    "Hugging Face CLIP": (_hugging_face_clip, "'token_embedding.weight'"),
    "TorchScript of another model": (_scripted_other_model, "'text_projection'"),
}


@pytest.mark.parametrize("case", list(OTHER_ARCHITECTURES))
def test_other_architectures_are_named_not_built(tmp_path: Path, case: str) -> None:
    make, missing = OTHER_ARCHITECTURES[case]
    path = make(tmp_path)
    with unchanged(tmp_path), pytest.raises(CheckpointError, match="not a CLIP") as info:
        _load(path)
    message = str(info.value)
    assert str(path) in message and missing in message and "OpenAI's released checkpoints" in message


# ----------------------------------------------------------------------------------------------
# Downloads: clip.load by name, from a local server


@pytest.fixture
def served(http_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """ "RN50" served as a tiny release-layout archive; `cache` is an empty download_root."""
    payload = make_release_dir(tmp_path / "src", "RN50").read_bytes()
    name = release_file_name("RN50")
    url = http_server.add_model(name, payload)
    monkeypatch.setitem(clip_module._MODELS, "RN50", url)
    cache = tmp_path / "cache"
    cache.mkdir()
    return {"server": http_server, "url": url, "payload": payload, "cache": cache, "file": name}


def _load_by_name(served: Dict[str, Any]) -> torch.nn.Module:
    return clip.load("RN50", device="cpu", download_root=str(served["cache"]))[0]


def _assert_loaded(model: torch.nn.Module, served: Dict[str, Any]) -> None:
    assert model.visual.input_resolution == 64  # the tiny ResNet
    cache: Path = served["cache"]
    assert (cache / served["file"]).read_bytes() == served["payload"]
    assert sorted(p.name for p in cache.iterdir()) == [served["file"], served["file"] + dl.VERIFIED_SUFFIX]


def test_download_stall_times_out(served: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dl.TIMEOUT_ENV, "0.5")
    served["server"].route(served["url"]).stall_s = 30.0
    start = time.monotonic()
    with unchanged(served["cache"]), pytest.raises(DownloadError, match="sent nothing for 0.5 s.*timeout"):
        _load_by_name(served)
    assert time.monotonic() - start < 5


def test_download_short_body_is_kept_for_resuming(served: Dict[str, Any]) -> None:
    route = served["server"].route(served["url"])
    route.declared_length = len(served["payload"]) + 1000  # then the server hangs up
    partial = served["cache"] / (served["file"] + dl.PARTIAL_SUFFIX)
    with pytest.raises(DownloadError, match="closed after .* bytes.*next call resumes it"):
        _load_by_name(served)
    # By design the bytes received are kept (only) as the .partial file, for the next call.
    assert sorted(p.name for p in served["cache"].iterdir()) == [partial.name]
    route.declared_length = None
    _assert_loaded(_load_by_name(served), served)


def test_download_long_body_is_discarded(served: Dict[str, Any]) -> None:
    served["server"].route(served["url"]).declared_length = len(served["payload"]) - 1000
    with unchanged(served["cache"]), pytest.raises(DownloadError, match="SHA256 checksum .* discarded"):
        _load_by_name(served)


def test_download_redirects(served: Dict[str, Any]) -> None:
    server: FileServer = served["server"]
    path = f"/{sha256_hex(served['payload'])}/{served['file']}"
    server.add(path, status=302, location="file:///etc/passwd")
    with (
        unchanged(served["cache"]),
        pytest.raises(DownloadError, match="HTTP 302.*file:///etc/passwd.*not allowed"),
    ):
        _load_by_name(served)
    server.add(path, status=302, location=path)
    with unchanged(served["cache"]), pytest.raises(DownloadError, match="HTTP 302.*infinite loop"):
        _load_by_name(served)
    server.add(path, status=302, location="/blobs/rn50")
    server.add("/blobs/rn50", served["payload"])
    _assert_loaded(_load_by_name(served), served)


def test_download_read_only_cache(served: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, chmod does not stop writes: every write under the cache fails as on a read-only mount.
    prefix = str(served["cache"]) + os.sep
    real_open = os.open

    def read_only_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        if os.fspath(path).startswith(prefix) and flags & writes:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with unchanged(served["cache"]), pytest.raises(DownloadError, match="does not exist.*not writable"):
        _load_by_name(served)
    assert served["server"].requests == []


def test_download_disk_full(served: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def open_on_full_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(dl.PARTIAL_SUFFIX) and mode[0] in "wa":
            return DiskFullFile(handle, capacity=1 << 20)
        return handle

    monkeypatch.setattr(builtins, "open", open_on_full_disk)
    with unchanged(served["cache"]), pytest.raises(DownloadError, match="No space left on device"):
        _load_by_name(served)


_HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(not POSIX, reason="flock and SIGKILL are POSIX")
def test_download_stale_lock_of_killed_process(served: Dict[str, Any]) -> None:
    cache: Path = served["cache"]
    lock = cache / (served["file"] + dl.LOCK_SUFFIX)
    (cache / (served["file"] + dl.PARTIAL_SUFFIX)).write_bytes(served["payload"][:100_000])
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    assert lock.exists()  # left behind, as by a download killed mid-way
    start = time.monotonic()
    _assert_loaded(_load_by_name(served), served)
    assert time.monotonic() - start < 10
    (request,) = served["server"].requests
    assert request.range == "bytes=100000-"  # the killed download's bytes were reused


def _load_in_child(barrier: Any, results: Any, cache: str) -> None:
    torch.set_num_threads(1)
    barrier.wait(timeout=30)
    try:
        model, _ = clip.load("RN50", device="cpu", download_root=cache)
        total = sum(float(t.double().sum()) for t in model.state_dict().values() if t.is_floating_point())
        results.put(("ok", total))
    except BaseException as exc:  # reported by the parent
        results.put(("error", repr(exc)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_ten_processes_load_the_same_model(served: Dict[str, Any]) -> None:
    # The children are forked (torch already imported: fast) and released together; the server
    # answers after a pause, so the first download is in flight while the others wait on the lock.
    served["server"].route(served["url"]).stall_s = 0.5
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(10), context.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process (3.12+)
        children = [
            context.Process(target=_load_in_child, args=(barrier, results, str(served["cache"])))
            for _ in range(10)
        ]
        for child in children:
            child.start()
    try:
        outcomes = [results.get(timeout=120) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    assert [kind for kind, _ in outcomes] == ["ok"] * 10, outcomes
    reference = _load_by_name(served)
    expected = sum(float(t.double().sum()) for t in reference.state_dict().values() if t.is_floating_point())
    assert {total for _, total in outcomes} == {expected}
    assert [child.exitcode for child in children] == [0] * 10
    assert len(served["server"].requests_for(served["url"])) == 1  # one download, nine waited
    _assert_loaded(reference, served)


def test_download_root_problems(served: Dict[str, Any], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_bytes(b"a file where the cache folder should be")
    with (
        unchanged(tmp_path / "cache", not_a_dir),
        pytest.raises(DownloadError, match="cannot create the download"),
    ):
        clip.load("RN50", device="cpu", download_root=str(not_a_dir))
    with pytest.raises(TypeError, match="download_root must be a directory path"):
        clip.load("RN50", device="cpu", download_root=5)  # type: ignore[arg-type]
    assert served["server"].requests == []


# ----------------------------------------------------------------------------------------------
# Devices, on this machine (unpatched), checked before anything is read or downloaded


def _device_cases() -> List[Any]:
    cases: List[Any] = []
    if not torch.cuda.is_available():
        cases += [
            ("cuda", RuntimeError, "CUDA is not available"),
            ("CUDA", RuntimeError, "CUDA is not available"),
        ]
    if torch.cuda.device_count() < 8:
        cases.append(("cuda:7", RuntimeError, "CUDA is not available|has \\d CUDA device"))
    if not torch.backends.mps.is_available():
        cases.append(("mps", RuntimeError, "'mps' is not available"))
    cases += [
        ("meta", RuntimeError, "'meta' is not available"),
        (torch.device("meta"), RuntimeError, "'meta' is not available"),
        ("cuda:-1", ValueError, "not a device string"),
        (-1, ValueError, "device index -1 is negative"),
        ("cpu; rm -rf /", ValueError, "not a device string"),
    ]
    return cases


@pytest.mark.parametrize("device, error, message", _device_cases(), ids=repr)
def test_unavailable_devices_on_this_machine(
    served: Dict[str, Any], device: Any, error: type, message: str
) -> None:
    with unchanged(served["cache"]), pytest.raises(error, match=message) as info:
        clip.load("RN50", device=device, download_root=str(served["cache"]))
    assert "pass" in str(info.value)  # says what to pass instead
    assert served["server"].requests == []
