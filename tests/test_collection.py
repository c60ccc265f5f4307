"""clip.collection: opening collections of every format, exact search, paths and captions, bad input.

Expected rankings are computed here by brute force in float64 over the same stored (float16) rows.
"""

from pathlib import Path

import numpy as np
import pytest
from _fake_collections import Space, brute_force, write_legacy

import clip.collection
from clip.collection import CollectionError

DIM = 32
ROWS = 230


@pytest.fixture(scope="module")
def space() -> Space:
    return Space(DIM, clusters=12, seed=3)


@pytest.fixture(scope="module")
def vectors(space: Space) -> np.ndarray:
    return space.images(ROWS)


def _paths(count: int) -> list:
    return [f"/data/photos/{index:04d}.jpg" for index in range(count)]


@pytest.mark.parametrize("version", [1, 2])
def test_open_and_search_a_legacy_folder(version, tmp_path: Path, space: Space, vectors: np.ndarray) -> None:
    folder = tmp_path / "old.clip"
    captions = [f"caption {index}" for index in range(ROWS)]
    write_legacy(folder, vectors, _paths(ROWS), version=version, captions=captions, shard_rows=64)
    stored = vectors.astype(np.float16).astype(np.float32)
    with clip.collection.open(folder) as photos:
        assert (len(photos), photos.dim, photos.model, photos.format) == (ROWS, DIM, "ViT-B/32", version)
        queries = np.concatenate([space.texts(5), vectors[:3] * 4.0])  # lengths other than 1 are fine
        scores, rows = photos.search(queries, k=7)
        expected_scores, expected_rows = brute_force(stored, queries, 7)
        assert scores.shape == rows.shape == (8, 7) and rows.dtype == np.int64
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
        assert photos.paths(rows[0]) == [_paths(ROWS)[row] for row in expected_rows[0]]
        assert photos.captions(rows)[1][2] == captions[expected_rows[1][2]]
        assert photos.paths(int(rows[0, 0])) == _paths(ROWS)[expected_rows[0][0]]
        assert photos.metadata(rows[:1, :2]) == [[None, None]]  # not from a tar


def test_k_is_clamped_to_the_collection_and_must_be_positive(tmp_path: Path, vectors: np.ndarray) -> None:
    folder = tmp_path / "small.clip"
    write_legacy(folder, vectors[:9], _paths(9), version=2)
    photos = clip.collection.open(folder)
    scores, rows = photos.search(vectors[0], k=50)  # one [D] vector: one query
    assert rows.shape == (1, 9) and sorted(rows[0].tolist()) == list(range(9)) and rows[0, 0] == 0
    for bad in (0, -3):
        with pytest.raises(ValueError, match="k must be at least 1"):
            photos.search(vectors[:1], k=bad)
    with pytest.raises(TypeError, match="k must be an int"):
        photos.search(vectors[:1], k=2.5)


@pytest.mark.parametrize(
    "queries, message",
    [
        (np.zeros((1, DIM)), "all zeros"),
        (np.full((2, DIM), np.nan), "NaN"),
        (np.ones((1, DIM + 1)), "33-dimensional"),
        (np.ones((0, DIM)), "Q >= 1"),
        (np.array([["a"] * DIM]), "float array"),
    ],
)
def test_bad_queries_are_refused(queries, message, tmp_path: Path, vectors: np.ndarray) -> None:
    folder = tmp_path / "c.clip"
    write_legacy(folder, vectors[:20], _paths(20), version=2)
    with pytest.raises(ValueError, match=message):
        clip.collection.open(folder).search(queries)


def test_rows_out_of_range_and_missing_folders(tmp_path: Path, vectors: np.ndarray) -> None:
    folder = tmp_path / "c.clip"
    write_legacy(folder, vectors[:20], _paths(20), version=1)
    photos = clip.collection.open(folder)
    with pytest.raises(IndexError, match="rows 0 to 19"):
        photos.paths([3, 20])
    with pytest.raises(CollectionError, match="no such folder"):
        clip.collection.open(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text("{}")
    with pytest.raises(CollectionError, match="unfinished"):
        clip.collection.open(tmp_path / "half")
    (folder / "images-00000.npy").write_bytes(b"\x93NUMPY cut short")
    with pytest.raises(CollectionError, match="damaged: images-00000.npy"):
        clip.collection.open(folder).search(vectors[:1])
