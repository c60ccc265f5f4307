"""The per-item table of a collection: path, caption, shard, row, and for webdataset input the tar,
the key and the sample's ``.json``, one row per embedded item, in collection order.

Format 3 keeps it in ``metadata.sqlite`` (SQLite, in the standard library): opening it reads a page
or two whatever the size, and ``paths(rows)`` is a primary-key lookup that touches only the pages
holding those rows. Formats 1 and 2 listed the items in ``manifest.json``; :class:`JsonItems` serves
those from the parsed list. A name that is not valid UTF-8 (its bytes held as surrogates, as
``os.listdir`` gives them) is stored as a BLOB of its bytes and reads back as the same ``str``.
"""

import sqlite3
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .._atomic import replacing
from .layout import TEMP_PREFIX, CollectionError

__all__ = ["COLUMNS", "Items", "JsonItems", "SqliteItems", "write_items"]

COLUMNS = ("path", "caption", "shard", "row", "tar", "key", "meta")
LOOKUP_CHUNK = 900  # ids per SELECT ... IN (...): under SQLite's oldest variable limit (999)
INSERT_CHUNK = 100_000  # rows per executemany

Row = Tuple[Any, ...]  # one value per COLUMNS entry


def _to_db(value: Any) -> Any:
    """A str that UTF-8 cannot encode (surrogates from undecodable bytes) as the bytes it stands for."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    return value


def _from_db(value: Any) -> Any:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class Items:
    """The per-item table, read by row number (0 .. len-1)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def column(self, name: str, rows: Sequence[int]) -> List[Any]:
        """The values of column `name` at `rows` (in that order; repeats allowed)."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the file, if any."""

    def _check(self, rows: Sequence[int]) -> None:
        size = len(self)
        bad = [row for row in rows if not 0 <= row < size]
        if bad:
            raise IndexError(f"row {bad[0]} is out of range: the collection has rows 0 to {size - 1}")


class JsonItems(Items):
    """The items of a format 1 or 2 ``manifest.json`` (already parsed)."""

    def __init__(self, entries: List[Dict[str, Any]]) -> None:
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def column(self, name: str, rows: Sequence[int]) -> List[Any]:
        self._check(rows)
        return [self.entries[row].get(name) for row in rows]


class SqliteItems(Items):
    """The items of a format 3 ``metadata.sqlite``, opened read-only; safe to share between threads."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path, self.rows = path, rows
        self._lock = threading.Lock()
        try:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self._db: Optional[sqlite3.Connection] = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._db.execute("SELECT 1 FROM items LIMIT 1").fetchall()
        except (sqlite3.Error, ValueError) as exc:
            raise CollectionError(
                f"{path} cannot be read as the collection's item table ({exc}); embed the collection "
                "again, or rebuild it with clip.collection.from_arrays"
            ) from exc

    def __len__(self) -> int:
        return self.rows

    def column(self, name: str, rows: Sequence[int]) -> List[Any]:
        if name not in COLUMNS:
            raise KeyError(name)
        self._check(rows)
        wanted = sorted(set(int(row) for row in rows))
        found: Dict[int, Any] = {}
        with self._lock:
            if self._db is None:
                raise CollectionError(f"{self.path}: the collection was closed")
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start : start + LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT id, {name} FROM items WHERE id IN ({marks})"  # name: one of COLUMNS
                found.update(self._db.execute(query, chunk).fetchall())
        if len(found) != len(wanted):
            missing = next(row for row in wanted if row not in found)
            raise CollectionError(
                f"{self.path} has no entry for row {missing}: the item table does not match the shards; "
                "embed the collection again"
            )
        return [_from_db(found[int(row)]) for row in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def write_items(path: Path, rows: Iterable[Union[Row, Sequence[Any]]]) -> int:
    """Write the item table `rows` (one tuple of COLUMNS values per item, in collection order) as a
    new ``metadata.sqlite`` at `path`, replacing it whole; the number of rows written."""
    count = 0
    with replacing(path, TEMP_PREFIX) as temp:
        db = sqlite3.connect(temp)
        try:
            db.execute("PRAGMA journal_mode=OFF")  # a temporary file: renamed into place when whole
            db.execute("PRAGMA synchronous=OFF")
            db.execute(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, path, caption, shard INTEGER, row INTEGER, "
                "tar, key, meta)"
            )
            batch: List[Tuple[Any, ...]] = []
            for values in rows:
                batch.append((count, *map(_to_db, values)))
                count += 1
                if len(batch) >= INSERT_CHUNK:
                    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
                    batch = []
            if batch:
                db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
            db.commit()
        finally:
            db.close()
    return count
