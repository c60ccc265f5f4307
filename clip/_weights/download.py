"""Verified, resumable, lock-protected downloads of the released checkpoints.

`_download(url, root=None)` keeps the original's signature (`root` optional, the cache directory by
default, as in its early releases) and result (the path ``os.path.join(root, os.path.basename(url))``
of a file whose SHA256 equals the second-to-last segment of `url`) and adds what the original lacked:

* the SHA256 is computed while the bytes stream in (no second read of the file);
* bytes go to ``<file>.partial`` and are renamed into place only once verified, so a failed or
  interrupted download never leaves anything at the final path;
* an interrupted download resumes with an HTTP ``Range`` request on the next call;
* a lock file ``<file>.lock`` (``fcntl.flock``, released by the kernel if the holder dies) lets
  processes and threads share one cache directory;
* a verified file is trusted on later calls while its size and mtime match ``<file>.verified``;
* every failure raises :class:`DownloadError`, naming the URL, the target path and how to place the
  file by hand.

For the rest of the package: `download_verified` (the same for any URL, target and announced
SHA256 and size: the hub copies), `cached_file` (the cache-only lookup of a release file) and
`verified_earlier` (a file this module verified and nobody changed since).
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from http.client import HTTPException
from typing import IO, Any, Dict, Iterator, Optional, Tuple

from tqdm import tqdm

from .sniff import looks_like_html, sniff

try:  # POSIX: advisory locks that the kernel drops when the holding process dies.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = [
    "DownloadError",
    "cached_file",
    "default_cache_dir",
    "download_verified",
    "hash_into",
    "timeout_seconds",
    "verified_earlier",
]

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "CLIP_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/clip"  # the original's default; it ignores XDG_CACHE_HOME
TIMEOUT_ENV = "CLIP_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0  # seconds without any byte from the server before giving up

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
VERIFIED_SUFFIX = ".verified"

STREAM_CHUNK_BYTES = 64 * 1024  # read size from the network
HASH_CHUNK_BYTES = 1024 * 1024  # read size when hashing a file already on disk
LOCK_POLL_S = 0.1  # polling interval where only non-blocking locks exist (Windows)
WRITE_ERRNOS_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)

HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")


class DownloadError(RuntimeError):
    """A checkpoint could not be downloaded or verified.

    Attributes:
        url: the URL that was being downloaded.
        path: the final path the verified file would have been saved as.
    """

    def __init__(self, problem: str, url: str, path: str) -> None:
        self.problem = problem
        self.url = url
        self.path = path
        super().__init__(
            f"{problem}\n"
            f"  URL:    {url}\n"
            f"  target: {path}\n"
            f"To place the file by hand, download it from {url} and save it as {path}, "
            f"or pass download_root=... to use another directory."
        )

    def __reduce__(self) -> Tuple[Any, Tuple[str, str, str]]:
        # Picklable (e.g. raised in a worker process) despite the three-argument constructor.
        return type(self), (self.problem, self.url, self.path)


def default_cache_dir() -> str:
    """Return the download directory used when no `download_root` is given.

    The environment variable ``CLIP_CACHE_DIR`` wins when set and non-empty; otherwise
    ``~/.cache/clip`` (the original's default). Read at call time, never at import.
    """
    configured = os.environ.get(CACHE_DIR_ENV)
    return os.path.expanduser(configured if configured else DEFAULT_CACHE_DIR)


def _download(url: str, root: Optional[str] = None) -> str:
    """Return the path of the verified file for `url` inside `root`, downloading it if needed.

    Args:
        url: a URL whose second-to-last path segment is the SHA256 of the file.
        root: the directory to keep the file in; created if missing. Default: `default_cache_dir()`.

    Returns:
        ``os.path.join(root, os.path.basename(url))``, a file whose SHA256 has been checked.

    Raises:
        DownloadError: (a RuntimeError) on network, HTTP, timeout, checksum or disk errors.
        ValueError: if `url` does not carry a SHA256, or ``CLIP_DOWNLOAD_TIMEOUT`` is invalid.
    """
    if root is None:
        root = default_cache_dir()
    expected = _expected_sha256(url)
    target = os.path.join(root, os.path.basename(url))
    return download_verified(url, target, expected)


def download_verified(url: str, target: str, expected: str, size: Optional[int] = None) -> str:
    """Return `target`, a file whose SHA256 is `expected` (and size `size`, when given), fetching
    it from `url` if needed: lock, resume, verification and atomic rename as for `_download`.

    Raises:
        DownloadError: on network, HTTP, timeout, checksum, size or disk errors; nothing is left at
            `target` (a partial download of a network failure stays as ``<target>.partial``).
    """
    root = os.path.dirname(target) or "."
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the download directory {root!r}: {exc}", url, target) from exc
    if os.path.exists(target) and not os.path.isfile(target):
        raise DownloadError(f"{target} exists and is not a regular file", url, target)

    # Fast path, lock-free: a file verified earlier and unchanged since (no hashing, no network).
    if _is_trusted(target, expected):
        return target

    try:
        lock = _acquire_lock(target + LOCK_SUFFIX)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS_READ_ONLY:
            raise DownloadError(
                f"cannot create the lock file {target + LOCK_SUFFIX}: {exc}", url, target
            ) from exc
        # A read-only cache (e.g. a shared model directory): use the file if it is correct.
        if os.path.isfile(target):
            if _verify_and_mark(target, expected, url):
                return target
            problem = f"{target} exists, but its SHA256 checksum does not match"
        else:
            problem = f"{target} does not exist"
        raise DownloadError(
            f"{problem}, and the directory {root!r} is not writable ({exc})", url, target
        ) from exc

    with lock:
        # Another process may have completed the file while we waited for the lock.
        if os.path.exists(target) and not os.path.isfile(target):
            raise DownloadError(f"{target} exists and is not a regular file", url, target)
        if os.path.isfile(target):
            if _is_trusted(target, expected) or _verify_and_mark(target, expected, url):
                return target
            warnings.warn(
                f"{target} exists, but the SHA256 checksum does not match; re-downloading the file",
                stacklevel=2,
            )
            _remove(target + VERIFIED_SUFFIX)
            _remove(target)
        _fetch(url, target, expected, _timeout_s())
        partial = target + PARTIAL_SUFFIX
        if size is not None and os.path.getsize(partial) != size:
            actual = os.path.getsize(partial)
            _remove(partial)
            raise DownloadError(
                f"the downloaded file has {actual} bytes, not the announced {size}; the download was "
                "discarded",
                url,
                target,
            )
        try:
            os.replace(partial, target)
        except OSError as exc:
            _remove(partial)
            raise DownloadError(f"cannot move the verified download into place: {exc}", url, target) from exc
        _write_marker(target, expected, os.stat(target))
    return target


def verified_earlier(target: str) -> bool:
    """True if `target` was verified by a download here and is unchanged since (its
    ``<target>.verified`` record matches its size and mtime). Reads no file contents."""
    try:
        with open(target + VERIFIED_SUFFIX, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return False
    digest = record.get("sha256") if isinstance(record, dict) else None
    return isinstance(digest, str) and _is_trusted(target, digest)


def cached_file(url: str, root: str) -> Optional[str]:
    """The verified file for `url` in `root` if it is there; never touches the network.

    Returns ``os.path.join(root, os.path.basename(url))`` when that file exists and its SHA256
    matches the one in `url` (trusted from ``<file>.verified`` while its size and mtime are
    unchanged, else hashed and, when correct, marked), or None when it is absent or does not match.

    Raises:
        DownloadError: the file exists but cannot be read.
        ValueError: `url` does not carry a SHA256.
    """
    expected = _expected_sha256(url)
    target = os.path.join(root, os.path.basename(url))
    if not os.path.isfile(target):
        return None
    if _is_trusted(target, expected) or _verify_and_mark(target, expected, url):
        return target
    return None


# ----------------------------------------------------------------------------------------------
# Configuration


def _expected_sha256(url: str) -> str:
    parts = url.rstrip("/").split("/")
    digest = parts[-2] if len(parts) >= 2 else ""
    if not _SHA256_RE.match(digest):
        raise ValueError(f"the URL {url!r} does not carry a SHA256 as its second-to-last path segment")
    return digest.lower()


def timeout_seconds() -> float:
    """Seconds without a byte from a server before a download gives up (``CLIP_DOWNLOAD_TIMEOUT``).

    Raises ValueError if the variable is set to anything but a positive number.
    """
    return _timeout_s()


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Verification and the trust marker


def _stat_key(st: os.stat_result) -> Tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _is_trusted(target: str, expected: str) -> bool:
    """True if `<target>.verified` vouches for the file as it is now (size and mtime unchanged)."""
    try:
        with open(target + VERIFIED_SUFFIX, encoding="utf-8") as handle:
            record = json.load(handle)
        st = os.stat(target)
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    return record.get("sha256") == expected and (record.get("size"), record.get("mtime_ns")) == _stat_key(st)


def hash_into(hasher: "hashlib._Hash", handle: IO[bytes]) -> None:
    """Feed the rest of the open binary file `handle` to `hasher`, in chunks: never read whole."""
    for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
        hasher.update(chunk)


def _verify_and_mark(target: str, expected: str, url: str) -> bool:
    """Hash `target` in chunks; if it matches, record that in the trust marker (best effort).

    A file that cannot be read raises DownloadError rather than counting as corrupt (and being
    replaced).
    """
    try:
        with open(target, "rb") as handle:
            st = os.fstat(handle.fileno())  # before hashing: any later change invalidates the marker
            hasher = hashlib.sha256()
            hash_into(hasher, handle)
    except OSError as exc:
        raise DownloadError(f"cannot read the cached file {target}: {exc}", url, target) from exc
    if hasher.hexdigest() != expected:
        return False
    _write_marker(target, expected, st)
    return True


def _write_marker(target: str, expected: str, st: os.stat_result) -> None:
    """Atomically write `<target>.verified`; failures only cost a re-hash on the next call."""
    size, mtime_ns = _stat_key(st)
    record: Dict[str, Any] = {"sha256": expected, "size": size, "mtime_ns": mtime_ns}
    directory, name = os.path.split(target + VERIFIED_SUFFIX)
    try:
        fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=directory or ".")
    except OSError as exc:
        logger.debug("cannot write the trust marker for %s: %s", target, exc)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(tmp, target + VERIFIED_SUFFIX)
    except OSError as exc:
        logger.debug("cannot write the trust marker for %s: %s", target, exc)
        _remove(tmp)


# ----------------------------------------------------------------------------------------------
# Locking


@contextlib.contextmanager
def _held(fd: int, path: str) -> Iterator[None]:
    try:
        yield
    finally:
        # Unlink while still holding the lock; waiters notice the inode change and retry.
        # (Windows refuses to unlink an open file: the lock file then simply stays.)
        with contextlib.suppress(OSError):
            os.remove(path)
        if fcntl is None:  # pragma: no cover - Windows
            with contextlib.suppress(OSError):
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)  # releases a flock


def _lock_fd(fd: int, path: str) -> None:
    """Block until `fd` holds an exclusive lock."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another download of %s to finish", path[: -len(LOCK_SUFFIX)])
            fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:  # pragma: no cover - Windows
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return
        except OSError:
            time.sleep(LOCK_POLL_S)


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _acquire_lock(path: str) -> "contextlib.AbstractContextManager[None]":
    """Take the exclusive lock file `path`; returns a context manager that releases it.

    The lock dies with its process (flock), so a killed download never blocks the next one. A lock
    file unlinked by its previous holder while we waited is detected by its inode and re-created.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd, path)
            if _same_file(fd, path):
                return _held(fd, path)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Transfer


class _ReadError(Exception):
    """The connection failed while streaming the body (the partial file is kept for resuming)."""


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _hash_partial(partial: str) -> Tuple[int, "hashlib._Hash"]:
    """Size and running SHA256 of the bytes already downloaded (0 and a fresh hash if none)."""
    hasher = hashlib.sha256()
    try:
        with open(partial, "rb") as handle:
            hash_into(hasher, handle)
            return handle.tell(), hasher
    except FileNotFoundError:
        return 0, hasher


def _describe_network_error(exc: BaseException, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"the server sent nothing for {timeout:g} s (timeout; set {TIMEOUT_ENV} to change it)"
    return f"the download failed: {reason!r}"


def _open(url: str, offset: int, timeout: float, target: str) -> Any:
    """Send the GET (with a Range header when resuming); return the response, or None on 416."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == HTTP_RANGE_NOT_SATISFIABLE and offset:
            return None
        raise DownloadError(f"the server answered HTTP {exc.code} {exc.reason}", url, target) from exc
    except (OSError, HTTPException) as exc:
        raise DownloadError(_describe_network_error(exc, timeout), url, target) from exc


def _resumes_at(response: Any, offset: int) -> bool:
    if response.status != HTTP_PARTIAL_CONTENT:
        return False
    content_range = response.headers.get("Content-Range", "")
    return content_range.strip().startswith(f"bytes {offset}-")


def _content_length(response: Any) -> Optional[int]:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _copy(response: Any, output: IO[bytes], hasher: "hashlib._Hash", bar: Any) -> int:
    """Stream the body into `output`, hashing as it goes; returns the number of bytes copied."""
    copied = 0
    while True:
        try:
            chunk = response.read(STREAM_CHUNK_BYTES)
        except (OSError, HTTPException) as exc:
            raise _ReadError(exc) from exc
        if not chunk:
            return copied
        output.write(chunk)
        hasher.update(chunk)
        copied += len(chunk)
        bar.update(len(chunk))


def _looks_like_html(partial: str, content_type: str) -> bool:
    """True if the server said it sent an HTML page, or the bytes it sent look like one."""
    if content_type.split(";")[0].strip().lower() in HTML_CONTENT_TYPES:
        return True
    try:
        head = sniff(partial)
    except OSError:
        return False
    return looks_like_html(head)


def _fetch(url: str, target: str, expected: str, timeout: float) -> None:
    """Download `url` into `<target>.partial` (resuming it if present) and check its SHA256.

    On success the verified partial file is left for the caller to rename into place. A network
    failure keeps the partial file for the next call to resume; a write failure or a wrong checksum
    removes it.
    """
    partial = target + PARTIAL_SUFFIX
    response = None
    while response is None:
        offset, hasher = _hash_partial(partial)
        response = _open(url, offset, timeout, target)
        if response is None:  # 416: nothing left to send, the partial file may be complete
            if hasher.hexdigest() == expected:
                return
            logger.info("the server refused to resume %s; restarting from the first byte", url)
            _remove(partial)
        elif offset and not _resumes_at(response, offset):
            if response.status == HTTP_PARTIAL_CONTENT:  # a range we did not ask for: start over
                response.close()
                _remove(partial)
                response = None
            else:
                logger.info("the server ignored the Range request for %s; restarting", url)
                offset, hasher = 0, hashlib.sha256()
        elif offset:
            logger.info("resuming %s from byte %d", url, offset)

    with response:
        length = _content_length(response)
        total = None if length is None else offset + length
        content_type = response.headers.get("Content-Type", "")
        try:
            with (
                open(partial, "ab" if offset else "wb") as output,
                tqdm(
                    total=total,
                    initial=offset,
                    ncols=80,
                    unit="iB",
                    unit_scale=True,
                    unit_divisor=1024,
                ) as bar,
            ):
                copied = _copy(response, output, hasher, bar)
                output.flush()
                os.fsync(output.fileno())
        except _ReadError as exc:
            raise DownloadError(
                f"{_describe_network_error(exc.__cause__ or exc, timeout)}; the partial download is "
                f"kept at {partial} and the next call resumes it",
                url,
                target,
            ) from exc.__cause__
        except OSError as exc:
            _remove(partial)
            raise DownloadError(f"cannot write the download to {partial}: {exc}", url, target) from exc

    if length is not None and copied < length:
        raise DownloadError(
            f"the connection closed after {offset + copied} of {total} bytes; the partial download is "
            f"kept at {partial} and the next call resumes it",
            url,
            target,
        )
    actual = hasher.hexdigest()
    if actual != expected:
        html = _looks_like_html(partial, content_type)
        _remove(partial)
        hint = (
            " The server sent an HTML page instead of the file (a proxy, login or error page?)."
            if html
            else ""
        )
        raise DownloadError(
            f"the downloaded file's SHA256 checksum {actual} does not match the expected {expected}; "
            f"the download was discarded.{hint}",
            url,
            target,
        )
