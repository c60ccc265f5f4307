"""A collection folder opened for reading (formats 1, 2 and 3), and exact search over its shards.

Opening reads ``manifest.json`` only (a few KB in format 3; formats 1 and 2 list every item there);
the shards are memory-mapped when first searched, the item table opened when first asked.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .layout import (
    MANIFEST_FILE,
    METADATA_FILE,
    RUN_FILE,
    CollectionError,
    read_versioned,
    shard_name,
)
from .metadata import Items, JsonItems, SqliteItems

__all__ = ["Stored", "read_manifest", "exact_search", "SEARCH_CHUNK_ROWS"]

SEARCH_CHUNK_ROWS = 65536  # rows of a memory-mapped shard scored at a time


def read_manifest(folder: Path) -> Dict[str, Any]:
    """The manifest of the collection in `folder`, of a format this clip reads."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        if not folder.exists():
            raise CollectionError(f"{folder}: no such folder; pass the OUT folder of a clip embed run")
        unfinished = (folder / RUN_FILE).is_file()
        hint = " (the run is unfinished: rerun clip embed to complete it)" if unfinished else ""
        raise CollectionError(f"{folder}: no {MANIFEST_FILE}{hint}; pass the OUT folder of a clip embed run")
    return read_versioned(path, "a manifest this clip reads", "embed the collection again with this one")


class Stored:
    """The files of one collection: its manifest, its shards (memory-mapped), its item table."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest = read_manifest(folder)
        self.format: int = self.manifest["format"]
        self.shards: List[Dict[str, Any]] = self.manifest["shards"]
        self.rows = sum(int(shard["rows"]) for shard in self.shards)
        self._items: Optional[Items] = None
        self._mapped: Dict[Tuple[int, str], np.ndarray] = {}
        self._dim: Optional[int] = self.manifest.get("dim")

    @property
    def items(self) -> Items:
        """The per-item table (opened on first use)."""
        if self._items is None:
            if self.format >= 3:
                table = self.folder / self.manifest.get("metadata", METADATA_FILE)
                self._items = SqliteItems(table, self.rows)
            else:
                self._items = JsonItems(self.manifest["items"])
        return self._items

    @property
    def dim(self) -> int:
        """The width of the stored features (0 for an empty collection)."""
        if self._dim is None:
            filled = [shard for shard, entry in enumerate(self.shards) if entry["rows"]]
            self._dim = int(self.features(filled[0]).shape[1]) if filled else 0
        return self._dim

    def has(self, kind: str) -> bool:
        """Whether the shards hold features of `kind` ("images", or "texts" for captioned items)."""
        return bool(self.shards) and all(shard.get(kind) for shard in self.shards)

    def features(self, shard: int, kind: str = "images") -> np.ndarray:
        """Shard `shard`'s features of `kind`, memory-mapped (``[rows, D]``); a CollectionError naming
        the file and how to redo it when it is missing, cut short, or not the rows the manifest lists."""
        key = (shard, kind)
        if key in self._mapped:
            return self._mapped[key]
        name = self.shards[shard][kind]
        rows = self.shards[shard]["rows"]
        if not name:
            raise CollectionError(f"{self.folder}: the collection holds no {kind} features")
        try:
            features = np.load(self.folder / name, mmap_mode="r")
            problem = (
                None
                if features.ndim == 2 and features.shape[0] == rows
                else f"{features.shape}, not {rows} rows"
            )
        except (OSError, ValueError, EOFError) as exc:
            problem = str(exc)
        if problem is not None:
            raise CollectionError(
                f"{self.folder}: the collection is damaged: {name} cannot be read ({problem}). To redo "
                f"that shard, delete {self.folder / shard_name('shard', shard, '.json')} and rerun the "
                "clip embed command that made the collection (the same SRC and options)"
            )
        self._mapped[key] = features
        return features

    def blocks(self, kind: str = "images", chunk: int = SEARCH_CHUNK_ROWS):
        """(first row, float32 block ``[rows, D]``) over every stored row of `kind`, in order."""
        first = 0
        for shard in range(len(self.shards)):
            features = self.features(shard, kind)
            for start in range(0, features.shape[0], chunk):
                yield first + start, np.asarray(features[start : start + chunk], dtype=np.float32)
            first += features.shape[0]

    def gather(self, rows: np.ndarray, kind: str = "images") -> np.ndarray:
        """The float32 features of `rows` (any order, a 1-D array of row numbers) ``[len(rows), D]``."""
        starts = np.cumsum([0] + [int(shard["rows"]) for shard in self.shards])
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            local = rows[where] - starts[shard]
            order = np.argsort(local)
            out[where[order]] = self.features(int(shard), kind)[local[order]]
        return out

    def close(self) -> None:
        self._mapped.clear()
        if self._items is not None:
            self._items.close()


def exact_search(
    stored: Stored, queries: np.ndarray, k: int, kind: str = "images"
) -> Tuple[np.ndarray, np.ndarray]:
    """The `k` best (cosine, row) of every query over every stored row, best first (ties: lower row).

    `queries` are unit-length float32 rows ``[Q, D]``; the shards hold unit-length rows, so the dot
    product is the cosine. Returns ``(scores [Q, k] float32, rows [Q, k] int64)``; `k` <= rows.
    """
    count = queries.shape[0]
    best_scores = np.full((count, 0), -np.inf, dtype=np.float32)
    best_rows = np.empty((count, 0), dtype=np.int64)
    for first, block in stored.blocks(kind):
        scores = queries @ block.T  # [Q, rows]
        rows = np.broadcast_to(np.arange(first, first + block.shape[0], dtype=np.int64), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return sort_results(best_scores, best_rows)


def sort_results(scores: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Each query's results by score, best first, ties by row."""
    order = np.lexsort((rows, -scores), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
