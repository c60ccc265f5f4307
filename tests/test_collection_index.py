"""clip.collection.from_arrays, build_index, the index's freshness, near_duplicates, format upgrades.

Synthetic CLIP-like rows (tests/support/_fake_collections.py); expected neighbours by brute force.
"""

import json
import os
import sqlite3
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from _fake_collections import Space, brute_force, recall_at_k, write_legacy

import clip.collection
from clip.collection import CollectionError

pytest.importorskip("faiss")

DIM = 48
ROWS = 3000


@pytest.fixture(scope="module")
def space() -> Space:
    return Space(DIM, clusters=40, seed=5)


@pytest.fixture(scope="module")
def vectors(space: Space) -> np.ndarray:
    return space.images(ROWS)


def _paths(count: int) -> list:
    return [f"/data/{index:05d}.jpg" for index in range(count)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors: np.ndarray) -> Path:
    """A collection with an IVF index (few cells, so that probing fewer of them misses rows)."""
    folder = tmp_path_factory.mktemp("index") / "c.clip"
    clip.collection.from_arrays(folder, vectors, _paths(ROWS), progress=False, shard_size=1000)
    clip.collection.build_index(folder, kind="ivf", progress=False)
    return folder


def test_from_arrays_normalises_with_a_warning_and_round_trips(tmp_path: Path, vectors: np.ndarray) -> None:
    parts = [vectors[:1000] * 3.0, vectors[1000:1500]]  # two files, as clip-retrieval writes img_emb
    captions = [f"caption {i}" for i in range(1500)]
    with pytest.warns(UserWarning, match="1000 of 1500 feature rows were not unit length"):
        found = clip.collection.from_arrays(
            tmp_path / "c.clip", parts, _paths(1500), captions=captions, progress=False, shard_size=700
        )
    assert (len(found), found.dim, found.model, found.format) == (1500, DIM, None, 3)
    np.testing.assert_allclose(found.features(np.arange(1500)), vectors[:1500], atol=1e-3)
    assert found.paths([1499, 0]) == [_paths(1500)[1499], _paths(1500)[0]]
    assert found.captions(7) == "caption 7" and found.has_captions
    assert sorted(os.listdir(tmp_path)) == ["c.clip"]  # no temporary folder left beside it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unit-length rows: no warning
        clip.collection.from_arrays(tmp_path / "d.clip", vectors[:10], _paths(10), progress=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ("paths", "10 feature rows but 9 paths"),
        ("captions", "10 feature rows but 3 captions"),
        ("nan", "features row 4 holds NaN"),
        ("zero", "features row 6 is all zeros"),
        ("model", "neither a released model name nor an existing checkpoint"),
        ("shape", r"must be \[N, D\] arrays, got shape \(48,\)"),
    ],
)
def test_from_arrays_refuses_bad_input_and_writes_nothing(change, message, tmp_path, vectors) -> None:
    features, paths, kwargs = vectors[:10].copy(), _paths(10), {}
    if change == "paths":
        paths = paths[:9]
    elif change == "captions":
        kwargs["captions"] = ["a", "b", "c"]
    elif change == "nan":
        features[4, 3] = np.nan
    elif change == "zero":
        features[6] = 0
    elif change == "model":
        kwargs["model"] = "no/such/model.pt"
    else:
        features = features[0]
    with pytest.raises(ValueError, match=message):
        clip.collection.from_arrays(tmp_path / "c.clip", features, paths, progress=False, **kwargs)
    assert os.listdir(tmp_path) == []


def test_from_arrays_refuses_an_existing_folder(tmp_path: Path, vectors: np.ndarray) -> None:
    (tmp_path / "c.clip").mkdir()
    with pytest.raises(CollectionError, match="already exists"):
        clip.collection.from_arrays(tmp_path / "c.clip", vectors[:5], _paths(5), progress=False)


def test_index_is_tuned_and_searched(built: Path, space: Space, vectors: np.ndarray) -> None:
    found = clip.collection.open(built)
    info = found.index_info
    assert info["kind"] == "ivf" and info["rows"] == ROWS and info["target_recall"] == 0.95
    assert min(info["recall_at_10"].values()) >= 0.95 and 1 <= info["params"]["nprobe"] <= info["cells"]
    queries = space.texts(60, seed=3)
    scores, rows = found.search(queries, k=10)
    exact_scores, exact_rows = found.search(queries, k=10, exact=True)
    stored = found.features(np.arange(ROWS))
    np.testing.assert_array_equal(exact_rows, brute_force(stored, queries, 10)[1])
    assert recall_at_k(rows, exact_rows) >= 0.9  # a check on other queries than the tuning's
    same = rows == exact_rows
    np.testing.assert_allclose(scores[same], exact_scores[same], atol=1e-6)  # re-scored from the shards
    assert found.search(queries[:2], k=ROWS + 5)[1].shape == (2, ROWS)  # k clamped through the index too


def test_the_tuning_refuses_too_few_probes(built: Path) -> None:
    """The check the tuning relies on can fail: with one probe, recall@10 drops below the target."""
    from clip._collection import index as _index

    found = clip.collection.open(built)
    loaded = found._index._loaded()
    text_like, _ = _index._text_like(found._stored, np.arange(0, ROWS, 37), np.random.default_rng(0))
    truth = found.search(text_like, k=10, exact=True)[1]
    one = _index._search(loaded, "ivf", {"nprobe": 1}, found._stored, text_like, 10, fallback=False)[1]
    assert recall_at_k(one, truth) < 0.95 <= found.index_info["recall_at_10"]["text"]


def test_a_changed_collection_is_refused_until_rebuilt(
    built: Path, tmp_path: Path, vectors: np.ndarray
) -> None:
    import shutil

    folder = tmp_path / "c.clip"
    shutil.copytree(built, folder)
    shard = folder / "images-00001.npy"
    array = np.load(shard)
    os.utime(shard)  # touched, same bytes: still fresh (hashed again)
    clip.collection.open(folder).search(vectors[:1])
    array[0] = array[1]
    np.save(shard, array)  # the same size, other rows
    found = clip.collection.open(folder)
    with pytest.raises(CollectionError, match="index is stale: images-00001.npy changed") as raised:
        found.search(vectors[:1])
    assert "clip index" in str(raised.value) and "exact=True" in str(raised.value)
    assert found.search(vectors[:1], exact=True)[1].shape == (1, 10)
    clip.collection.build_index(folder, kind="flat", progress=False)  # rebuilt: replaces the old file
    assert len([n for n in os.listdir(folder) if n.endswith(".faiss")]) == 1
    assert clip.collection.open(folder).search(vectors[:1])[1][0, 0] == 0


def test_an_index_of_another_model_is_refused(built: Path, tmp_path: Path, vectors: np.ndarray) -> None:
    import shutil

    folder = tmp_path / "c.clip"
    shutil.copytree(built, folder)
    record = json.loads((folder / "index.json").read_text())
    record["model_sha256"], record["model"] = "ef" * 32, "RN50"
    (folder / "index.json").write_text(json.dumps(record))
    with pytest.raises(CollectionError, match="built with another model .'RN50'"):
        clip.collection.open(folder).search(vectors[:1])


def test_auto_kind_and_memory_limits(tmp_path: Path, vectors: np.ndarray) -> None:
    folder = tmp_path / "c.clip"
    clip.collection.from_arrays(folder, vectors[:500], _paths(500), progress=False)
    info = clip.collection.build_index(folder, progress=False)
    assert info["kind"] == "flat" and info["recall_at_10"] == {"text": 1.0, "image": 1.0}
    with pytest.raises(CollectionError, match="needs about .* more than max_memory"):
        clip.collection.build_index(folder, kind="flat", max_memory="10K", progress=False)
    with pytest.raises(ValueError, match="give bytes, or a size"):
        clip.collection.build_index(folder, max_memory="lots", progress=False)
    with pytest.raises(ValueError, match="kind 'annoy'"):
        clip.collection.build_index(folder, kind="annoy", progress=False)
    assert clip.collection.open(folder).index_info["kind"] == "flat"  # the failed builds left it alone


def test_missing_faiss_names_the_extra(built: Path, vectors: np.ndarray, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    found = clip.collection.open(built)  # opening needs no faiss
    with pytest.raises(ImportError, match=r'pip install "clip-faithful\[index\]"'):
        found.search(vectors[:1])
    assert found.search(vectors[:1], exact=True)[1][0, 0] == 0
    with pytest.raises(ImportError, match="clip-faithful"):
        clip.collection.build_index(built, progress=False)


def test_the_collection_modules_import_without_faiss(monkeypatch) -> None:
    """`import clip.collection` (and its machinery) never imports faiss: with faiss unimportable,
    every module loads again from scratch."""
    import importlib

    monkeypatch.setitem(sys.modules, "faiss", None)
    for name in ["clip._collection." + part for part in ("reading", "runs", "index", "dedup", "tars")]:
        importlib.reload(importlib.import_module(name))
    fresh = importlib.util.spec_from_file_location("clip._fresh_collection", clip.collection.__file__)
    fresh.loader.exec_module(importlib.util.module_from_spec(fresh))


def test_a_legacy_folder_is_upgraded_by_build_index(tmp_path: Path, vectors: np.ndarray) -> None:
    folder = tmp_path / "old.clip"
    write_legacy(folder, vectors[:200], _paths(200), version=2, captions=[str(i) for i in range(200)])
    clip.collection.build_index(folder, kind="flat", progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 3 and "items" not in manifest and manifest["upgraded_from"] == 2
    found = clip.collection.open(folder)
    assert found.paths([199]) == [_paths(200)[199]] and found.captions(3) == "3"
    assert found.search(vectors[5], k=1)[1][0, 0] == 5


def test_non_utf8_names_round_trip_through_the_item_table(tmp_path: Path, vectors: np.ndarray) -> None:
    name = os.fsdecode(b"/photos/caf\xe9.jpg")  # Latin-1 bytes: held as a surrogate
    found = clip.collection.from_arrays(tmp_path / "c.clip", vectors[:2], [name, "/b.jpg"], progress=False)
    assert found.paths([0, 1]) == [name, "/b.jpg"]
    with sqlite3.connect(tmp_path / "c.clip" / "metadata.sqlite") as db:
        assert db.execute("SELECT path FROM items WHERE id = 0").fetchone()[0] == b"/photos/caf\xe9.jpg"


@pytest.mark.parametrize("use_index", [False, True])
def test_near_duplicates(use_index: bool, tmp_path: Path, vectors: np.ndarray) -> None:
    rows = vectors[:800].copy()
    rows[10] = rows[3]
    rows[500] = rows[3] + 0.01 * rows[4]  # near, not equal
    rows[500] /= np.linalg.norm(rows[500])
    rows[42] = rows[41]
    folder = tmp_path / "c.clip"
    clip.collection.from_arrays(folder, rows, _paths(800), progress=False, dtype="float32")
    if use_index:
        clip.collection.build_index(folder, kind="ivf", progress=False)
    stored = clip.collection.open(folder).features(np.arange(800))
    similar = stored @ stored.T
    np.fill_diagonal(similar, 0)
    expected_pairs = {(int(a), int(b)) for a, b in zip(*np.nonzero(similar >= 0.995)) if a < b}
    groups = clip.collection.near_duplicates(folder, 0.995, progress=False)
    assert groups == [[3, 10, 500], [41, 42]]
    assert expected_pairs == {(3, 10), (3, 500), (10, 500), (41, 42)}
    with pytest.raises(ValueError, match="threshold"):
        clip.collection.near_duplicates(folder, 1.5)


def test_auto_under_a_memory_limit_is_product_quantised_and_re_scored(
    built: Path, tmp_path: Path, space: Space
) -> None:
    import shutil

    folder = tmp_path / "c.clip"
    shutil.copytree(built, folder)
    info = clip.collection.build_index(folder, max_memory="100K", progress=False)  # ivf needs ~300K
    assert info["kind"] == "ivfpq" and info["params"]["factor"] > 1
    assert min(info["recall_at_10"].values()) >= 0.95
    found = clip.collection.open(folder)
    queries = space.texts(40, seed=9)
    scores, rows = found.search(queries, k=10)
    exact_scores, exact_rows = found.search(queries, k=10, exact=True)
    assert recall_at_k(rows, exact_rows) >= 0.9
    same = rows == exact_rows
    np.testing.assert_allclose(scores[same], exact_scores[same], atol=1e-6)  # exact scores, not PQ's


def test_search_of_arrays_without_a_model_asks_for_one(tmp_path: Path, vectors: np.ndarray, capsys) -> None:
    from clip.__main__ import main

    clip.collection.from_arrays(tmp_path / "c.clip", vectors[:20], _paths(20), progress=False)
    assert main(["search", str(tmp_path / "c.clip"), "a dog"]) == 2
    assert "records no model" in capsys.readouterr().err
