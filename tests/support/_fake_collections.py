"""Synthetic collections for the collection tests and benchmarks.

CLIP-like features: image rows in a narrow cone (every row close to one axis, as real CLIP image
features are: pairwise cosines ~0.5 and up), clustered inside it; text-like queries in another cone,
shifted from the images' by a fixed gap (the modality gap), each aimed at one cluster, so that their
best cosines are low (~0.3) and their neighbours spread over clusters, as text queries' are.
Folders of formats 1 and 2, as older clip versions wrote them, for the read-compatibility tests.
"""

import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

CONE = 1.3  # weight of the shared axis against unit-length cluster directions: a narrow cone
SPREAD = 0.7  # weight of a row's own noise against its cluster's direction
GAP = 2.5  # weight of the text cone's own axis (the modality gap)
TEXT_NOISE = 1.0  # weight of a query's own noise


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


class Space:
    """One embedding space: an image axis, a text axis, and cluster directions (seeded)."""

    def __init__(self, dim: int, clusters: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        basis = self.rng.standard_normal((2, dim))
        self.image_axis = _unit(basis[0])
        self.text_axis = _unit(basis[1] - (basis[1] @ self.image_axis) * self.image_axis)
        self.centres = _unit(self.rng.standard_normal((clusters, dim)))

    def images(self, count: int, start: int = 0) -> np.ndarray:
        """`count` unit-length image rows (chunked by caller for large counts: seed from `start`)."""
        rng = np.random.default_rng([start, count, 1])
        cluster = rng.integers(0, len(self.centres), count)
        noise = rng.standard_normal((count, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        rows = CONE * self.image_axis + self.centres[cluster] + SPREAD * noise
        return _unit(rows)

    def texts(self, count: int, seed: int = 7) -> np.ndarray:
        """`count` text-like queries: a shifted cone, each aimed at a cluster."""
        rng = np.random.default_rng([seed, count, 2])
        cluster = rng.integers(0, len(self.centres), count)
        noise = rng.standard_normal((count, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        rows = CONE * self.image_axis + GAP * self.text_axis + self.centres[cluster] + TEXT_NOISE * noise
        return _unit(rows)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found in its returned top-k."""
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth)]
    return float(np.sum(hits) / truth.size)


def brute_force(features: np.ndarray, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine (queries normalised here), ties by row: the reference."""
    queries = _unit(queries.astype(np.float64)).astype(np.float64)
    scores = queries @ features.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(features.shape[0]), scores.shape), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def write_legacy(
    folder: Path,
    features: np.ndarray,
    paths: List[str],
    *,
    version: int,
    captions: Optional[List[str]] = None,
    shard_rows: int = 50,
    model: str = "ViT-B/32",
) -> None:
    """A folder as clip embed wrote it in format `version` (1 or 2): items listed in manifest.json."""
    folder.mkdir(parents=True)
    shards, items = [], []
    for shard, start in enumerate(range(0, len(features), shard_rows)):
        block = features[start : start + shard_rows]
        np.save(folder / f"images-{shard:05d}.npy", block.astype(np.float16))
        shards.append({"images": f"images-{shard:05d}.npy", "texts": None, "rows": len(block)})
        for row in range(len(block)):
            entry = {"path": paths[start + row], "shard": shard, "row": row}
            if captions is not None:
                entry["caption"] = captions[start + row]
            items.append(entry)
    manifest = {
        "format": version,
        "model": model,
        "clip_version": "0.9.0",
        "dtype": "float16",
        "shard_size": shard_rows,
        "n_items": len(items),
        "items_sha256": "0" * 64,
        "captions": captions is not None,
        "shards": shards,
        "items": items,
    }
    if version >= 2:
        manifest["model_sha256"] = "ab" * 32
    (folder / "manifest.json").write_text(json.dumps(manifest))


def manifest_with_items(folder: Path) -> dict:
    """manifest.json of a format 3 folder with its item table read back into ``items`` (as formats 1
    and 2 held it: path, shard, row, and caption when the collection has captions)."""
    import sqlite3

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 3 and "items" not in manifest
    with sqlite3.connect(folder / manifest["metadata"]) as db:
        table = db.execute("SELECT path, caption, shard, row FROM items ORDER BY id").fetchall()
    decode = lambda value: value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value  # noqa: E731
    manifest["items"] = [
        {
            "path": decode(path),
            "shard": shard,
            "row": row,
            **({"caption": caption} if manifest["captions"] else {}),
        }
        for path, caption, shard, row in table
    ]
    return manifest
