"""The files of a collection folder, the format versions, and the error every part raises.

A collection folder (the OUT of ``clip embed``, or what ``clip.collection.from_arrays`` writes) holds

* ``run.json``: what the run is (model, the SHA256 of its weights, clip version, storage dtype,
  shard size, how many items and a digest of their list), written before the first shard;
* per shard ``i``: ``images-{i:05d}.npy`` (L2-normalised image features, ``[rows, D]``), with
  captions also ``texts-{i:05d}.npy`` (the captions' features, the same rows), and last
  ``shard-{i:05d}.json`` (which items are its rows and which failed, and why): a shard is done
  when its ``.json`` exists;
* ``manifest.json``: the model, its SHA256, the clip version, the shards and their row counts, and
  (format 3) ``metadata.sqlite``, the per-item table; formats 1 and 2 listed every item in the JSON;
* ``errors.tsv``: items that could not be embedded, and why;
* with an index (``clip index``): ``index.json`` and the faiss file it names.

Format 3 (this clip) moved the per-item table out of ``manifest.json`` into SQLite; format 2 made
item paths absolute and recorded the model's SHA256; format 1 is the first. All three are read.
Every file is written to a temporary file in the folder and renamed into place, so an interrupted
writer leaves whole files only.
"""

import json
from pathlib import Path
from typing import Any, Dict, Tuple

from .._atomic import replacing

__all__ = [
    "CollectionError",
    "RUN_FILE",
    "MANIFEST_FILE",
    "ERRORS_FILE",
    "METADATA_FILE",
    "INDEX_FILE",
    "TEMP_PREFIX",
    "FORMAT_VERSION",
    "LEGACY_FORMAT",
    "READABLE_FORMATS",
    "shard_name",
    "write_json",
    "read_versioned",
    "short_digest",
]

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.tsv"
METADATA_FILE = "metadata.sqlite"
INDEX_FILE = "index.json"
TEMP_PREFIX = ".tmp-"
FORMAT_VERSION = 3  # 3: the per-item table in metadata.sqlite; 2: absolute paths, the model's SHA256
LEGACY_FORMAT = 1  # item paths as spelled on the command line, no SHA256
READABLE_FORMATS: Tuple[int, ...] = (1, 2, 3)
SHOWN_DIGEST = 12  # hex digits of a SHA256 shown in a message


class CollectionError(ValueError):
    """A collection that cannot be written or read as asked, with what to do about it."""


def shard_name(kind: str, shard: int, suffix: str) -> str:
    """``{kind}-{shard:05d}{suffix}``: ``images-00003.npy``, ``shard-00003.json``."""
    return f"{kind}-{shard:05d}{suffix}"


def write_json(path: Path, value: Any) -> None:
    """`value` as JSON in `path`, replacing it whole."""
    with replacing(path, TEMP_PREFIX) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(value, handle)


def read_versioned(path: Path, what: str, advice: str) -> Dict[str, Any]:
    """The JSON object in `path` (run.json or manifest.json) of a format this clip reads, or a
    CollectionError saying it is not `what`, and `advice`."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path} cannot be read ({exc}); {advice}") from exc
    version = value.get("format") if isinstance(value, dict) else None
    if version not in READABLE_FORMATS:
        raise CollectionError(f"{path}: not {what} (format {version!r}, made by another version?); {advice}")
    return value


def short_digest(digest: str) -> str:
    """A SHA256 as messages show it."""
    return f"SHA256 {digest[:SHOWN_DIGEST]}..."
