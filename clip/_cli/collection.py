"""Embedded collections on disk: what `clip embed` writes and `clip search` reads.

An OUT folder holds

* ``run.json``: what the run is (model, the SHA256 of its weights, clip version, storage dtype,
  shard size, how many items and a digest of their list), written before the first shard; a rerun
  must match it, and the model must match by content, not by name or path;
* per shard ``i``: ``images-{i:05d}.npy`` (L2-normalised image features, ``[rows, D]``), with a
  caption column also ``texts-{i:05d}.npy`` (the captions' features, the same rows), and last
  ``shard-{i:05d}.json`` (which items are its rows and which failed, and why): a shard is done
  when its ``.json`` exists;
* ``manifest.json`` (one entry per embedded item: path, caption, shard, row; the model, its SHA256,
  the clip version) and ``errors.tsv`` (path, reason), written once every shard is done.

Item paths are absolute (format 2; format 1 stored them as spelled on the command line, relative to
the working directory of the run). A file name that is not valid UTF-8 is held as Python holds it
(undecodable bytes as surrogates): JSON-escaped in the ``.json`` files, its original bytes in
``errors.tsv``; either reads back to the same name.

Every file is written to a temporary file in OUT and renamed into place (with the mode the umask
gives new files), so an interrupted run leaves whole files only, and a rerun redoes just the shards
without their ``.json``.
"""

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._atomic import replacing
from .common import UsageError, shorten

__all__ = [
    "CollectionError",
    "Item",
    "discover",
    "RunInfo",
    "model_name",
    "model_sha256",
    "short_digest",
    "check_out",
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
FORMAT_VERSION = 2  # 2: absolute item paths and the model's SHA256; 1 is still read
LEGACY_FORMAT = 1
DEFAULT_PATH_COLUMN = "path"
DEFAULT_CAPTION_COLUMN = "caption"
SEARCH_CHUNK_ROWS = 65536  # rows of a memory-mapped shard scored at a time
SNIFF_BYTES = 16
SHOWN_DIGEST = 12  # hex digits of a SHA256 shown in a message
SHOWN_LINES = 5  # line numbers listed in a message about bad rows

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
    src: str,
    path_column: str = DEFAULT_PATH_COLUMN,
    caption_column: Optional[str] = None,
    absolute: bool = True,
) -> Tuple[List[Item], bool]:
    """The items of `src` in a fixed order, and whether they carry captions.

    A folder: every image file under it (recursively, by content or image suffix), sorted by path. A
    ``.csv`` / ``.tsv`` file: one item per row, from `path_column` (paths relative to the file's
    folder) and `caption_column` (default: a ``caption`` column if there is one). Paths are absolute
    (`src` resolved), so the same collection spelled another way is the same list; with
    ``absolute=False``, as format 1 spelled them (below `src` as given).
    """
    root = Path(src)
    if root.is_dir():
        base = root.resolve() if absolute else root
        paths = sorted(
            str(Path(folder) / name)
            for folder, _, names in os.walk(base)
            for name in names
            if _looks_like_image(Path(folder) / name)
        )
        if not paths:
            raise CollectionError(f"{src}: no image files in this folder or below it")
        return [Item(path) for path in paths], False
    if root.is_file():
        return _read_table(root.resolve() if absolute else root, path_column, caption_column)
    raise CollectionError(f"{src}: no such folder or file; pass a folder of images or a CSV/TSV file")


def _read_table(table: Path, path_column: str, caption_column: Optional[str]) -> Tuple[List[Item], bool]:
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    if table.suffix.lower() not in (".csv", ".tsv"):
        raise CollectionError(f"{table}: not a folder, a .csv or a .tsv file")
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM is not part of a name
            reader = csv.DictReader(handle, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            rows = [(reader.line_num, row) for row in reader]  # line_num: the row's last line
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CollectionError(f"{table}: cannot be read as UTF-8 {table.suffix[1:].upper()}: {exc}") from exc
    if not columns:
        raise CollectionError(
            f"{table} is empty: write a header line naming the {path_column!r} column (and a "
            f"{DEFAULT_CAPTION_COLUMN!r} column, if any), then one row per image"
        )
    shown_columns = ", ".join(shorten(column) for column in columns)
    if path_column not in columns:
        raise CollectionError(
            f"{table}: no column {shorten(path_column)} (columns: {shown_columns}); "
            "name the column of image paths with --path-column"
        )
    if caption_column is not None and caption_column not in columns:
        raise CollectionError(
            f"{table}: no column {shorten(caption_column)} (columns: {shown_columns}); "
            "name the caption column with --caption-column, or leave it out"
        )
    _refuse_ragged_rows(table, columns, rows)
    if caption_column is None and DEFAULT_CAPTION_COLUMN in columns:
        caption_column = DEFAULT_CAPTION_COLUMN
    items = []
    for number, row in rows:
        value = (row.get(path_column) or "").strip()
        if not value:
            raise CollectionError(f"{table}, line {number}: the {path_column!r} column is empty")
        path = value if os.path.isabs(value) else str(table.parent / value)
        items.append(Item(path, (row.get(caption_column) or "") if caption_column else None))
    if not items:
        raise CollectionError(f"{table}: no rows below the header")
    return items, caption_column is not None


def _refuse_ragged_rows(table: Path, columns: List[str], rows: List[Tuple[int, Dict[Any, Any]]]) -> None:
    """A row with more or fewer fields than the header would be cut or padded silently by the csv
    module (an unquoted comma in a caption keeps only the caption's start): refuse it."""
    ragged = [
        (number, len(columns) + len(row.get(None) or []) - sum(value is None for value in row.values()))
        for number, row in rows
        if None in row or None in row.values()
    ]
    if not ragged:
        return
    shown = ", ".join(f"line {number}: {fields}" for number, fields in ragged[:SHOWN_LINES])
    more = f", and {len(ragged) - SHOWN_LINES} more" if len(ragged) > SHOWN_LINES else ""
    if table.suffix.lower() == ".tsv":
        fix = "quote values that hold a tab"
    else:
        fix = 'quote values that hold a comma ("a dog, running"), or write the list as a .tsv file'
    raise CollectionError(
        f"{table}: {len(ragged)} row(s) do not have the header's {len(columns)} fields ({shown}{more}); "
        f"nothing is embedded rather than a value cut at a separator or a missing one read as empty. Give "
        f"every row {len(columns)} fields: {fix}"
    )


def items_digest(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps([item.path, item.caption]).encode())
    return h.hexdigest()


def _released(model: str) -> bool:
    from ..clip import _MODELS

    return model in _MODELS


def model_name(model: str) -> str:
    """`model` as a collection records it: a released name as is, a path made absolute (so that
    `clip search` finds it from any folder)."""
    return model if _released(model) else os.path.abspath(model)


def model_sha256(model: str) -> Optional[str]:
    """What identifies `model` by content: a released name's release SHA256 (part of its URL), a
    checkpoint file's SHA256, or for a model directory the SHA256 of its weight files; None when
    `model` is none of these (loading it then fails and says why).

    A file is read once, in chunks (0.7 s per GB on an AMD EPYC core with SHA extensions), never whole.
    """
    from .._weights.download import hash_into
    from .._weights.formats import DIRECTORY_WEIGHT_FILES
    from .._weights.registry import released

    entry = released(model)
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
    """What a run is; a rerun into the same OUT must be the same run."""

    model: str
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


def shard_name(kind: str, shard: int, suffix: str) -> str:
    return f"{kind}-{shard:05d}{suffix}"


def write_json(path: Path, value: Any) -> None:
    with replacing(path, TEMP_PREFIX) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(value, handle)


def check_out(out: Path, run: RunInfo, legacy_items_sha256: Optional[Callable[[], str]] = None) -> bool:
    """Whether `out` already holds this run (resume), after checking that it may be written.

    Raises CollectionError when `out` holds another run (another model's shards, by content; another
    source, dtype or shard size), when it is a non-empty folder that no run made, or when it cannot
    be written. Creates nothing. A format-1 run listed its items as spelled on its command line:
    `legacy_items_sha256` gives the digest of this run's items spelled so.
    """
    if out.exists() and not out.is_dir():
        raise CollectionError(f"-o {out}: exists and is not a folder")
    existing = out / RUN_FILE
    if existing.is_file():
        previous = _read_versioned(existing, "a run this clip can resume", "use another OUT folder")
        _check_same_model(out, previous, run)
        expected = run.as_dict()
        if previous["format"] == LEGACY_FORMAT and legacy_items_sha256 is not None:
            expected["items_sha256"] = legacy_items_sha256()
        mismatched = [key for key in RUN_SETTINGS if previous.get(key) != expected[key]]
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
    if not parent.is_dir():
        raise CollectionError(
            f"-o {out}: cannot create this folder ({parent} is a file); choose one you can create"
        )
    _check_writable(parent)
    return False


def short_digest(digest: str) -> str:
    """A SHA256 as messages show it."""
    return f"SHA256 {digest[:SHOWN_DIGEST]}..."


def _check_same_model(out: Path, previous: Dict[str, Any], run: RunInfo) -> None:
    """Refuse to resume with weights other than those of the stored shards (compared by content: a
    checkpoint replaced at the same path counts as another model, the same file spelled otherwise
    does not)."""
    start_over = "use another OUT folder (or delete this one to start over)"
    before, digest = previous.get("model"), previous.get("model_sha256")
    if run.model_sha256 is None:
        return  # no such model: loading it fails and says why
    if digest is not None:
        if digest == run.model_sha256:
            return
        if before == run.model:
            raise CollectionError(
                f"-o {out} holds shards of {before} as it was then ({short_digest(digest)}); that file "
                f"has changed since ({short_digest(run.model_sha256)}), and resuming would mix two models' "
                f"features. Put the original file back to resume, or {start_over}"
            )
        raise CollectionError(
            f"-o {out} holds shards of model {before!r} ({short_digest(digest)}), not {run.model!r} "
            f"({short_digest(run.model_sha256)}); {start_over}"
        )
    if before != run.model and not (isinstance(before, str) and model_name(before) == run.model):
        raise CollectionError(f"-o {out} holds shards of model {before!r}, not {run.model!r}; {start_over}")
    if not _released(run.model):  # a released name is its weights; a file may have been replaced
        raise CollectionError(
            f"-o {out} was started by an older clip that did not record the SHA256 of {before}, so "
            f"whether that checkpoint is unchanged cannot be verified, and resuming could mix two "
            f"models' features; {start_over}"
        )


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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CollectionError(
            f"-o {out}: cannot create this folder ({exc.strerror or exc}); choose one you can create"
        ) from exc
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
    with (
        replacing(out / shard_name("images", shard, ".npy"), TEMP_PREFIX) as temp,
        open(temp, "wb") as handle,
    ):
        np.save(handle, image_features)
    if text_features is not None:
        with (
            replacing(out / shard_name("texts", shard, ".npy"), TEMP_PREFIX) as temp,
            open(temp, "wb") as handle,
        ):
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
    # surrogateescape: a file name that is not valid UTF-8 is written as its own bytes
    with (
        replacing(out / ERRORS_FILE, TEMP_PREFIX) as temp,
        open(temp, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle,
    ):
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
    return _read_versioned(path, "a manifest this clip reads", "embed the collection again with this one")


def _read_versioned(path: Path, what: str, advice: str) -> Dict[str, Any]:
    """The JSON object in `path` (run.json or manifest.json) of a format this clip reads, or a
    CollectionError saying it is not `what`, and `advice`."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path} cannot be read ({exc}); {advice}") from exc
    version = value.get("format") if isinstance(value, dict) else None
    if version not in (LEGACY_FORMAT, FORMAT_VERSION):
        raise CollectionError(f"{path}: not {what} (format {version!r}, made by another version?); {advice}")
    return value


def open_shard(out: Path, manifest: Dict[str, Any], shard: int, kind: str = "images") -> np.ndarray:
    """Shard `shard`'s features of `kind`, memory-mapped (``[rows, D]``); a CollectionError naming the
    file and how to redo it when the file is missing, cut short, or not the rows the manifest lists."""
    name = manifest["shards"][shard][kind]
    rows = manifest["shards"][shard]["rows"]
    try:
        features = np.load(out / name, mmap_mode="r")
        problem = (
            None if features.ndim == 2 and features.shape[0] == rows else f"{features.shape}, not {rows} rows"
        )
    except (OSError, ValueError, EOFError) as exc:
        problem = str(exc)
    if problem is None:
        return features
    raise CollectionError(
        f"{out}: the collection is damaged: {name} cannot be read ({problem}). To redo that shard, delete "
        f"{out / shard_name('shard', shard, '.json')} and rerun the clip embed command that made the "
        "collection (the same SRC and options)"
    )


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
    for shard in range(len(manifest["shards"])):
        features = open_shard(out, manifest, shard, kind)  # [rows, D]
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
