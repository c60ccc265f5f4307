"""Writing a collection: what a run is, its shards, and the manifest with its item table.

``clip embed`` records the run (:class:`RunInfo`) in ``run.json`` first, writes shards as they are
done (:func:`write_shard`) and gathers them last (:func:`write_manifest`); ``from_arrays`` writes
the same files from vectors computed elsewhere (:func:`write_arrays`); :func:`upgrade` rewrites a
format 1 or 2 folder as format 3 (the item table moved into SQLite; shards untouched).
"""

import csv
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .._atomic import directory_mode, replacing
from .layout import (
    ERRORS_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    METADATA_FILE,
    RUN_FILE,
    TEMP_PREFIX,
    CollectionError,
    shard_name,
    write_json,
)
from .metadata import write_items
from .reading import Stored

__all__ = [
    "Item",
    "RunInfo",
    "RUN_SETTINGS",
    "DEFAULT_SHARD_SIZE",
    "items_digest",
    "released",
    "model_name",
    "model_sha256",
    "shard_done",
    "write_shard",
    "write_manifest",
    "write_arrays",
    "upgrade",
]

DEFAULT_SHARD_SIZE = 8192
UNIT_TOLERANCE = 1e-3  # a row whose length is further than this from 1 is normalised with a warning


@dataclass(frozen=True)
class Item:
    """One thing to embed: an image path, a caption when the source has captions, and for a sample
    of a webdataset ``.tar``: the tar, the sample's key, where its image member's bytes lie in the
    tar (offset, size), its ``.json`` (as text), and what is wrong with it when listing the tar
    already showed it (a truncated member, no image)."""

    path: str
    caption: Optional[str] = None
    tar: Optional[str] = None
    key: Optional[str] = None
    offset: Optional[int] = None
    size: Optional[int] = None
    meta: Optional[str] = None
    problem: Optional[str] = None  # why the sample cannot be read, when known from listing it


def items_digest(items: Sequence[Item]) -> str:
    """A SHA256 of the items' paths and captions: a rerun over another list is another run."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps([item.path, item.caption]).encode())
    return h.hexdigest()


def released(model: str) -> bool:
    """Whether `model` is the name of a released model."""
    from ..clip import _MODELS

    return model in _MODELS


def model_name(model: str) -> str:
    """`model` as a collection records it: a released name as is, a path made absolute (so that it is
    found from any folder)."""
    return model if released(model) else os.path.abspath(model)


def model_sha256(model: str) -> Optional[str]:
    """What identifies `model` by content: a released name's release SHA256, a checkpoint file's
    SHA256, or for a model directory the SHA256 of its weight files; None when `model` is none of
    these. A file is read once, in chunks, never whole."""
    from .._weights.download import hash_into
    from .._weights.formats import DIRECTORY_WEIGHT_FILES
    from .._weights.registry import released as released_entry

    entry = released_entry(model)
    if entry is not None:
        return entry.sha256
    directory = os.path.isdir(model)
    if directory:
        files = [os.path.join(model, name) for name in DIRECTORY_WEIGHT_FILES]
        files = [name for name in files if os.path.isfile(name)]
    elif os.path.isfile(model):
        files = [model]
    else:
        return None
    hasher = hashlib.sha256()
    try:
        for name in files:
            if directory:  # which file holds which bytes counts too
                hasher.update(os.path.basename(name).encode() + b"\0")
            with open(name, "rb") as handle:
                hash_into(hasher, handle)
    except OSError:
        return None  # unreadable: loading it says why
    return hasher.hexdigest()


@dataclass(frozen=True)
class RunInfo:
    """What a run is; a rerun into the same folder must be the same run."""

    model: Optional[str]
    clip_version: str
    dtype: str
    shard_size: int
    n_items: int
    items_sha256: str
    captions: bool
    model_sha256: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT_VERSION, **self.__dict__}


# What must be equal for a rerun to resume (the model is compared by content, apart).
RUN_SETTINGS = ("clip_version", "dtype", "shard_size", "n_items", "items_sha256", "captions")


def shard_done(out: Path, shard: int) -> bool:
    """Whether shard `shard` of the run in `out` is written (its ``.json`` exists)."""
    return (out / shard_name("shard", shard, ".json")).is_file()


def _save(path: Path, array: np.ndarray) -> None:
    with replacing(path, TEMP_PREFIX) as temp, open(temp, "wb") as handle:
        np.save(handle, array)


def write_shard(
    out: Path,
    shard: int,
    rows: List[int],
    image_features: np.ndarray,
    text_features: Optional[np.ndarray],
    errors: List[Tuple[int, str]],
    rank: int = 0,
) -> None:
    """Write shard `shard`: its feature files, then its ``.json`` (rows = item indices, in order;
    errors = (item index, reason); `rank`: the torch.distributed rank that computed it)."""
    _save(out / shard_name("images", shard, ".npy"), image_features)
    if text_features is not None:
        _save(out / shard_name("texts", shard, ".npy"), text_features)
    write_json(out / shard_name("shard", shard, ".json"), {"rows": rows, "errors": errors, "rank": rank})


def _shard_entry(out: Path, shard: int, rows: int) -> Dict[str, Any]:
    texts = shard_name("texts", shard, ".npy")  # the captions' features, when they were computed
    return {
        "images": shard_name("images", shard, ".npy"),
        "texts": texts if (out / texts).is_file() else None,
        "rows": rows,
    }


def _write_errors(out: Path, failures: Sequence[Tuple[str, ...]], header: Sequence[str]) -> None:
    # surrogateescape: a file name that is not valid UTF-8 is written as its own bytes
    with (
        replacing(out / ERRORS_FILE, TEMP_PREFIX) as temp,
        open(temp, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle,
    ):
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(failures)


def _dim_of(out: Path, shards: List[Dict[str, Any]]) -> int:
    for entry in shards:
        if entry["rows"]:
            return int(np.load(out / entry["images"], mmap_mode="r").shape[1])
    return 0


def write_manifest(
    out: Path, run: RunInfo, items: Sequence[Item], bounds: Sequence[Tuple[int, int]]
) -> Tuple[int, int]:
    """Gather the shards' ``.json`` into ``metadata.sqlite``, ``errors.tsv`` and last
    ``manifest.json`` (which marks the collection finished); (embedded, failed).

    `bounds`: the item range ``[start, stop)`` of each shard."""
    records = [
        json.loads((out / shard_name("shard", shard, ".json")).read_text(encoding="utf-8"))
        for shard in range(len(bounds))
    ]
    tars = any(item.tar is not None for item in items)

    def table() -> Iterator[Tuple[Any, ...]]:
        for shard, record in enumerate(records):
            for row, index in enumerate(record["rows"]):
                item = items[index]
                caption = item.caption if run.captions else None
                yield (item.path, caption, shard, row, item.tar, item.key, item.meta)

    embedded = write_items(out / METADATA_FILE, table())
    failures: List[Tuple[str, ...]] = []
    for record in records:
        for index, reason in record["errors"]:
            item = items[index]
            failures.append((item.tar or "", item.key or "", reason) if tars else (item.path, reason))
    _write_errors(out, failures, ["tar", "key", "reason"] if tars else ["path", "reason"])
    shards = [_shard_entry(out, shard, len(record["rows"])) for shard, record in enumerate(records)]
    manifest = {
        **run.as_dict(),
        "shards": shards,
        "rows": embedded,
        "dim": _dim_of(out, shards),
        "metadata": METADATA_FILE,
    }
    write_json(out / MANIFEST_FILE, manifest)
    return embedded, len(failures)


def upgrade(folder: Path) -> bool:
    """Rewrite a format 1 or 2 collection as format 3: its items into ``metadata.sqlite``, then the
    manifest without them (the shards are kept as they are). False when it is format 3 already."""
    stored = Stored(folder)
    if stored.format >= FORMAT_VERSION:
        return False
    entries = stored.manifest["items"]
    write_items(
        folder / METADATA_FILE,
        ((e["path"], e.get("caption"), e["shard"], e["row"], None, None, None) for e in entries),
    )
    manifest = {key: value for key, value in stored.manifest.items() if key != "items"}
    manifest.update(format=FORMAT_VERSION, rows=len(entries), dim=stored.dim, metadata=METADATA_FILE)
    manifest["upgraded_from"] = stored.format
    write_json(folder / MANIFEST_FILE, manifest)
    return True


def _checked_rows(block: np.ndarray, first: int) -> Tuple[np.ndarray, int]:
    """`block` as unit-length float32 rows, and how many were not unit length; a ValueError naming
    the first row that is NaN/inf or all zeros."""
    block = np.asarray(block, dtype=np.float32)
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        bad = first + int(np.nonzero(~finite)[0][0])
        raise ValueError(f"features row {bad} holds NaN or infinite values; drop or recompute it")
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    if not (norms > 0).all():
        bad = first + int(np.nonzero(norms[:, 0] == 0)[0][0])
        raise ValueError(f"features row {bad} is all zeros: it has no direction to search by; drop it")
    off = int((np.abs(norms[:, 0] - 1) > UNIT_TOLERANCE).sum())
    return block / norms, off


def _parts(features: Any) -> List[Any]:
    if isinstance(features, (list, tuple)):
        parts = list(features)
    else:
        parts = [features]
    for number, part in enumerate(parts):
        shape = np.shape(part)
        if len(shape) != 2:
            where = f" (part {number})" if len(parts) > 1 else ""
            raise ValueError(f"features must be [N, D] arrays, got shape {shape}{where}")
    dims = {np.shape(part)[1] for part in parts}
    if len(dims) > 1:
        raise ValueError(f"the feature arrays have different widths: {sorted(dims)}")
    return parts


def _shard_blocks(parts: List[Any], shard_size: int) -> Iterator[Tuple[np.ndarray, int]]:
    """The rows of `parts` in order, checked and normalised, `shard_size` at a time (the last fewer),
    each with how many of its rows were not unit length."""
    pending: List[np.ndarray] = []
    waiting, off, row = 0, 0, 0
    for part in parts:
        for start in range(0, np.shape(part)[0], shard_size):
            block, bad = _checked_rows(part[start : start + shard_size], row)
            row += len(block)
            pending.append(block)
            waiting, off = waiting + len(block), off + bad
            while waiting >= shard_size:
                joined = np.concatenate(pending)
                yield joined[:shard_size], off
                pending, waiting, off = [joined[shard_size:]], waiting - shard_size, 0
    if waiting:
        yield np.concatenate(pending), off


def write_arrays(
    path: Path,
    features: Any,
    paths: Sequence[str],
    captions: Optional[Sequence[Optional[str]]],
    model: Optional[str],
    clip_version: str,
    dtype: str,
    shard_size: int,
    progress: bool,
) -> int:
    """Write a whole collection at `path` (a new folder) from `features` (an ``[N, D]`` array or a
    list of them, in order); built in a temporary folder beside it and renamed into place."""
    from tqdm import tqdm

    parts = _parts(features)
    total = sum(np.shape(part)[0] for part in parts)
    if len(paths) != total:
        raise ValueError(f"{total} feature rows but {len(paths)} paths: give one path per row")
    if captions is not None and len(captions) != total:
        raise ValueError(f"{total} feature rows but {len(captions)} captions: give one caption per row")
    if total == 0:
        raise ValueError("no feature rows: a collection needs at least one")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if os.path.lexists(path):
        raise CollectionError(f"{path} already exists; write the collection to a new folder")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise CollectionError(f"{parent}: no such folder; create it first")
    digest = None
    if model is not None:
        digest = model_sha256(model)
        if digest is None:
            raise ValueError(
                f"model {model!r} is neither a released model name nor an existing checkpoint; pass the "
                "model the features were computed with (or None)"
            )
        model = model_name(model)
    items = [Item(str(p), None if captions is None else captions[i]) for i, p in enumerate(paths)]
    run = RunInfo(
        model=model,
        clip_version=clip_version,
        dtype=dtype,
        shard_size=shard_size,
        n_items=total,
        items_sha256=items_digest(items),
        captions=captions is not None,
        model_sha256=digest,
    )
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_PREFIX}", dir=parent))
    try:
        write_json(temp / RUN_FILE, run.as_dict())
        bounds: List[Tuple[int, int]] = []
        off = 0
        with tqdm(total=total, unit="row", desc="writing", disable=not progress) as bar:
            for shard, (block, bad) in enumerate(_shard_blocks(parts, shard_size)):
                first = bounds[-1][1] if bounds else 0
                bounds.append((first, first + len(block)))
                write_shard(temp, shard, list(range(*bounds[-1])), block.astype(dtype), None, [])
                off += bad
                bar.update(len(block))
        if off:
            warnings.warn(
                f"{off} of {total} feature rows were not unit length; they were L2-normalised (cosine "
                "search needs unit-length rows)",
                stacklevel=3,
            )
        write_manifest(temp, run, items, bounds)
        os.chmod(temp, directory_mode())
        os.rename(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return total
