"""Embedded collections on disk: what `clip embed` writes and `clip search` reads.

An OUT folder holds

* ``run.json``: what the run is (model, clip version, storage dtype, shard size, how many items
  and a digest of their list), written before the first shard; a rerun must match it;
* per shard ``i``: ``images-{i:05d}.npy`` (L2-normalised image features, ``[rows, D]``), with a
  caption column also ``texts-{i:05d}.npy`` (the captions' features, the same rows), and last
  ``shard-{i:05d}.json`` (which items are its rows and which failed, and why): a shard is done
  when its ``.json`` exists;
* ``manifest.json`` (one entry per embedded item: path, caption, shard, row; the model, the clip
  version) and ``errors.tsv`` (path, reason), written once every shard is done.

Every file is written to a temporary file in OUT and renamed into place, so an interrupted run
leaves whole files only, and a rerun redoes just the shards without their ``.json``.
"""

import csv
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .common import UsageError

__all__ = [
    "CollectionError",
    "Item",
    "discover",
    "RunInfo",
    "prepare_out",
    "shard_done",
    "write_shard",
    "write_manifest",
    "read_manifest",
    "top_k",
]

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.tsv"
TEMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1
DEFAULT_PATH_COLUMN = "path"
DEFAULT_CAPTION_COLUMN = "caption"
SEARCH_CHUNK_ROWS = 65536  # rows of a memory-mapped shard scored at a time
SNIFF_BYTES = 16

# Leading bytes of the image formats Pillow reads that cameras, phones and the web produce.
_MAGIC: Tuple[Tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),  # PNG
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"BM"),  # BMP
    (0, b"II*\x00"),  # TIFF, little-endian
    (0, b"MM\x00*"),  # TIFF, big-endian
    (8, b"WEBP"),  # RIFF....WEBP
)
# Names that promise an image: such a file is listed even when its content is not one (and then
# reported in errors.tsv), rather than silently left out.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


class CollectionError(UsageError):
    """Bad input for a collection command, with what to do about it (exit status 2)."""


@dataclass(frozen=True)
class Item:
    """One thing to embed: an image path, and a caption when the source has a caption column."""

    path: str
    caption: Optional[str] = None


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return False
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _MAGIC)


def discover(
    src: str, path_column: str = DEFAULT_PATH_COLUMN, caption_column: Optional[str] = None
) -> Tuple[List[Item], bool]:
    """The items of `src` in a fixed order, and whether they carry captions.

    A folder: every image file under it (recursively, by content or image suffix), sorted by path. A
    ``.csv`` / ``.tsv`` file: one item per row, from `path_column` (paths relative to the file's
    folder) and `caption_column` (default: a ``caption`` column if there is one).
    """
    root = Path(src)
    if root.is_dir():
        paths = sorted(
            str(Path(folder) / name)
            for folder, _, names in os.walk(root)
            for name in names
            if _looks_like_image(Path(folder) / name)
        )
        if not paths:
            raise CollectionError(f"{src}: no image files in this folder or below it")
        return [Item(path) for path in paths], False
    if root.is_file():
        return _read_table(root, path_column, caption_column)
    raise CollectionError(f"{src}: no such folder or file; pass a folder of images or a CSV/TSV file")


def _read_table(table: Path, path_column: str, caption_column: Optional[str]) -> Tuple[List[Item], bool]:
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    if table.suffix.lower() not in (".csv", ".tsv"):
        raise CollectionError(f"{table}: not a folder, a .csv or a .tsv file")
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM is not part of a name
            reader = csv.DictReader(handle, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CollectionError(f"{table}: cannot be read as UTF-8 {table.suffix[1:].upper()}: {exc}") from exc
    if path_column not in columns:
        raise CollectionError(
            f"{table}: no column {path_column!r} (columns: {', '.join(map(repr, columns)) or 'none'}); "
            "name the column of image paths with --path-column"
        )
    if caption_column is not None and caption_column not in columns:
        raise CollectionError(
            f"{table}: no column {caption_column!r} (columns: {', '.join(map(repr, columns))}); "
            "name the caption column with --caption-column, or leave it out"
        )
    if caption_column is None and DEFAULT_CAPTION_COLUMN in columns:
        caption_column = DEFAULT_CAPTION_COLUMN
    items = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        value = (row.get(path_column) or "").strip()
        if not value:
            raise CollectionError(f"{table}, line {number}: the {path_column!r} column is empty")
        path = value if os.path.isabs(value) else str(table.parent / value)
        items.append(Item(path, (row.get(caption_column) or "") if caption_column else None))
    if not items:
        raise CollectionError(f"{table}: no rows below the header")
    return items, caption_column is not None


def items_digest(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps([item.path, item.caption]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class RunInfo:
    """What a run is; a rerun into the same OUT must be the same run."""

    model: str
    clip_version: str
    dtype: str
    shard_size: int
    n_items: int
    items_sha256: str
    captions: bool

    def as_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT_VERSION, **self.__dict__}


def shard_name(kind: str, shard: int, suffix: str) -> str:
    return f"{kind}-{shard:05d}{suffix}"


@contextmanager
def _atomic(path: Path) -> Iterator[str]:
    """A temporary file beside `path`, renamed to `path` when the block ends without an error."""
    handle, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def write_json(path: Path, value: Any) -> None:
    with _atomic(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(value, handle)


def check_out(out: Path, run: RunInfo) -> bool:
    """Whether `out` already holds this run (resume), after checking that it may be written.

    Raises CollectionError when `out` holds another run (another model's shards, another source,
    dtype or shard size), when it is a non-empty folder that no run made, or when it cannot be
    written. Creates nothing.
    """
    if out.exists() and not out.is_dir():
        raise CollectionError(f"-o {out}: exists and is not a folder")
    existing = out / RUN_FILE
    if existing.is_file():
        try:
            previous = json.loads(existing.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CollectionError(f"{existing} cannot be read ({exc}); use another OUT folder") from exc
        if previous.get("model") != run.model:
            raise CollectionError(
                f"-o {out} holds shards of model {previous.get('model')!r}, not {run.model!r}; "
                "use another OUT folder (or delete this one to start over)"
            )
        mismatched = [key for key, value in run.as_dict().items() if previous.get(key) != value]
        if mismatched:
            raise CollectionError(
                f"-o {out} holds a run with other settings ({', '.join(mismatched)} differ: the source "
                "changed, or another --dtype / --shard-size); use another OUT folder, or rerun with "
                "the same source and options to resume"
            )
        _check_writable(out)
        return True
    if out.is_dir() and any(not name.startswith(TEMP_PREFIX) for name in os.listdir(out)):
        raise CollectionError(
            f"-o {out}: a folder that is not empty and holds no embeddings; pick an empty or new one"
        )
    parent = out if out.is_dir() else _existing_parent(out)
    _check_writable(parent)
    return False


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def _check_writable(folder: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CollectionError(f"{folder}: not writable; choose an OUT folder you can write to")


def prepare_out(out: Path, run: RunInfo) -> None:
    """Create `out` and record the run in it (nothing else is written before the model is loaded)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(out):  # temporary files of an interrupted run
        if name.startswith(TEMP_PREFIX):
            os.remove(out / name)
    if not (out / RUN_FILE).is_file():
        write_json(out / RUN_FILE, run.as_dict())


def shard_done(out: Path, shard: int) -> bool:
    return (out / shard_name("shard", shard, ".json")).is_file()


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
    `rank`: the torch.distributed rank that computed it)."""
    with _atomic(out / shard_name("images", shard, ".npy")) as temp, open(temp, "wb") as handle:
        np.save(handle, image_features)
    if text_features is not None:
        with _atomic(out / shard_name("texts", shard, ".npy")) as temp, open(temp, "wb") as handle:
            np.save(handle, text_features)
    write_json(out / shard_name("shard", shard, ".json"), {"rows": rows, "errors": errors, "rank": rank})


def write_manifest(out: Path, run: RunInfo, items: Sequence[Item], n_shards: int) -> Tuple[int, int]:
    """Gather the shards' ``.json`` into ``manifest.json`` and ``errors.tsv``; (embedded, failed)."""
    entries, failures, shards = [], [], []
    for shard in range(n_shards):
        record = json.loads((out / shard_name("shard", shard, ".json")).read_text(encoding="utf-8"))
        for row, index in enumerate(record["rows"]):
            entry = {"path": items[index].path, "shard": shard, "row": row}
            if run.captions:
                entry["caption"] = items[index].caption
            entries.append(entry)
        failures.extend((items[index].path, reason) for index, reason in record["errors"])
        shards.append(
            {
                "images": shard_name("images", shard, ".npy"),
                "texts": shard_name("texts", shard, ".npy") if run.captions else None,
                "rows": len(record["rows"]),
            }
        )
    with _atomic(out / ERRORS_FILE) as temp, open(temp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows(failures)
    write_json(out / MANIFEST_FILE, {**run.as_dict(), "shards": shards, "items": entries})
    return len(entries), len(failures)


def read_manifest(out: Path) -> Dict[str, Any]:
    path = out / MANIFEST_FILE
    if not path.is_file():
        hint = (
            " (the run is unfinished: rerun clip embed to complete it)" if (out / RUN_FILE).is_file() else ""
        )
        raise CollectionError(f"{out}: no {MANIFEST_FILE}{hint}; pass the OUT folder of a clip embed run")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path} cannot be read: {exc}") from exc


def top_k(
    out: Path, manifest: Dict[str, Any], query: np.ndarray, k: int, kind: str = "images"
) -> List[Tuple[float, int]]:
    """The `k` best (cosine, item index) over the memory-mapped shards of `kind`, best first.

    `query` is a unit-length float32 vector; the shards hold unit-length rows, so the dot product is
    the cosine. Exact: every row is scored.
    """
    first_item = 0
    best_scores = np.empty(0, dtype=np.float32)
    best_items = np.empty(0, dtype=np.int64)
    for shard in manifest["shards"]:
        features = np.load(out / shard[kind], mmap_mode="r")  # [rows, D]
        for start in range(0, features.shape[0], SEARCH_CHUNK_ROWS):
            block = np.asarray(features[start : start + SEARCH_CHUNK_ROWS], dtype=np.float32) @ query
            best_scores = np.concatenate([best_scores, block])
            best_items = np.concatenate([best_items, np.arange(len(block)) + first_item + start])
            if len(best_scores) > k:
                keep = np.argpartition(-best_scores, k - 1)[:k]
                best_scores, best_items = best_scores[keep], best_items[keep]
        first_item += features.shape[0]
    order = np.lexsort((best_items, -best_scores))  # by score, ties by position
    return [(float(best_scores[i]), int(best_items[i])) for i in order]
