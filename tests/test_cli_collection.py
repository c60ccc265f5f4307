"""`clip classify`, `clip embed` and `clip search` on small folders of generated images, run in-process.

Expected values are computed independently here: features with `encode_image` on `preprocess` of
each image one at a time, rankings by brute force.
"""

import os
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from _checkpoints import release_archive
from _fake_collections import manifest_with_items
from PIL import Image

import clip
from clip.__main__ import main
from clip._cli import collection as _collection

# Features are stored as float32 here; ours are computed in batches, the reference one image at a
# time, in the same process: only the summation order of the batched kernels differs (a few ulps of
# unit-length entries).
FEATURE_ATOL = 1e-5
N_GOOD = 7


def _run(argv: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _image(index: int) -> Image.Image:
    """A small RGB image from integer draws; sizes differ by index."""
    gen = torch.Generator().manual_seed(index)
    pixels = torch.randint(
        0, 256, (30 + 9 * index, 40 + 5 * (index % 3), 3), generator=gen, dtype=torch.uint8
    )
    return Image.fromarray(pixels.numpy())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """N_GOOD images (JPEG and PNG, one without a suffix, some in a subfolder), a broken .jpg, a text file."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for index in range(N_GOOD):
        name = ("sub/" if index % 2 else "") + f"im{index}" + (".jpg" if index % 3 == 0 else ".png")
        _image(index).save(root / name, format="JPEG" if name.endswith(".jpg") else "PNG")
    (root / "sub" / "im5.png").rename(root / "sub" / "no_suffix")  # found by its content
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(release_archive("vit"))


@pytest.fixture(scope="module")
def loaded(model_path: str):
    return clip.load(model_path, device="cpu", jit=False)


def _reference(loaded, paths: List[str]) -> np.ndarray:
    model, preprocess = loaded
    rows = []
    with torch.no_grad():
        for path in paths:
            with Image.open(path) as image:
                features = model.encode_image(preprocess(image).unsqueeze(0)).float()[0]
            rows.append((features / features.norm()).numpy())
    return np.stack(rows)


def _embed(src: Path, out: Path, model_path: str, capsys, *extra: str) -> Tuple[int, str, str]:
    argv = ["embed", str(src), "-o", str(out), "--model", model_path, "--device", "cpu", "--no-progress"]
    return _run([*argv, "--dtype", "float32", "--workers", "0", *extra], capsys)


def _stored(out: Path, kind: str = "images") -> Tuple[List[Dict], np.ndarray]:
    manifest = manifest_with_items(out)
    features = np.concatenate([np.load(out / shard[kind]) for shard in manifest["shards"]])
    return manifest, features


def test_embed_folder_writes_features_manifest_and_errors(
    folder, tmp_path, model_path, loaded, capsys
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _embed(folder, out, model_path, capsys, "--shard-size", "3", "--batch-size", "2")
    assert code == 0, err
    manifest, features = _stored(out)
    paths = [item["path"] for item in manifest["items"]]
    assert sorted(paths) == paths and len(paths) == N_GOOD
    assert str(folder / "sub" / "no_suffix") in paths and not any(p.endswith(".txt") for p in paths)
    assert manifest["model"] == model_path and manifest["clip_version"] == clip.__version__
    assert [(item["shard"], item["row"]) for item in manifest["items"]][:4] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    np.testing.assert_allclose(features, _reference(loaded, paths), atol=FEATURE_ATOL, rtol=0)
    errors = (out / "errors.tsv").read_text().splitlines()
    assert (
        errors[0] == "path\treason" and len(errors) == 2 and errors[1].startswith(str(folder / "broken.jpg"))
    )
    assert "1 could not be read" in stdout
    assert not [name for name in os.listdir(out) if name.startswith(_collection.TEMP_PREFIX)]


def test_embed_with_workers_and_float16_agrees(folder, tmp_path, model_path, capsys) -> None:
    assert _embed(folder, tmp_path / "a", model_path, capsys)[0] == 0
    argv = ["embed", str(folder), "-o", str(tmp_path / "b"), "--model", model_path, "--no-progress"]
    assert _run([*argv, "--workers", "2", "--dtype", "float16"], capsys)[0] == 0
    (manifest_a, a), (manifest_b, b) = _stored(tmp_path / "a"), _stored(tmp_path / "b")
    assert manifest_a["items"] == manifest_b["items"] and b.dtype == np.float16
    np.testing.assert_allclose(b.astype(np.float32), a, atol=1e-3, rtol=0)  # float16 storage: 2^-11 relative


def test_embed_resumes_only_unfinished_shards(folder, tmp_path, model_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    real_write = _collection.write_shard
    calls: List[int] = []
    interrupted_once: List[int] = []

    def interrupted(out_, shard, *args, **kwargs):
        calls.append(shard)
        if shard == 1 and not interrupted_once:
            interrupted_once.append(shard)
            raise KeyboardInterrupt  # Ctrl-C while shard 1 is being written
        return real_write(out_, shard, *args, **kwargs)

    monkeypatch.setattr(_collection, "write_shard", interrupted)
    code, _, err = _embed(folder, out, model_path, capsys, "--shard-size", "3")
    assert code == 130 and "rerun the same command" in err
    assert not (out / "manifest.json").exists() and _collection.shard_done(out, 0)
    assert not _collection.shard_done(out, 1)
    first = (out / "images-00000.npy").stat().st_mtime_ns
    calls.clear()
    code, _, err = _embed(folder, out, model_path, capsys, "--shard-size", "3")
    assert code == 0, err
    assert calls == [1, 2]  # shard 0 is not redone
    assert (out / "images-00000.npy").stat().st_mtime_ns == first
    monkeypatch.setattr(_collection, "write_shard", real_write)
    assert _embed(folder, tmp_path / "whole", model_path, capsys, "--shard-size", "3")[0] == 0
    (manifest, features), (whole_manifest, whole) = _stored(out), _stored(tmp_path / "whole")
    assert manifest["items"] == whole_manifest["items"]
    np.testing.assert_array_equal(features, whole)  # the same code on the same batches


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    def failing_save(handle, array):
        handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _collection.write_shard(tmp_path, 0, [0], np.zeros((1, 4), np.float32), None, [])
    assert os.listdir(tmp_path) == []


def test_embed_csv_with_captions(folder, tmp_path, model_path, loaded, capsys) -> None:
    table = tmp_path / "pairs.tsv"
    rows = [
        ("photos/im0.jpg", "a red square"),
        ("photos/im2.png", "two dogs"),
        ("photos/missing.png", "gone"),
    ]
    table.write_text("path\tcaption\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    out = tmp_path / "out"
    code, _, err = _embed(table, out, model_path, capsys)
    assert code == 0, err
    manifest, texts = _stored(out, "texts")
    assert [item["caption"] for item in manifest["items"]] == ["a red square", "two dogs"]
    model, _ = loaded
    with torch.no_grad():
        expected = model.encode_text(clip.tokenize(["a red square", "two dogs"])).float()
    expected = (expected / expected.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(texts, expected, atol=FEATURE_ATOL, rtol=0)
    assert "missing.png" in (out / "errors.tsv").read_text()


@pytest.mark.parametrize("case", ["empty folder", "csv column", "other model", "not writable", "not empty"])
def test_embed_bad_input_writes_nothing(case, folder, tmp_path, model_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    src, extra = folder, []
    if case == "empty folder":
        src = tmp_path / "empty"
        src.mkdir()
        expected = "no image files"
    elif case == "csv column":
        src = tmp_path / "list.csv"
        src.write_text("file,caption\nphotos/im0.jpg,x\n")
        expected = "no column 'path'"
    elif case == "other model":
        assert _embed(folder, out, model_path, capsys)[0] == 0
        other = tmp_path / "other.pt"  # other weights: models are told apart by content, not path
        other.write_bytes(release_archive("vit", seed=1).read_bytes())
        extra = []
        model_path = str(other)
        expected = "holds shards of model"
    elif case == "not writable":
        monkeypatch.setattr(os, "access", lambda path, mode: False)  # as root, chmod would not stop us
        expected = "not writable"
    else:
        out.mkdir()
        (out / "mine.txt").write_text("keep")
        expected = "not empty"
    before = sorted(os.listdir(out)) if out.exists() else None
    stamps = {name: (out / name).stat().st_mtime_ns for name in before or []}
    code, _, err = _embed(src, out, model_path, capsys, *extra)
    assert code == 2 and expected in err, err
    after = sorted(os.listdir(out)) if out.exists() else None
    assert after == before and all((out / n).stat().st_mtime_ns == t for n, t in stamps.items())


@pytest.fixture
def collection(folder, tmp_path, model_path, capsys) -> Path:
    out = tmp_path / "collection"
    assert _embed(folder, out, model_path, capsys, "--shard-size", "4")[0] == 0
    return out


def _results(stdout: str) -> List[Tuple[float, str]]:
    return [
        (float(score), path) for score, path in (line.split("\t") for line in stdout.strip().splitlines())
    ]


def test_search_text_is_exact_cosine(collection, loaded, model_path, capsys) -> None:
    manifest, features = _stored(collection)
    model, _ = loaded
    with torch.no_grad():
        query = model.encode_text(clip.tokenize(["a photo of a cat"])).float()[0]
    scores = features @ (query / query.norm()).numpy()
    order = np.argsort(-scores, kind="stable")[:3]
    code, stdout, err = _run(["search", str(collection), "a photo of a cat", "-k", "3"], capsys)
    assert code == 0, err
    results = _results(stdout)
    assert [path for _, path in results] == [manifest["items"][i]["path"] for i in order]
    np.testing.assert_allclose([s for s, _ in results], scores[order], atol=1e-4)  # printed with 4 decimals


def test_search_by_image_finds_itself(collection, folder, capsys) -> None:
    target = str(folder / "im4.png")
    code, stdout, err = _run(["search", str(collection), "--image", target, "-k", "100"], capsys)
    assert code == 0, err
    results = _results(stdout)
    assert (
        len(results) == N_GOOD and results[0][1] == target and results[0][0] == pytest.approx(1.0, abs=1e-4)
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["a cat", "-k", "0"], "-k must be at least 1"),
        ([], "either a query text or --image"),
        (["a cat", "--image", "x.png"], "either a query text or --image"),
    ],
)
def test_search_bad_input(collection, argv, expected, capsys) -> None:
    code, _, err = _run(["search", str(collection), *argv], capsys)
    assert code == 2 and expected in err


def test_search_unfinished_collection(tmp_path, capsys) -> None:
    code, _, err = _run(["search", str(tmp_path), "a cat"], capsys)
    assert code == 2 and "no manifest.json" in err


def test_classify_prints_the_zero_shot_top_k(folder, tmp_path, model_path, loaded, capsys) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na drawing of a {}.\n")
    image = str(folder / "im0.jpg")
    argv = ["classify", image, "--classes", str(classes), "--templates", str(templates), "-k", "5"]
    code, stdout, err = _run([*argv, "--model", model_path], capsys)
    assert code == 0, err
    printed = [line.split() for line in stdout.strip().splitlines()[1:]]
    assert len(printed) == 3  # -k larger than the classes: all of them
    # Independently: the release notebook's recipe, one class at a time.
    model, preprocess = loaded
    with torch.no_grad():
        columns = []
        for name in ["cat", "dog", "bird"]:
            emb = model.encode_text(
                clip.tokenize([t.format(name) for t in ["a photo of a {}.", "a drawing of a {}."]])
            )
            emb = emb.float() / emb.float().norm(dim=-1, keepdim=True)
            columns.append(emb.mean(0) / emb.mean(0).norm())
        with Image.open(image) as im:
            feats = model.encode_image(preprocess(im).unsqueeze(0)).float()
        probs = (100 * feats / feats.norm() @ torch.stack(columns, 1)).softmax(-1)[0]
    order = probs.argsort(descending=True).tolist()
    assert [row[0] for row in printed] == [["cat", "dog", "bird"][i] for i in order]
    np.testing.assert_allclose(
        [float(row[1].rstrip("%")) for row in printed], 100 * probs[order].numpy(), atol=0.01
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--classes", "cifar10", "-k", "0"], "-k must be at least 1"),
        (["--classes", "nosuch"], "neither imagenet"),
    ],
)
def test_classify_bad_input(folder, argv, expected, capsys) -> None:
    code, _, err = _run(["classify", str(folder / "im0.jpg"), *argv], capsys)
    assert code == 2 and expected in err


@pytest.mark.parametrize("name", ["classify", "embed", "search"])
def test_subcommands_have_help(name, capsys) -> None:
    code, out, _ = _run([name, "--help"], capsys)
    assert code == 0 and f"usage: clip {name}" in out


@pytest.mark.parametrize("option", ["--batch-size", "--shard-size"])
def test_embed_rejects_sizes_below_one(option, folder, tmp_path, model_path, capsys) -> None:
    code, _, err = _embed(folder, tmp_path / "out", model_path, capsys, option, "0")
    assert code == 2 and f"{option} must be at least 1" in err and not (tmp_path / "out").exists()
