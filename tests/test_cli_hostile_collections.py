"""Hostile inputs for `clip embed`, `clip search`, `clip classify` and the default job, run as a user
runs them (a subprocess, tests/support/_cli_battery.py): the exit status, one ``clip ...: error:`` line and
no traceback, and the files before and after.

Each case was a silent wrong answer or a traceback before its fix: a replaced checkpoint resumed, a
caption cut at an unquoted comma, a decompression bomb, a file name that is not UTF-8, a truncated
shard, another model's scores, a 10,000-character value echoed whole, the Python API's advice, paths
that only worked from one folder, files written 0600.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch
from _checkpoints import release_archive
from _cli_battery import Ran, assert_one_line_error, clip_environment, run_clip, snapshot
from _fake_collections import manifest_with_items
from _images import bomb_png
from PIL import Image

from clip._cli import collection as _collection
from clip._cli.common import cli_advice

N_IMAGES = 6
SHARD_SIZE = 2  # 3 shards: an interrupted run keeps some
LONG = 10_000  # characters of a value that must not be echoed whole
MAX_ERROR_LINE = 600  # characters: a message, not the value


def _image(index: int) -> Image.Image:
    gen = torch.Generator().manual_seed(index)
    return Image.fromarray(
        torch.randint(0, 256, (24 + 3 * index, 32, 3), generator=gen, dtype=torch.uint8).numpy()
    )


def _photos(folder: Path, n: int = N_IMAGES) -> Path:
    folder.mkdir(parents=True)
    for index in range(n):
        _image(index).save(folder / f"im{index}.png")
    return folder


def _embed(src, out, model, cwd: Path, *extra: str) -> Ran:
    argv = ["embed", src, "-o", out, "--model", model, "--device", "cpu", "--no-progress", "--workers", "0"]
    return run_clip([*argv, "--shard-size", str(SHARD_SIZE), *extra], cwd)


def _as_interrupted(out: Path, shard: int = 1) -> None:
    """OUT as Ctrl-C during shard `shard` leaves it: earlier shards done, no manifest."""
    for later in range(shard, -(-N_IMAGES // SHARD_SIZE)):
        (out / _collection.shard_name("shard", later, ".json")).unlink()
    (out / _collection.MANIFEST_FILE).unlink()
    (out / _collection.ERRORS_FILE).unlink()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the photos, a model file, another model of the same width, and their collection."""
    root = tmp_path_factory.mktemp("hostile")
    _photos(root / "photos")
    shutil.copy(release_archive("vit"), root / "model.pt")
    shutil.copy(release_archive("vit", seed=1), root / "other.pt")
    ran = _embed(root / "photos", root / "photos.clip", root / "model.pt", root)
    assert ran.code == 0, ran.err
    return root


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    """A private copy of `base` (tests replace models and damage shards): its collection's absolute
    paths and the digest of its items are those that embedding the copy would write."""
    work = tmp_path / "w"
    shutil.copytree(base, work)
    items = _collection.discover(str(work / "photos"))[0]
    for name in (_collection.RUN_FILE, _collection.MANIFEST_FILE):
        record = json.loads((work / "photos.clip" / name).read_text().replace(str(base), str(work)))
        record["items_sha256"] = _collection.items_digest(items)
        (work / "photos.clip" / name).write_text(json.dumps(record))
    with sqlite3.connect(work / "photos.clip" / "metadata.sqlite") as db:  # the item table's paths too
        db.execute("UPDATE items SET path = replace(path, ?, ?)", (str(base), str(work)))
    return work


# ----------------------------------------------------------------------------------------------
# (3) The model of a collection is known by content


def test_resume_refuses_a_replaced_checkpoint(work: Path) -> None:
    out = work / "photos.clip"
    _as_interrupted(out)
    original = (work / "model.pt").read_bytes()
    shutil.copy(work / "other.pt", work / "model.pt")  # the same path, other weights
    before = snapshot(out)
    ran = _embed(work / "photos", out, work / "model.pt", work)
    assert_one_line_error(
        ran, 2, "has changed since", "would mix two models' features", "Put the original file back"
    )
    assert snapshot(out) == before and "clip embed: resuming" not in ran.err
    (work / "model.pt").write_bytes(original)
    ran = _embed(work / "photos", out, work / "model.pt", work)
    assert ran.code == 0 and "resuming" in ran.err, ran.err


def test_resume_accepts_the_same_files_spelled_otherwise(work: Path) -> None:
    """Relative SRC and --model where the run had absolute ones (and a copy of the model elsewhere)."""
    out = work / "photos.clip"
    _as_interrupted(out)
    shutil.copy(work / "model.pt", work / "copy.pt")
    ran = _embed("./photos/", "photos.clip", "copy.pt", work)
    assert ran.code == 0 and "resuming" in ran.err, ran.err
    assert manifest_with_items(out)["items"][0]["path"] == str(work / "photos" / "im0.png")


def _legacy_run(out: Path, model: str, src: str) -> None:
    """run.json as clip wrote it before format 2: the model as given, items as SRC spelled them
    (relative to the working directory)."""
    run = json.loads((out / _collection.RUN_FILE).read_text())
    items = _collection.discover(src, absolute=False)[0]
    assert not os.path.isabs(items[0].path)
    run.pop("model_sha256", None)
    run.update(format=1, model=model, items_sha256=_collection.items_digest(items))
    (out / _collection.RUN_FILE).write_text(json.dumps(run))


def test_resume_of_an_old_run_with_a_checkpoint_file_is_refused(work: Path, monkeypatch) -> None:
    out = work / "photos.clip"
    _as_interrupted(out)
    monkeypatch.chdir(work)
    _legacy_run(out, "model.pt", "photos")
    before = snapshot(out)
    ran = _embed("photos", out, "model.pt", work)
    assert_one_line_error(ran, 2, "did not record the SHA256", "cannot be verified")
    assert snapshot(out) == before


def test_resume_of_an_old_run_with_a_released_name_is_accepted(work: Path, monkeypatch) -> None:
    """A released name is its weights: an old run.json naming one resumes (items spelled as then)."""
    out = work / "photos.clip"
    monkeypatch.chdir(work)
    _legacy_run(out, "ViT-B/32", "photos")
    items = _collection.discover("photos")[0]
    run = json.loads((out / _collection.RUN_FILE).read_text())
    settings = {key: run[key] for key in _collection.RUN_SETTINGS if key != "items_sha256"}
    info = _collection.RunInfo(
        model="ViT-B/32",
        items_sha256=_collection.items_digest(items),
        model_sha256=_collection.model_sha256("ViT-B/32"),
        **settings,
    )
    legacy = lambda: _collection.items_digest(_collection.discover("photos", absolute=False)[0])  # noqa: E731
    assert _collection.check_out(out, info, legacy) is True
    with pytest.raises(_collection.CollectionError, match="source changed"):
        _collection.check_out(out, info)  # the items spelled as now differ from those of the run


# ----------------------------------------------------------------------------------------------
# (4) A CSV row is taken whole or refused


@pytest.mark.parametrize(
    "table, needles",
    [
        (
            "path,caption\nphotos/im0.png,a dog, running on the beach\n",
            ["1 row(s)", "line 2: 3", '"a dog, running"'],
        ),
        (
            "path,caption\nphotos/im0.png,ok\nphotos/im1.png\nphotos/im2.png,a,b,c\n",
            ["line 3: 1", "line 4: 4"],
        ),
        ("", ["is empty", "header line"]),
    ],
    ids=["unquoted comma", "too few and too many fields", "0 bytes"],
)
def test_csv_rows_are_whole_or_refused(work: Path, table: str, needles: List[str]) -> None:
    (work / "pairs.csv").write_text(table)
    ran = _embed("pairs.csv", "pairs.clip", "model.pt", work)
    assert_one_line_error(ran, 2, "pairs.csv", *needles)
    assert not (work / "pairs.clip").exists()


def test_a_quoted_comma_keeps_the_whole_caption(work: Path) -> None:
    (work / "pairs.csv").write_text('path,caption\nphotos/im0.png,"a dog, running on the beach"\n')
    ran = _embed("pairs.csv", "pairs.clip", "model.pt", work)
    assert ran.code == 0, ran.err
    items = manifest_with_items(work / "pairs.clip")["items"]
    assert [item["caption"] for item in items] == ["a dog, running on the beach"]


# ----------------------------------------------------------------------------------------------
# (5) One line, not a traceback


@pytest.mark.parametrize(
    "argv",
    [
        ["bomb.png", "--model", "model.pt", "--device", "cpu"],
        ["classify", "bomb.png", "--classes", "cifar10", "--model", "model.pt", "--device", "cpu"],
        ["search", "photos.clip", "--image", "bomb.png"],
    ],
    ids=["default job", "classify", "search --image"],
)
def test_a_decompression_bomb_is_refused(work: Path, argv: List[str]) -> None:
    bomb_png(work / "bomb.png")
    before = snapshot(work)
    assert_one_line_error(run_clip(argv, work), 2, "bomb.png", "decompression bomb")
    assert snapshot(work) == before


def _run_bytes(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    """Like run_clip, with stdout as bytes (file names that are not UTF-8)."""
    return subprocess.run(
        [sys.executable, "-m", "clip", *args],
        cwd=cwd,
        env=clip_environment(cwd),
        capture_output=True,
        timeout=180,
    )


def test_names_that_are_not_utf8(work: Path) -> None:
    """A broken image so named is reported in errors.tsv (writing it crashed, on every rerun); a
    readable one is embedded, and search prints its path byte for byte."""
    folder = os.fsencode(work / "odd")
    os.mkdir(folder)
    broken, good = os.path.join(folder, b"bad\xff.png"), os.path.join(folder, b"good\xfe.png")
    with open(broken, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n cut short")
    _image(0).save(good, format="PNG")
    ran = _embed("odd", "odd.clip", "model.pt", work)
    assert ran.code == 0 and "1 could not be read" in ran.out, ran.err
    errors = (work / "odd.clip" / "errors.tsv").read_bytes().splitlines()
    assert len(errors) == 2 and errors[1].startswith(broken + b"\t")
    items = manifest_with_items(work / "odd.clip")["items"]
    assert [os.fsencode(item["path"]) for item in items] == [good]
    found = _run_bytes(["search", "odd.clip", "a photo"], work)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split(b"\t")[1] == good + b"\n"


def test_a_truncated_shard_is_named_with_the_way_out(work: Path) -> None:
    out = work / "photos.clip"
    shard = out / "images-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-40])
    ran = run_clip(["search", "photos.clip", "a photo"], work)
    assert_one_line_error(
        ran, 2, "the collection is damaged", "images-00001.npy", "delete", "shard-00001.json"
    )
    (out / "shard-00001.json").unlink()  # the way out the message gives
    assert _embed(work / "photos", out, work / "model.pt", work).code == 0
    ran = run_clip(["search", "photos.clip", "a photo", "-k", "100"], work)
    assert ran.code == 0 and len(ran.out.splitlines()) == N_IMAGES, ran.err


@pytest.mark.parametrize(
    "out", ["/proc/clip-no-such/out", "photos/im0.png/out"], ids=["/proc", "below a file"]
)
def test_an_output_folder_that_cannot_be_created(work: Path, out: str) -> None:
    before = snapshot(work)
    assert_one_line_error(_embed("photos", out, "model.pt", work), 2, out, "cannot create")
    assert snapshot(work) == before


# ----------------------------------------------------------------------------------------------
# (6) No misleading success, message or echo


def test_a_folder_of_broken_images_fails(work: Path) -> None:
    (work / "broken").mkdir()
    (work / "broken" / "a.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    bomb_png(work / "broken" / "b.png")
    ran = _embed("broken", "broken.clip", "model.pt", work)
    assert_one_line_error(ran, 1, "no image could be read (2 tried)", "errors.tsv")
    errors = (work / "broken.clip" / "errors.tsv").read_text().splitlines()
    assert len(errors) == 3 and "DecompressionBombError" in errors[2]


def test_search_with_another_model_is_refused(work: Path) -> None:
    ran = run_clip(["search", "photos.clip", "a photo", "--model", "other.pt"], work)
    assert_one_line_error(ran, 2, "--model 'other.pt' is not the model", "mean nothing")
    shutil.copy(work / "other.pt", work / "model.pt")  # the manifest's model replaced in place
    ran = run_clip(["search", "photos.clip", "a photo"], work)
    assert_one_line_error(ran, 2, "has changed since", "embed the collection again")


def test_search_of_an_old_manifest_with_another_model_warns(work: Path) -> None:
    manifest_path = work / "photos.clip" / "manifest.json"
    manifest = manifest_with_items(work / "photos.clip")  # as format 1 held it: items in the JSON
    manifest.pop("model_sha256", None)
    manifest_path.write_text(json.dumps({**manifest, "format": 1}))
    ran = run_clip(["search", "photos.clip", "a photo", "--model", "other.pt"], work)
    assert ran.code == 0 and len(ran.out.splitlines()) == N_IMAGES, ran.err
    assert "warning" in ran.err and "cannot be checked" in ran.err and "Traceback" not in ran.err


@pytest.mark.parametrize(
    "argv",
    [
        ["photos/im0.png", "--labels", "x" * LONG, "--model", "model.pt", "--device", "cpu"],
        ["search", "photos.clip", "x " * (LONG // 2)],
        ["classify", "photos/im0.png", "--classes", "classes.txt", "--model", "model.pt", "--device", "cpu"],
    ],
    ids=["label", "query", "class"],
)
def test_a_long_value_is_shortened_in_the_message(work: Path, argv: List[str]) -> None:
    (work / "classes.txt").write_text("cat\n" + "y " * (LONG // 2) + "\n")
    line = assert_one_line_error(run_clip(argv, work), 2, "characters)")
    assert len(line) < MAX_ERROR_LINE and "truncate" not in line, line


def test_errors_speak_the_command_line() -> None:
    """The library's advice (for Python callers) is rewritten in flags."""
    from clip._weights.download import DownloadError

    message = cli_advice(str(DownloadError("the download failed", "https://x/y.pt", "/cache/y.pt")))
    assert "--download-root DIR" in message and "download_root=" not in message
    assert cli_advice("(12,000 characters; pass truncate=True to keep the start)").endswith(
        "shorten the text)"
    )


def test_an_unavailable_device_is_named_as_a_flag(work: Path) -> None:
    ran = run_clip(["photos/im0.png", "--model", "model.pt", "--device", "cuda:99"], work)
    line = assert_one_line_error(ran, 1, "cuda:99")
    assert "device='" not in line, line
    if not torch.cuda.is_available():
        assert "pass --device cpu" in line, line


# ----------------------------------------------------------------------------------------------
# (7) Paths and modes that work from anywhere; empty texts


def test_search_from_another_folder_prints_paths_that_exist(work: Path) -> None:
    assert _embed("photos", "rel.clip", "model.pt", work).code == 0  # relative SRC and model
    elsewhere = work / "photos"
    ran = run_clip(["search", work / "rel.clip", "a photo", "-k", "100"], elsewhere)
    paths = [line.split("\t")[1] for line in ran.out.splitlines()]
    assert ran.code == 0 and len(paths) == N_IMAGES, ran.err
    assert all(os.path.isabs(path) and os.path.isfile(path) for path in paths), paths


def test_outputs_have_the_mode_the_umask_gives(work: Path) -> None:
    mask = 0o027  # neither mkstemp's 0600 nor the usual 0644
    saved = os.umask(mask)  # inherited by the subprocess
    try:
        ran = _embed("photos", "modes.clip", "model.pt", work)
    finally:
        os.umask(saved)
    assert ran.code == 0, ran.err
    modes = {name: mode for name, (_, mode) in snapshot(work / "modes.clip").items()}
    assert modes == {name: 0o666 & ~mask for name in modes}, modes


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["search", "photos.clip", ""], ["the query is empty"]),
        (["photos/im0.png", "--labels", "a cat", "", "--model", "model.pt"], ["label 2 is empty"]),
    ],
    ids=["empty query", "empty label"],
)
def test_empty_texts_are_refused(work: Path, argv: List[str], needles: List[str]) -> None:
    assert_one_line_error(run_clip(argv, work), 2, *needles)
