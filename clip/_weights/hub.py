"""The Hugging Face hub copies of the released weights: finding them in an existing cache, and
fetching them over plain HTTP(S) with the project's own downloader (no hub client needed).

A hub file is served at ``{HF_ENDPOINT}/{repo}/resolve/main/{file}``. For files kept in Git LFS
(all weights), that URL answers with a redirect to a storage URL and announces the file's SHA256 in
``X-Linked-Etag`` and its size in ``X-Linked-Size``; the download is verified against both. Mirrors
that serve the file directly are accepted when their ``ETag`` is a SHA256.

The hub's own cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)
holds ``models--{org}--{name}/refs/main`` (a revision) and ``snapshots/{revision}/{file}`` (links
into ``blobs/``). Copies found there are read in place; nothing is ever written into that cache.
"""

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any, Iterator, Optional, Tuple

from .download import DownloadError, download_verified, timeout_seconds

__all__ = [
    "HubFile",
    "hub_endpoint",
    "hf_cache_dir",
    "find_in_hf_cache",
    "hub_offline",
    "download_hub_file",
]

ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_CACHE_ENV = "HF_HUB_CACHE"
HF_HOME_ENV = "HF_HOME"
DEFAULT_HF_HOME = "~/.cache/huggingface"
OFFLINE_ENV = "HF_HUB_OFFLINE"
TRUE_VALUES = ("1", "true", "yes", "on")
REVISION = "main"
MAX_METADATA_HOPS = 5  # redirects followed between hub URLs before the storage URL (renamed repos)
REDIRECT_CODES = (301, 302, 303, 307, 308)
ALLOWED_SCHEMES = ("http", "https")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REVISION_RE = re.compile(r"^[0-9A-Za-z._-]+$")


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository that holds a copy of released weights."""

    repo: str  # "org/name"
    filename: str

    def url(self, endpoint: str) -> str:
        """Where the hub serves the file."""
        return f"{endpoint}/{self.repo}/resolve/{REVISION}/{self.filename}"

    @property
    def cache_name(self) -> str:
        """The file's name in the clip cache directory (distinct from the release's names)."""
        return f"{self.repo.replace('/', '--')}--{self.filename}"


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` (mirrors set it) without a trailing slash, else the public hub."""
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks to leave the hub's network alone."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in TRUE_VALUES


def hf_cache_dir() -> str:
    """The hub cache of open_clip and transformers users, as the hub's own client finds it."""
    configured = os.environ.get(HUB_CACHE_ENV)
    if configured:
        return os.path.expanduser(configured)
    home = os.environ.get(HF_HOME_ENV) or DEFAULT_HF_HOME
    return os.path.join(os.path.expanduser(home), "hub")


def _snapshots(repo_dir: str) -> Iterator[str]:
    """Snapshot folders of a cached repository: the one refs/main names first, then the others."""
    snapshots = os.path.join(repo_dir, "snapshots")
    main = None
    try:
        with open(os.path.join(repo_dir, "refs", REVISION), encoding="utf-8") as handle:
            main = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        pass
    if main and _REVISION_RE.match(main):
        yield os.path.join(snapshots, main)
    try:
        others = sorted(os.scandir(snapshots), key=lambda e: e.stat().st_mtime, reverse=True)
    except OSError:
        return
    for entry in others:
        if entry.name != main and entry.is_dir():
            yield entry.path


def find_in_hf_cache(hub_file: HubFile, cache: Optional[str] = None) -> Optional[str]:
    """The path of `hub_file` in the hub cache, if a complete copy is there (read it in place)."""
    repo_dir = os.path.join(cache or hf_cache_dir(), "models--" + hub_file.repo.replace("/", "--"))
    for snapshot in _snapshots(repo_dir):
        candidate = os.path.join(snapshot, hub_file.filename)
        if os.path.isfile(candidate) and os.path.getsize(candidate) > 0:  # a dangling link is no copy
            return candidate
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError carrying the redirect's own headers


def _announced_sha256(headers: Any) -> Optional[str]:
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").strip()
        value = value[2:] if value.startswith("W/") else value
        value = value.strip('"').lower()
        if _SHA256_RE.match(value):
            return value
    return None


def _announced_size(headers: Any) -> Optional[int]:
    for name in ("X-Linked-Size", "Content-Length"):
        value = headers.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def _metadata(url: str, target: str) -> Tuple[str, str, Optional[int]]:
    """(download URL, SHA256, size) the hub announces for `url`, from a HEAD request."""
    opener = urllib.request.build_opener(_NoRedirects)
    timeout = timeout_seconds()
    current = url
    for _ in range(MAX_METADATA_HOPS):
        request = urllib.request.Request(current, method="HEAD", headers={"Accept-Encoding": "identity"})
        try:
            with opener.open(request, timeout=timeout) as response:
                headers, location = response.headers, None
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code not in REDIRECT_CODES:
                raise DownloadError(f"the hub answered HTTP {exc.code} {exc.reason}", url, target) from exc
            headers, location = exc.headers, urllib.parse.urljoin(current, exc.headers.get("Location", ""))
            if urllib.parse.urlsplit(location).scheme not in ALLOWED_SCHEMES:
                raise DownloadError(
                    f"the hub redirected to {location!r}; only {' and '.join(ALLOWED_SCHEMES)} URLs are "
                    "followed",
                    url,
                    target,
                ) from exc
        except (OSError, HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise DownloadError(f"the hub could not be reached: {reason!r}", url, target) from exc
        sha256 = _announced_sha256(headers)
        if sha256 is None and location is not None:  # a redirect between hub URLs (a renamed repo)
            current = location
            continue
        if sha256 is None:
            raise DownloadError(
                "the hub did not announce the file's SHA256 (no X-Linked-Etag header); refusing an "
                "unverifiable download",
                url,
                target,
            )
        return location or current, sha256, _announced_size(headers)
    raise DownloadError(f"more than {MAX_METADATA_HOPS} redirects before the file", url, target)


def download_hub_file(hub_file: HubFile, root: str, endpoint: Optional[str] = None) -> str:
    """Fetch `hub_file` into `root` (under :attr:`HubFile.cache_name`), verified against the
    SHA256 and size the hub announces; a verified copy already there is returned at once.

    Raises:
        DownloadError: the hub cannot be reached, announces no SHA256, or sends other bytes
            (nothing is left at the target path).
    """
    url = hub_file.url(endpoint or hub_endpoint())
    target = os.path.join(root, hub_file.cache_name)
    source, sha256, size = _metadata(url, target)
    try:
        return download_verified(source, target, sha256, size)
    except DownloadError as exc:
        raise DownloadError(exc.problem, url, target) from exc
