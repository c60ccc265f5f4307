"""The one resolver from a released model's name to a verified file of its weights: `resolve`.

Where the weights come from, in order:

1. What is already on disk: the release file in the clip cache, a hub copy fetched earlier into
   the clip cache, then a copy in the Hugging Face cache of open_clip or transformers users (read
   in place).
2. The release URL, verified by the SHA256 in it.
3. The hub copies through ``$HF_ENDPOINT``, verified against the SHA256 and size the hub announces
   (skipped with ``HF_HUB_OFFLINE=1``).

``CLIP_WEIGHTS_SOURCE=release`` keeps to the release's file and URL, ``hub`` to the hub copies,
``auto`` (the default) tries everything. Without permission to download, only step 1 is taken and
:class:`WeightsNotOnDisk` says what is missing. When every source fails, one :class:`DownloadError`
lists each with the reason. `clip.load` and the command line call :func:`resolve`; they, not this
module, tell the user when the file is not the release's own (:attr:`Located.is_release_file`).
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from . import registry
from .download import DownloadError, _download, cached_file, verified_earlier
from .hub import (
    OFFLINE_ENV,
    HubFile,
    download_hub_file,
    find_in_hf_cache,
    hf_cache_dir,
    hub_endpoint,
    hub_offline,
)

__all__ = ["SOURCE_ENV", "Located", "WeightsNotOnDisk", "weights_source", "find_on_disk", "resolve"]

logger = logging.getLogger(__name__)

SOURCE_ENV = "CLIP_WEIGHTS_SOURCE"
AUTO, RELEASE, HUB = "auto", "release", "hub"
SOURCES = (AUTO, RELEASE, HUB)


@dataclass(frozen=True)
class Located:
    """A file holding the weights, and the source it came from (in words)."""

    path: str
    source: str
    is_release_file: bool


class WeightsNotOnDisk(DownloadError):
    """No copy of a released model's weights is on disk, and downloading was not allowed.

    Attributes (besides DownloadError's `url` and `path`, the release file's URL and its place in
    the cache):
        name: the released model.
        root: the clip cache directory that was searched.
        hf_cache: the Hugging Face cache that was searched.
        mismatched: a file is at `path` but was not used: its SHA256 is not the release's (or
            ``CLIP_WEIGHTS_SOURCE=hub`` left it unchecked).
    """

    def __init__(self, name: str, url: str, path: str, root: str, hf_cache: str, mismatched: bool) -> None:
        self.name = name
        self.root = root
        self.hf_cache = hf_cache
        self.mismatched = mismatched
        if mismatched:
            problem = (
                f"{path} exists but its SHA256 does not match the release, and downloading was not allowed"
            )
        else:
            problem = (
                f"the weights of {name} are not on disk (cache directory: {root}; Hugging Face cache: "
                f"{hf_cache}), and downloading was not allowed"
            )
        super().__init__(problem, url, path)

    def __reduce__(self) -> Tuple[Any, Tuple[str, str, str, str, str, bool]]:
        return type(self), (self.name, self.url, self.path, self.root, self.hf_cache, self.mismatched)


def weights_source() -> str:
    """``$CLIP_WEIGHTS_SOURCE`` (auto, release or hub; default auto). ValueError for other values."""
    value = (os.environ.get(SOURCE_ENV) or AUTO).strip().lower()
    if value not in SOURCES:
        raise ValueError(f"{SOURCE_ENV} must be one of {', '.join(SOURCES)}; got {value!r}")
    return value


def find_on_disk(url: str, hub_files: Sequence[HubFile], root: str) -> Optional[Located]:
    """The first copy already on disk (release file, hub copy in `root`, Hugging Face cache) that
    `CLIP_WEIGHTS_SOURCE` allows; never touches the network."""
    mode = weights_source()
    if mode != HUB:
        path = cached_file(url, root)
        if path is not None:
            return Located(path, "the release file in the cache", True)
    if mode != RELEASE:
        for hub_file in hub_files:
            path = os.path.join(root, hub_file.cache_name)
            if os.path.isfile(path) and verified_earlier(path):
                return Located(path, f"the hub copy {hub_file.repo}/{hub_file.filename} in the cache", False)
        for hub_file in hub_files:
            found = find_in_hf_cache(hub_file)
            if found is not None:
                return Located(
                    found, f"the Hugging Face cache copy of {hub_file.repo}/{hub_file.filename}", False
                )
    return None


def resolve(name: str, root: str, allow_download: bool) -> Located:
    """A verified file with the weights of the released model `name`: the first copy on disk (in
    `root`, the clip cache, or the Hugging Face cache), else, when `allow_download`, the first
    source that provides one (see the module's docstring). Nothing is printed or warned here.

    The release URL is read from the registry's table at call time (`clip.clip._MODELS` is that
    table), so a name pointed at a mirror there is fetched from the mirror.

    Raises:
        LookupError: `name` is not a released model.
        WeightsNotOnDisk: (a DownloadError) no copy on disk, and `allow_download` is False.
        DownloadError: every allowed source failed; the message lists each and why.
        ValueError: ``CLIP_WEIGHTS_SOURCE`` or ``CLIP_DOWNLOAD_TIMEOUT`` is invalid.
    """
    url = registry.release_url(name)
    if url is None:
        raise LookupError(f"{name!r} is not a released model")
    hub_files = registry.hub_files(name)
    located = find_on_disk(url, hub_files, root)
    if located is None and not allow_download:
        target = os.path.join(root, os.path.basename(url))
        raise WeightsNotOnDisk(name, url, target, root, hf_cache_dir(), os.path.isfile(target))
    if located is None:
        located = _fetch(name, url, hub_files, root)
    logger.info("weights of %s: %s (%s)", name, located.path, located.source)
    return located


def _fetch(name: str, url: str, hub_files: Sequence[HubFile], root: str) -> Located:
    """The release URL, then the hub copies, as `CLIP_WEIGHTS_SOURCE` allows (nothing was on disk)."""
    mode = weights_source()
    release_target = os.path.join(root, os.path.basename(url))
    failures: List[Tuple[str, str]] = []
    if mode != HUB:
        try:
            return Located(_download(url, root), "the release URL", True)
        except DownloadError as exc:
            failures.append((f"release URL {url}", exc.problem))
    if mode == RELEASE:
        failures.append(("hub copies", f"skipped ({SOURCE_ENV}={RELEASE})"))
        raise DownloadError(_failure_report(name, failures, hub_files, root), url, release_target)
    if mode == HUB:
        failures.append(("release file and URL", f"skipped ({SOURCE_ENV}={HUB})"))
    failures.append((f"Hugging Face cache {hf_cache_dir()}", "no copy of " + _names(hub_files)))
    endpoint = hub_endpoint()
    for hub_file in hub_files:
        what = f"hub copy {hub_file.url(endpoint)}"
        if hub_offline():
            failures.append((what, f"skipped ({OFFLINE_ENV}=1)"))
            continue
        try:
            path = download_hub_file(hub_file, root, endpoint)
        except DownloadError as exc:
            failures.append((what, exc.problem))
            continue
        return Located(path, f"the hub copy {hub_file.url(endpoint)}", False)
    raise DownloadError(_failure_report(name, failures, hub_files, root), url, release_target)


def _names(hub_files: Sequence[HubFile]) -> str:
    return ", ".join(f"{f.repo}/{f.filename}" for f in hub_files) or "(none listed)"


def _failure_report(
    name: str, failures: List[Tuple[str, str]], hub_files: Sequence[HubFile], root: str
) -> str:
    lines = [f"no source could provide the weights of {name}:"]
    lines += [f"  - {what}: {' '.join(why.split())}" for what, why in failures]
    if hub_files:
        first = hub_files[0]
        lines.append(
            f"A hub copy placed by hand also works: save {first.url(hub_endpoint())} as "
            f"{os.path.join(root, first.cache_name)} and pass that path to clip.load."
        )
    return "\n".join(lines)
