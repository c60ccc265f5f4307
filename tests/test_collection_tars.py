"""webdataset input end to end: `clip embed "shards/{00000..00002}.tar"` -> `clip index` -> `clip search`
and `clip dedup`, on a tiny tar set with a broken image, a sample without one and a truncated tar.

Features are checked against `encode_image` of each sample's image decoded independently here.
"""

import io
import json
import sqlite3
import sys
import tarfile
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from _checkpoints import release_archive
from PIL import Image

import clip
import clip.collection
from clip.__main__ import main
from clip._cli import collection as _collection
from clip._collection.tars import expand, read_tar_member

FEATURE_ATOL = 1e-5


def _image_bytes(index: int, fmt: str) -> bytes:
    gen = torch.Generator().manual_seed(100 + index)
    pixels = torch.randint(0, 256, (20 + 3 * index, 28, 3), generator=gen, dtype=torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _tar(path: Path, members: List[Tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three tars as img2dataset writes them; 00001 holds a broken image and a caption without an
    image, 00002 is cut inside its second image; 00000's second image equals 00001's first."""
    root = tmp_path_factory.mktemp("tars") / "shards"
    root.mkdir()
    same = _image_bytes(1, "PNG")
    _tar(
        root / "00000.tar",
        [
            ("000000000.jpg", _image_bytes(0, "JPEG")),
            ("000000000.txt", b"a red square"),
            ("000000000.json", b'{"url": "https://example.com/0.jpg", "width": 28}'),
            ("000000001.png", same),
            ("000000001.txt", b"a copy"),
        ],
    )
    _tar(
        root / "00001.tar",
        [
            ("000010000.png", same),
            ("000010000.txt", b"the same picture"),
            ("000010001.jpg", b"\xff\xd8\xff not a jpeg"),
            ("000010001.txt", b"broken"),
            ("000010002.txt", b"no image here"),
            ("000010003.webp", _image_bytes(3, "WEBP")),
            ("000010003.txt", b"a webp"),
        ],
    )
    _tar(
        root / "whole.tar",
        [("000020000.png", _image_bytes(4, "PNG")), ("000020001.png", _image_bytes(5, "PNG"))],
    )
    data = (root / "whole.tar").read_bytes()
    (root / "00002.tar").write_bytes(data[: 512 + len(_image_bytes(4, "PNG")) // 2])  # cut in its first image
    (root / "whole.tar").unlink()
    return root


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(release_archive("vit"))


def _run(argv: List[str], capsys) -> Tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _embed(shards: Path, out: Path, model_path: str, capsys) -> Tuple[int, str, str]:
    pattern = str(shards / "{00000..00002}.tar")
    argv = ["embed", pattern, "-o", str(out), "--model", model_path, "--device", "cpu", "--no-progress"]
    return _run([*argv, "--dtype", "float32", "--workers", "0"], capsys)


def test_brace_patterns_expand_in_order() -> None:
    assert expand("s/{00008..00011}.tar") == [f"s/{n:05d}.tar" for n in range(8, 12)]
    assert expand("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand("plain.tar") == ["plain.tar"]


def test_embed_tars_index_search_dedup(
    shards: Path, tmp_path: Path, model_path: str, capsys, monkeypatch
) -> None:
    out = tmp_path / "out.clip"
    real_write = _collection.write_shard
    calls: List[int] = []

    def interrupted(out_, shard, *args, **kwargs):
        calls.append(shard)
        if shard == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the second tar's shard is written
        return real_write(out_, shard, *args, **kwargs)

    monkeypatch.setattr(_collection, "write_shard", interrupted)
    code, _, err = _embed(shards, out, model_path, capsys)
    assert code == 130 and "rerun the same command" in err
    code, stdout, err = _embed(shards, out, model_path, capsys)
    assert code == 0, err
    assert calls == [0, 1, 1, 2]  # the first tar is not redone
    assert "resuming" in err and "4 images in 3 shards" in stdout and "4 could not be read" in stdout

    found = clip.collection.open(out)
    names = ["00000.tar/000000000.jpg", "00000.tar/000000001.png", "00001.tar/000010000.png"]
    names.append("00001.tar/000010003.webp")
    assert found.paths(np.arange(4)) == [str(shards / name) for name in names]
    assert found.captions([0, 3]) == ["a red square", "a webp"] and found.has_captions
    with sqlite3.connect(out / "metadata.sqlite") as db:
        tar, key, meta = db.execute("SELECT tar, key, meta FROM items WHERE id = 0").fetchone()
    assert (tar, key, json.loads(meta)["width"]) == (str(shards / "00000.tar"), "000000000", 28)
    assert found.metadata(0) == {"tar": tar, "key": "000000000", "json": json.loads(meta)}
    assert found.metadata([[1]]) == [[{"tar": tar, "key": "000000001", "json": None}]]
    assert found.read_item(0) == _image_bytes(0, "JPEG")  # the member's bytes, read from the tar in place
    assert found.read_item(3) == _image_bytes(3, "WEBP")
    with pytest.raises(IndexError, match="out of range"):
        found.read_item(4)
    with pytest.raises(TypeError, match="one integer row"):
        found.read_item([0])  # type: ignore[arg-type]
    errors = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()]
    assert errors[0] == ["tar", "key", "reason"] and len(errors) == 5
    by_key = {key: (tar, reason) for tar, key, reason in errors[1:]}
    assert (
        by_key["000010001"][0] == str(shards / "00001.tar")
        and "UnidentifiedImageError" in by_key["000010001"][1]
    )
    assert "no image member" in by_key["000010002"][1]
    assert by_key["000020000"][0] == str(shards / "00002.tar") and "truncated" in by_key["000020000"][1]
    assert "damaged after this point" in by_key["(the rest of the tar)"][1]

    model, preprocess = clip.load(model_path, device="cpu", jit=False)
    with torch.no_grad():
        pixels = torch.stack(
            [preprocess(Image.open(io.BytesIO(_image_bytes(i, f)))) for i, f in ((0, "JPEG"), (3, "WEBP"))]
        )
        expected = model.encode_image(pixels).float()
    expected = (expected / expected.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(found.features([0, 3]), expected, atol=FEATURE_ATOL, rtol=0)

    # clip serve's thumbnails of tar samples come from the member read in place
    from starlette.testclient import TestClient

    from clip._serve.app import create_app

    with TestClient(create_app(model, preprocess, model_name="tiny", collection=found)) as client:
        answer = client.get("/v1/thumb/3")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert (
            Image.open(io.BytesIO(answer.content)).size
            == Image.open(io.BytesIO(_image_bytes(3, "WEBP"))).size
        )

    code, stdout, err = _run(["index", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert "flat index of 4 rows" in stdout and "recall@10 against exact search: text queries 1.000" in stdout
    code, indexed, err = _run(["search", str(out), "a red square", "-k", "9"], capsys)
    assert code == 0, err
    code, exact, err = _run(["search", str(out), "a red square", "-k", "9", "--exact"], capsys)
    assert code == 0 and indexed == exact and len(exact.splitlines()) == 4  # -k clamped to the 4 items

    monkeypatch.setitem(sys.modules, "faiss", None)  # an index, and faiss gone: one line naming the extra
    code, _, err = _run(["search", str(out), "a red square"], capsys)
    assert (
        code == 2
        and 'pip install "clip-faithful[index]"' in err
        and "--exact" in err
        and "Traceback" not in err
    )
    monkeypatch.delitem(sys.modules, "faiss")

    code, stdout, err = _run(["dedup", str(out), "--threshold", "0.999", "--no-progress"], capsys)
    assert code == 0, err
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert [(group, path) for group, _, path in lines] == [("0", found.paths(1)), ("0", found.paths(2))]
    assert "1 groups" in err and "drops 1" in err


@pytest.mark.parametrize(
    "sources, expected",
    [
        (["{00007..00008}.tar"], "00007.tar: no such file (and 1 more)"),
        (["00000.tar", "."], "mixes .tar shards and other sources"),
        (["00000.tar", "00000.tar"], "named twice"),
        (["notes.tar"], "not a tar file"),
        (["."], "to embed its webdataset shards, name them: ./*.tar"),
    ],
)
def test_bad_tar_sources(
    sources, expected, shards: Path, tmp_path: Path, model_path: str, capsys, monkeypatch
) -> None:
    (shards / "notes.tar").write_text("not a tar at all, just text " * 40)
    monkeypatch.chdir(shards)
    out = tmp_path / "out"
    code, _, err = _run(["embed", *sources, "-o", str(out), "--model", model_path, "--device", "cpu"], capsys)
    assert code == 2 and expected in err, err
    assert not out.exists()


def test_torchrun_ranks_split_by_tar(shards: Path, tmp_path: Path, model_path: str) -> None:
    """Under torchrun, rank r of N embeds tars r, r + N, ...: a whole tar is one rank's shard."""
    import argparse

    from clip._cli import embed as _embed_command
    from clip._collection.tars import list_tars

    items, captions, bounds = list_tars([str(shards / "{00000..00002}.tar")])
    model, preprocess = clip.load(model_path, device="cpu", jit=False)
    args = argparse.Namespace(batch_size=2, workers=0, dtype="float32", no_progress=True)
    out = tmp_path / "out"
    out.mkdir()
    second_of_two = _embed_command._Group(rank=1, world=2, local_rank=0)
    _embed_command._embed(args, model, preprocess, items, captions, out, bounds, second_of_two)
    assert sorted(p.name for p in out.glob("shard-*.json")) == ["shard-00001.json"]
    record = json.loads((out / "shard-00001.json").read_text())
    assert record["rank"] == 1 and record["rows"] == [2, 5] and [i for i, _ in record["errors"]] == [3, 4]
    assert [items[i].key for i in record["rows"]] == ["000010000", "000010003"]


@pytest.mark.parametrize("name", ["index", "dedup"])
def test_index_and_dedup_have_help_with_examples(name: str, capsys) -> None:
    code, out, _ = _run([name, "--help"], capsys)
    assert code == 0 and f"usage: clip {name}" in out
    assert f"  clip {name} photos.clip" in out[out.index("examples:") :]


def test_index_of_a_missing_folder_is_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["index", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no such folder" in err and len(err.strip().splitlines()) == 1


def test_read_tar_member_refuses_a_missing_or_cut_member(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tar"
    image = _image_bytes(7, "PNG")
    _tar(whole, [("000000000.png", image), ("000000001.txt", b"x")])
    assert read_tar_member(str(whole), "000000000.png") == image
    with pytest.raises(FileNotFoundError, match="holds no member 000000009.png"):
        read_tar_member(str(whole), "000000009.png")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: 512 + len(image) // 2])
    with pytest.raises(OSError, match="cut.tar"):
        read_tar_member(str(cut), "000000000.png")
    with pytest.raises(OSError):
        read_tar_member(str(tmp_path / "gone.tar"), "000000000.png")
