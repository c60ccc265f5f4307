"""The command line's side of collections: listing what `clip embed` embeds, checking and preparing
its OUT folder, and wording the library's collection errors as the CLI's.

What a collection folder holds, and how it is written and read, is clip/_collection/ (see
clip/_collection/layout.py); this module re-exports the pieces the commands use, so that the data
flows down: command -> this module -> clip._collection.
"""

import contextlib
import csv
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .._collection import layout
from .._collection.layout import (
    ERRORS_FILE,
    LEGACY_FORMAT,
    MANIFEST_FILE,
    RUN_FILE,
    TEMP_PREFIX,
    shard_name,
    short_digest,
    write_json,
)
from .._collection.runs import (
    RUN_SETTINGS,
    Item,
    RunInfo,
    items_digest,
    model_name,
    model_sha256,
    released,
    shard_done,
    write_manifest,
    write_shard,
)
from .common import UsageError, shorten

__all__ = [
    "CollectionError",
    "library_errors",
    "Item",
    "discover",
    "RunInfo",
    "RUN_SETTINGS",
    "items_digest",
    "model_name",
    "model_sha256",
    "short_digest",
    "check_out",
    "prepare_out",
    "shard_done",
    "shard_name",
    "write_shard",
    "write_manifest",
    "RUN_FILE",
    "MANIFEST_FILE",
    "ERRORS_FILE",
    "TEMP_PREFIX",
]

DEFAULT_PATH_COLUMN = "path"
DEFAULT_CAPTION_COLUMN = "caption"
SNIFF_BYTES = 16
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


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """The library's collection errors (``clip.collection.CollectionError``) as this CollectionError."""
    try:
        yield
    except layout.CollectionError as exc:
        raise CollectionError(str(exc)) from exc


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
            tars = any(name.lower().endswith(".tar") for name in os.listdir(base))
            hint = ""
            if tars:
                hint = f"; to embed its webdataset shards, name them: {os.path.join(src, '*.tar')}"
            raise CollectionError(f"{src}: no image files in this folder or below it{hint}")
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
        previous = layout.read_versioned(existing, "a run this clip can resume", "use another OUT folder")
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
    if not released(run.model):  # a released name is its weights; a file may have been replaced
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
