"""Embedded collections: open what ``clip embed`` wrote (or :func:`from_arrays`), search it, index it.

>>> import clip.collection
>>> photos = clip.collection.open("photos.clip")
>>> len(photos), photos.dim, photos.model
(120000, 512, 'ViT-B/32')
>>> scores, rows = photos.search(text_features, k=5)        # [Q, 512] -> [Q, 5], [Q, 5]
>>> photos.paths(rows[0])
['/data/photos/beach/0412.jpg', ...]

A collection is a folder: the L2-normalised features in ``.npy`` shards, ``manifest.json``, and the
per-item table in ``metadata.sqlite`` (format 3; formats 1 and 2, which listed the items in
``manifest.json``, are still read). :func:`build_index` adds a faiss index that :meth:`Collection.search`
then uses; see docs/collections.md. Importing this module does not import faiss.
"""

import builtins
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._collection.layout import CollectionError
from ._collection.reading import Stored, exact_search
from ._collection.tars import read_tar_member

__all__ = ["open", "Collection", "CollectionError", "from_arrays", "build_index", "near_duplicates"]

PathLike = Union[str, "os.PathLike[str]"]
Rows = Union[int, Sequence[int], np.ndarray]


class Collection:
    """An embedded collection opened for reading; made by :func:`open`.

    ``len(collection)`` is the number of embedded items (rows); row ``i`` is the ``i``-th item in the
    order of the shards. It can be used as a context manager (closing the item table at the end).
    """

    def __init__(self, stored: Stored) -> None:
        from ._collection.index import open_index

        self._stored = stored
        self._index = open_index(stored)

    def __len__(self) -> int:
        return self._stored.rows

    def __repr__(self) -> str:
        shape = f"{len(self)} x {self.dim}"
        return f"<clip.collection.Collection {str(self.path)!r}: {shape}, model {self.model!r}>"

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The collection's folder."""
        return self._stored.folder

    @property
    def dim(self) -> int:
        """The width of the features (512 for ViT-B/32); 0 for a collection with no rows."""
        return self._stored.dim

    @property
    def model(self) -> Optional[str]:
        """The model the features were computed with, as recorded: a released name or an absolute
        checkpoint path (None for :func:`from_arrays` without a model)."""
        return self._stored.manifest.get("model")

    @property
    def model_sha256(self) -> Optional[str]:
        """The SHA256 of that model's weights, when recorded (format 2 and later)."""
        return self._stored.manifest.get("model_sha256")

    @property
    def format(self) -> int:
        """The format version of the folder (1, 2 or 3)."""
        return self._stored.format

    @property
    def has_captions(self) -> bool:
        """Whether items carry captions (and the shards the captions' text features)."""
        return bool(self._stored.manifest.get("captions"))

    @property
    def index_info(self) -> Optional[Dict[str, Any]]:
        """The record of the folder's faiss index (kind, search parameters, the recall@10 it was
        tuned to, what it was built from), or None when it has none. See :func:`build_index`."""
        return None if self._index is None else dict(self._index.info)

    def check_index(self, exact: bool = False) -> None:
        """Raise CollectionError when :meth:`search` would use an index that is stale (the shards
        changed, or it was built with another model since); ImportError when faiss is missing.
        Nothing to check with ``exact=True`` or without an index."""
        if self._index is not None and not exact:
            from ._collection.index import import_faiss

            import_faiss()
            self._index.check()

    def search(
        self, queries: np.ndarray, k: int = 10, *, exact: bool = False
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The `k` rows most similar to each query, best first: ``(scores [Q, k], rows [Q, k])``.

        `queries` is ``[Q, D]`` (a single ``[D]`` vector is taken as ``[1, D]``) of features from the
        collection's model, e.g. ``model.encode_text(...)`` as a NumPy array; each is L2-normalised
        here, so scores are cosine similarities (float32) and rows int64 row numbers (see
        :meth:`paths`). Ties are broken by the lower row.

        `k` must be at least 1; a `k` above ``len(self)`` is clamped to ``len(self)`` (the result
        then has ``len(self)`` columns). With ``exact=True`` every row is scored; otherwise the faiss
        index is used when the folder has one (see :func:`build_index`) and the scan when it has not.
        Through the index, candidates are re-scored from the stored rows, so a score is the same
        either way; the index may miss a row (its recall@10 is in :attr:`index_info`).

        Raises ValueError for queries of another width, NaN/inf or all-zero rows, a bad `k`;
        CollectionError for a collection with no rows, damaged shards, or a stale index (the shards
        changed since it was built: rebuild it, or pass ``exact=True``); ImportError when the folder
        has an index and faiss is not installed (``pip install "clip-faithful[index]"``).
        """
        prepared = self._queries(queries)
        k = self._k(k)
        if self._index is not None and not exact:
            self.check_index()
            return self._index.search(prepared, k)
        return exact_search(self._stored, prepared, k)

    def features(self, rows: Rows) -> np.ndarray:
        """The stored image features of `rows` (row numbers, any order, repeats allowed) as float32
        ``[len(rows), D]`` (``[D]`` for one row number): unit length, as searched."""
        array = np.asarray(rows)
        if array.dtype.kind not in "iu":
            raise TypeError(f"rows must be integer row numbers, got {array.dtype}")
        flat = array.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            bad = int(flat[(flat < 0) | (flat >= len(self))][0])
            raise IndexError(f"row {bad} is out of range: the collection has rows 0 to {len(self) - 1}")
        out = self._stored.gather(flat)
        return out[0] if array.ndim == 0 else out

    def paths(self, rows: Rows) -> Any:
        """The item path of each row: a str for one row number, a list for a 1-D sequence, a list of
        lists for ``[Q, k]`` (as :meth:`search` returns). Paths are as recorded: absolute (format 2
        and later), as spelled on the command line (format 1), ``TAR/MEMBER`` for a sample of a
        webdataset ``.tar``. Raises IndexError for a row outside ``0 .. len(self) - 1``."""
        return self._column("path", rows)

    def captions(self, rows: Rows) -> Any:
        """The caption of each row, shaped as in :meth:`paths`; None where items have no caption."""
        return self._column("caption", rows)

    def metadata(self, rows: Rows) -> Any:
        """For webdataset input, each row's sample as ``{"tar", "key", "json"}`` (``json``: its
        ``KEY.json`` parsed, None without one); None for items that did not come from a tar. Shaped
        as in :meth:`paths`."""
        tars, keys, metas = (self._column(name, rows) for name in ("tar", "key", "meta"))

        def one(tar: Optional[str], key: Optional[str], meta: Optional[str]) -> Optional[Dict[str, Any]]:
            if tar is None:
                return None
            try:
                parsed = None if meta is None else json.loads(meta)
            except ValueError:
                parsed = None  # a KEY.json that is not JSON: kept as text in the table, not parsed
            return {"tar": tar, "key": key, "json": parsed}

        if not isinstance(tars, list):
            return one(tars, keys, metas)
        if tars and isinstance(tars[0], list):
            return [[one(*values) for values in zip(*row)] for row in zip(tars, keys, metas)]
        return [one(*values) for values in zip(tars, keys, metas)]

    def read_item(self, row: int) -> bytes:
        """The bytes of item `row`'s image: its file, or for a webdataset sample its image member,
        read from the tar in place. Raises IndexError for a row outside ``0 .. len(self) - 1`` and
        OSError when the file (or the member) is gone or shorter than recorded."""
        if isinstance(row, (bool, np.bool_)) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"row must be one integer row number, got {type(row).__name__}")
        path, tar = self._column("path", int(row)), self._column("tar", int(row))
        if tar is None:
            with builtins.open(path, "rb") as handle:
                return handle.read()
        return read_tar_member(tar, path[len(tar) + 1 :])

    def close(self) -> None:
        """Close the item table and drop the memory maps (the object is not usable afterwards)."""
        self._stored.close()

    def _column(self, name: str, rows: Rows) -> Any:
        array = np.asarray(rows)
        if array.dtype.kind not in "iu" and array.size:
            raise TypeError(f"rows must be integer row numbers, got {array.dtype}")
        if array.ndim == 0:
            return self._stored.items.column(name, [int(array)])[0]
        if array.ndim > 2:
            raise ValueError(f"rows must be one row number, a 1-D or a 2-D array; got shape {array.shape}")
        values = self._stored.items.column(name, [int(row) for row in array.reshape(-1)])
        if array.ndim == 1:
            return values
        width = array.shape[1]
        return [values[start : start + width] for start in range(0, len(values), width)]

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        array = np.asarray(queries)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"queries must be a float array [Q, D], got dtype {array.dtype}")
        array = array.astype(np.float32)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"queries must be [Q, D] with Q >= 1, got shape {tuple(np.shape(queries))}")
        if len(self) == 0:
            raise CollectionError(f"{self.path}: the collection is empty (no item was embedded)")
        if array.shape[1] != self.dim:
            raise ValueError(
                f"queries are {array.shape[1]}-dimensional, the collection holds {self.dim}-dimensional "
                f"features of {self.model!r}: encode the queries with that model"
            )
        if not np.isfinite(array).all():
            bad = int(np.nonzero(~np.isfinite(array).all(axis=1))[0][0])
            raise ValueError(f"query {bad} holds NaN or infinite values")
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if not (norms > 0).all():
            bad = int(np.nonzero(norms[:, 0] == 0)[0][0])
            raise ValueError(f"query {bad} is all zeros: it has no direction to compare")
        return array / norms

    def _k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return min(int(k), len(self))


def from_arrays(
    path: PathLike,
    features: Union[np.ndarray, Sequence[np.ndarray]],
    paths: Sequence[str],
    *,
    captions: Optional[Sequence[Optional[str]]] = None,
    model: Optional[str] = None,
    dtype: str = "float16",
    shard_size: int = 8192,
    progress: bool = True,
) -> Collection:
    """Write a collection at `path` (a new folder) from vectors computed elsewhere, and open it.

    `features`: ``[N, D]`` (any float dtype; a memory-mapped ``np.load(..., mmap_mode="r")`` is read
    a shard at a time), or a list of such arrays taken in order, e.g. clip-retrieval's
    ``img_emb/img_emb_0.npy, ...``. Rows are L2-normalised on the way in, with a warning when they
    were not already unit length. `paths` (and `captions`, optional): one per row. `model`: the
    released name or checkpoint the features come from (recorded with its SHA256, so that
    ``clip search`` encodes queries with it); None records none. Stored as `dtype` (float16 or
    float32), `shard_size` rows per ``.npy`` shard.

    Raises ValueError for mismatched counts, a NaN/inf or all-zero row (named), an unknown model;
    CollectionError when `path` exists. The folder is built beside `path` and renamed into place:
    nothing is left half-written.
    """
    from . import __version__
    from ._collection.runs import write_arrays

    target = Path(os.fspath(path))
    write_arrays(target, features, paths, captions, model, __version__, dtype, shard_size, progress)
    return open(target)


def build_index(
    path: PathLike,
    *,
    kind: str = "auto",
    max_memory: Union[int, str, None] = None,
    target_recall: float = 0.95,
    progress: bool = True,
    seed: int = 0,
) -> Dict[str, Any]:
    """Build the faiss index of the collection at `path`, tuned so that recall@10 against exact
    search reaches `target_recall`; return its record (also in ``index.json``).

    `kind`: ``"auto"`` (exact ``flat`` below 100,000 rows, else ``ivf``; ``ivfpq`` when the float16
    rows do not fit `max_memory`), ``"flat"``, ``"ivf"``, ``"hnsw"`` or ``"ivfpq"``. `max_memory`:
    bytes or a size like ``"4G"`` the index may hold (None: no limit). Held-out rows are searched
    exactly and through the index, as text-like queries (the captions' features, or image rows moved
    off the image cone) and as image queries; the smallest ``nprobe`` / ``efSearch`` reaching the
    target on both is kept, and the measured recalls are in the record's ``recall_at_10``.

    The record lists the shards (sizes, times, SHA256) and the model's SHA256: a collection that
    changes afterwards is refused by :meth:`Collection.search` until the index is rebuilt. A format
    1 or 2 collection is upgraded to format 3 first (its items moved into ``metadata.sqlite``).
    Needs faiss (``pip install "clip-faithful[index]"``); uses faiss's GPUs when it has any.
    """
    from ._collection.index import build, import_faiss
    from ._collection.runs import upgrade

    import_faiss()
    folder = Path(os.fspath(path))
    upgrade(folder)
    stored = Stored(folder)
    try:
        return build(stored, kind, max_memory, target_recall, progress, seed)
    finally:
        stored.close()


def near_duplicates(
    collection: Union[PathLike, Collection],
    threshold: float = 0.95,
    *,
    exact: bool = False,
    neighbours: int = 16,
    progress: bool = True,
) -> List[List[int]]:
    """Groups of near-identical items: rows whose cosine similarity is at least `threshold`, joined
    transitively (connected components), each group sorted, groups ordered by their first row.

    With an index (and not `exact`), each row's `neighbours` nearest rows through the index are
    compared (a group larger than that is still found whole when its members link up); otherwise
    every pair is compared, in blocks (quadratic: meant for collections without an index, up to
    ~100,000 rows). Keep the first row of each group to deduplicate.
    """
    from ._collection.dedup import groups

    found = collection if isinstance(collection, Collection) else open(collection)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise ValueError(f"neighbours must be a positive int, got {neighbours!r}")
    index = None if exact else found._index
    if index is not None:
        found.check_index()
    return groups(found._stored, index, threshold, neighbours, progress)


def open(path: PathLike) -> Collection:  # noqa: A001 (clip.collection.open, as io.open / gzip.open)
    """Open the collection in the folder `path` (the OUT of ``clip embed``, or :func:`from_arrays`).

    Reads ``manifest.json`` only: the shards are memory-mapped and the item table opened when first
    used, so opening takes milliseconds at any size. Raises CollectionError when `path` is not a
    finished collection of a format this clip reads, saying what to do.
    """
    return Collection(Stored(Path(os.fspath(path))))
