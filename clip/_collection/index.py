"""The faiss index of a collection: building it, tuning it against exact search, checking it is fresh.

``index.json`` records what the index is (kind, faiss file, search parameters), the recall@10 it was
measured at, and what it was built from: the row count, the width, the model's SHA256, and every
image shard's name, size, modification time and SHA256. A search first compares those with the
folder (sizes and times; a shard whose time changed is hashed again): a collection that changed
under its index is refused, never searched with it.

Kinds (faiss, inner product on unit-length rows = cosine):

* ``flat``: every row, exact (``IndexFlatIP``); what ``auto`` picks below 100,000 rows;
* ``ivf``: an inverted file over k-means cells, rows stored as float16 (``IndexIVFScalarQuantizer``,
  lossless for float16 shards); ``nprobe`` cells searched; ``auto`` above 100,000 rows;
* ``hnsw``: a graph (``IndexHNSWFlat``, M=32); ``efSearch`` candidates;
* ``ivfpq``: product-quantised codes (64 bytes a row at D=512), for collections whose float16 rows do
  not fit ``max_memory``; its candidates are re-scored exactly from the shards.

Tuning: held-out rows (not among those k-means trained on) are searched exactly and through the
index; the smallest ``nprobe`` / ``efSearch`` (and for ivfpq, candidate count) whose recall@10 is at
least the target on text-like queries and on image queries is kept. Text-like queries are the
captions' features when the collection has them; otherwise held-out image rows moved out of the
image cone by one fixed random direction plus noise (CLIP's text features sit in a cone of their
own, and an index tuned on image queries alone is too optimistic for them).
"""

import hashlib
import logging
import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .layout import INDEX_FILE, TEMP_PREFIX, CollectionError, short_digest, write_json
from .reading import Stored, exact_search, sort_results

__all__ = [
    "KINDS",
    "EXACT_BELOW",
    "RECALL_K",
    "import_faiss",
    "parse_memory",
    "build",
    "Index",
    "open_index",
]

logger = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
INDEX_FORMAT = 1
EXACT_BELOW = 100_000  # auto: an exact (flat) index below this many rows
RECALL_K = 10
TUNE_QUERIES = 400  # per query set (text-like, image)
TRAIN_PER_CELL = 40  # k-means training rows per IVF cell (faiss warns below 39)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
PQ_BYTES_PER_DIM = 8  # ivfpq: one byte of code per 8 dimensions
ADD_CHUNK = 65536
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)
PQ_FACTORS = (2, 4, 8, 16, 32)  # ivfpq: candidates per wanted result, re-scored exactly
SYNTHETIC_GAP = 1.25  # text-like queries: the gap direction's weight against the (unit) image row
SYNTHETIC_NOISE = 1.5  # ... and the noise's (best cosines ~0.45: harder than near-copies of rows)
FAISS_EXTRA = 'pip install "clip-faithful[index]"'
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def import_faiss() -> Any:
    """faiss, or an ImportError naming the extra that installs it."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(f"a faiss index needs faiss: {FAISS_EXTRA} (installs faiss-cpu)") from exc
    return faiss


def parse_memory(value: Any) -> Optional[int]:
    """Bytes from ``4G``, ``512M``, ``1.5GB`` or an int (None: no limit)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    else:
        match = _MEMORY.match(str(value))
        if match is None:
            raise ValueError(f"max_memory {value!r}: give bytes, or a size such as 4G, 512M")
        power = " kmgt".index(match.group(2).lower() or " ")
        number = int(float(match.group(1)) * 1024**power)
    if number <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return number


def _hash(path: Path) -> str:
    from .._weights.download import hash_into

    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        hash_into(hasher, handle)
    return hasher.hexdigest()


def _fingerprint(stored: Stored) -> List[Dict[str, Any]]:
    shards = []
    for entry in stored.shards:
        path = stored.folder / entry["images"]
        stat = path.stat()
        shards.append(
            {
                "name": entry["images"],
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": _hash(path),
            }
        )
    return shards


def _estimate(kind: str, rows: int, dim: int) -> int:
    """Bytes the index of `kind` holds in memory (roughly)."""
    per_row = {"flat": 4 * dim, "ivf": 2 * dim + 8, "hnsw": 4 * dim + 2 * HNSW_M * 4 + 8}
    per_row["ivfpq"] = _pq_bytes(dim) + 8
    return rows * per_row[kind]


def _pq_bytes(dim: int) -> int:
    wanted = max(1, dim // PQ_BYTES_PER_DIM)
    return max(m for m in range(1, wanted + 1) if dim % m == 0)


def _choose(kind: str, rows: int, dim: int, max_memory: Optional[int]) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "auto":
        order = ["flat", "ivf", "ivfpq"] if rows < EXACT_BELOW else ["ivf", "ivfpq"]
        for candidate in order:
            if max_memory is None or _estimate(candidate, rows, dim) <= max_memory:
                return candidate
        kind = "ivfpq"
    if max_memory is not None and _estimate(kind, rows, dim) > max_memory:
        need = _estimate(kind, rows, dim) / 2**30
        raise CollectionError(
            f"a {kind} index of {rows} rows x {dim} needs about {need:.2f} GiB, more than max_memory "
            f"({max_memory / 2**30:.2f} GiB); allow more memory or choose kind='ivfpq' (or auto)"
        )
    return kind


def _cells(rows: int) -> int:
    return int(min(65536, max(1, round(4 * math.sqrt(rows)), 1)))


def _sample(
    rows: int, count: int, rng: np.random.Generator, exclude: Optional[np.ndarray] = None
) -> np.ndarray:
    pool = np.arange(rows) if exclude is None else np.setdiff1d(np.arange(rows), exclude)
    if len(pool) == 0:
        pool = np.arange(rows)
    return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False))


def _make(faiss: Any, kind: str, dim: int, rows: int) -> Tuple[Any, int]:
    """An empty index of `kind` (and its IVF cell count, 0 for others)."""
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dim), 0
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, metric)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index, 0
    cells = min(_cells(rows), max(1, rows // TRAIN_PER_CELL))
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, cells, faiss.ScalarQuantizer.QT_fp16, metric)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, cells, _pq_bytes(dim), 8, metric)
    return index, cells  # faiss's Python wrapper keeps the quantizer alive with the index


def _on_gpu(faiss: Any, index: Any, kind: str) -> Any:
    """`index` on every GPU when faiss has GPUs (a GPU build of faiss) and the kind runs there, to
    train and fill it; else `index` itself. It is searched on the CPU, as it is saved."""
    try:
        if kind == "hnsw" or not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() < 1:
            return index
        return faiss.index_cpu_to_all_gpus(index)
    except (AttributeError, RuntimeError) as exc:  # a kind or setting the GPU build does not take
        logger.info("faiss GPU not used: %s", exc)
        return index


def _text_like(stored: Stored, rows: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    """Text-like tuning queries: the captions' features at `rows`, or image rows moved off the cone."""
    if stored.has("texts"):
        return stored.gather(rows, "texts"), "captions"
    images = stored.gather(rows)
    axis = images.mean(axis=0)
    axis /= np.linalg.norm(axis)
    gap = rng.standard_normal(images.shape[1]).astype(np.float32)
    gap -= (gap @ axis) * axis
    gap /= np.linalg.norm(gap)
    noise = rng.standard_normal(images.shape).astype(np.float32) / np.sqrt(images.shape[1])
    queries = images + SYNTHETIC_GAP * gap + SYNTHETIC_NOISE * noise
    return queries / np.linalg.norm(
        queries, axis=1, keepdims=True
    ), "synthetic (image rows moved off the cone)"


def _recall(found: np.ndarray, truth: np.ndarray, selves: Optional[np.ndarray]) -> float:
    hits = 0
    for number, (got, want) in enumerate(zip(found, truth)):
        if selves is not None:
            got = [row for row in got if row != selves[number]][:RECALL_K]
            want = [row for row in want if row != selves[number]][:RECALL_K]
        else:
            got, want = got[:RECALL_K], want[:RECALL_K]
        hits += len(set(np.asarray(got).tolist()) & set(np.asarray(want).tolist())) / max(1, len(want))
    return hits / len(found)


class Index:
    """A built index, opened: its record (``info``), the faiss index (read on first search)."""

    def __init__(self, stored: Stored, info: Dict[str, Any]) -> None:
        self.stored, self.info = stored, info
        self._faiss_index: Any = None
        self._fresh: Optional[bool] = None

    def problem(self) -> Optional[str]:
        """Why the index may not be used for this collection now (None: it is fresh)."""
        info, stored = self.info, self.stored
        if info.get("model_sha256") != stored.manifest.get("model_sha256"):
            before = info.get("model_sha256")
            return (
                f"the index was built with another model ({info.get('model')!r}, "
                f"{short_digest(before) if before else 'no SHA256'}) than the collection's "
                f"({stored.manifest.get('model')!r})"
            )
        if info.get("rows") != stored.rows or info.get("dim") != stored.dim:
            return (
                f"the index covers {info.get('rows')} rows x {info.get('dim')}, the collection has "
                f"{stored.rows} x {stored.dim}"
            )
        recorded = info.get("shards", [])
        if [shard["name"] for shard in recorded] != [entry["images"] for entry in stored.shards]:
            return "the collection's shards are not those the index was built from"
        for shard in recorded:
            path = stored.folder / shard["name"]
            try:
                stat = path.stat()
            except OSError:
                return f"{shard['name']} is missing"
            if stat.st_size != shard["size"]:
                return f"{shard['name']} changed since the index was built"
            if stat.st_mtime_ns != shard["mtime_ns"] and _hash(path) != shard["sha256"]:
                return f"{shard['name']} changed since the index was built"
        return None

    def check(self) -> None:
        """Raise a CollectionError when the index may not be used (see :meth:`problem`)."""
        if self._fresh:
            return
        problem = self.problem()
        if problem is not None:
            folder = self.stored.folder
            raise CollectionError(
                f"{folder}: the index is stale: {problem}. Rebuild it (clip index {folder}, or "
                "clip.collection.build_index) or search every row (--exact, or exact=True)"
            )
        self._fresh = True

    def _loaded(self) -> Any:
        if self._faiss_index is None:
            faiss = import_faiss()
            path = self.stored.folder / self.info["file"]
            try:
                index = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise CollectionError(
                    f"{path} cannot be read as a faiss index ({str(exc).splitlines()[0]}); rebuild it with "
                    f"clip index {self.stored.folder}"
                ) from exc
            self._faiss_index = index
        return self._faiss_index

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, rows) ``[Q, k]`` through the index, re-scored exactly from the shards."""
        self.check()
        return _search(self._loaded(), self.info["kind"], self.info["params"], self.stored, queries, k)


def _configure(index: Any, kind: str, params: Dict[str, int], candidates: int) -> None:
    if kind in ("ivf", "ivfpq"):
        index.nprobe = params["nprobe"]
    elif kind == "hnsw":
        index.hnsw.efSearch = max(params["efSearch"], candidates)


def _search(
    index: Any,
    kind: str,
    params: Dict[str, int],
    stored: Stored,
    queries: np.ndarray,
    k: int,
    fallback: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """(scores, rows) ``[Q, k]`` through `index`, candidates re-scored exactly from the shards. A
    query for which the index finds fewer than `k` rows (tiny cells, few probes) is scanned instead
    when `fallback`, else its missing places are row -1 (as the tuning counts them: misses)."""
    candidates = min(stored.rows, k * params.get("factor", 1))
    _configure(index, kind, params, candidates)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), candidates)
    found = found.astype(np.int64)
    valid = found >= 0
    unique, where = np.unique(np.where(valid, found, 0), return_inverse=True)
    vectors = stored.gather(unique)  # [U, D]
    scores = np.einsum("qd,qcd->qc", queries, vectors[where.reshape(found.shape)]).astype(np.float32)
    scores[~valid] = -np.inf
    scores, rows = sort_results(scores, np.where(valid, found, np.iinfo(np.int64).max))
    scores, rows = scores[:, :k], rows[:, :k]
    short = ~np.isfinite(scores).all(axis=1)
    rows[~np.isfinite(scores)] = -1
    if fallback and short.any():
        scores[short], rows[short] = exact_search(stored, queries[short], k)
    return scores, rows


def _tune(
    index: Any, kind: str, cells: int, stored: Stored, sets: Dict[str, Tuple[np.ndarray, Any]], target: float
) -> Tuple[Dict[str, int], Dict[str, float]]:
    """The cheapest parameters whose recall@10 reaches `target` on every query set, and the recalls."""
    k = min(RECALL_K + 1, stored.rows)
    truths = {name: exact_search(stored, queries, k)[1] for name, (queries, _) in sets.items()}
    if kind == "flat":
        grid: List[Dict[str, int]] = [{}]
    elif kind == "hnsw":
        grid = [{"efSearch": ef} for ef in EF_SEARCHES]
    else:
        probes = [p for p in NPROBES if p < cells] + [cells]
        factors = PQ_FACTORS if kind == "ivfpq" else (1,)
        grid = [{"nprobe": p, "factor": f} for f in factors for p in probes]
        grid.sort(key=lambda params: params["nprobe"] * params["factor"] ** 0.5)
    best: Tuple[Dict[str, int], Dict[str, float]] = ({}, {})
    for params in grid:
        recalls = {}
        for name, (queries, selves) in sets.items():
            rows = _search(index, kind, params, stored, queries, k, fallback=False)[1]
            recalls[name] = round(_recall(rows, truths[name], selves), 4)
        if not best[1] or min(recalls.values()) > min(best[1].values()):
            best = (params, recalls)
        if min(recalls.values()) >= target:
            return params, recalls
    return best


def build(
    stored: Stored, kind: str, max_memory: Any, target: float, progress: bool, seed: int
) -> Dict[str, Any]:
    """Build, tune and write the index of `stored`; its record (also written to index.json)."""
    from tqdm import tqdm

    from .. import __version__

    faiss = import_faiss()
    if not 0 < target <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target}")
    if stored.rows == 0:
        raise CollectionError(f"{stored.folder}: the collection is empty; there is nothing to index")
    started = time.perf_counter()
    rows, dim = stored.rows, stored.dim
    kind = _choose(kind, rows, dim, parse_memory(max_memory))
    rng = np.random.default_rng(seed)
    shards = _fingerprint(stored)
    index, cells = _make(faiss, kind, dim, rows)
    trained = np.empty(0, dtype=np.int64)
    building = _on_gpu(faiss, index, kind)
    if not building.is_trained:
        trained = _sample(rows, cells * TRAIN_PER_CELL, rng)
        building.train(stored.gather(trained))
    with tqdm(total=rows, unit="row", desc=f"indexing ({kind})", disable=not progress) as bar:
        for _, block in stored.blocks(chunk=ADD_CHUNK):
            building.add(block)
            bar.update(len(block))
    if building is not index:
        index = faiss.index_gpu_to_cpu(building)
    held_out = _sample(rows, TUNE_QUERIES, rng, exclude=trained)
    text_queries, text_source = _text_like(stored, held_out, rng)
    sets = {"text": (text_queries, None), "image": (stored.gather(held_out), held_out)}
    params, recalls = _tune(index, kind, cells, stored, sets, target)
    name = f"index-{uuid.uuid4().hex[:12]}.faiss"
    from .._atomic import replacing

    with replacing(stored.folder / name, TEMP_PREFIX) as temp:
        faiss.write_index(index, temp)
    info = {
        "format": INDEX_FORMAT,
        "kind": kind,
        "file": name,
        "cells": cells,
        "params": params,
        "recall_at_10": recalls,
        "target_recall": target,
        "text_queries": text_source,
        "tuning_queries": len(held_out),
        "rows": rows,
        "dim": dim,
        "model": stored.manifest.get("model"),
        "model_sha256": stored.manifest.get("model_sha256"),
        "shards": shards,
        "bytes": os.path.getsize(stored.folder / name),
        "seconds": round(time.perf_counter() - started, 2),
        "clip_version": __version__,
        "faiss_version": getattr(faiss, "__version__", None),
    }
    try:
        write_json(stored.folder / INDEX_FILE, info)
    except BaseException:  # the record was not replaced: the new file would be an orphan
        os.remove(stored.folder / name)
        raise
    for other in os.listdir(stored.folder):  # the index this one replaces
        if other.startswith("index-") and other.endswith(".faiss") and other != name:
            os.remove(stored.folder / other)
    return info


def open_index(stored: Stored) -> Optional[Index]:
    """The index of `stored`, or None when it has none."""
    path = stored.folder / INDEX_FILE
    if not path.is_file():
        return None
    import json

    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path} cannot be read ({exc}); rebuild the index with clip index") from exc
    if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT or info.get("kind") not in KINDS:
        raise CollectionError(f"{path}: not an index record this clip reads; rebuild it with clip index")
    return Index(stored, info)
