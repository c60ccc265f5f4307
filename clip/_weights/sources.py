"""Where the weights of a released model name come from, in order.

1. What is already on disk: the release file in the clip cache, a hub copy fetched earlier into
   the clip cache, then a copy in the Hugging Face cache of open_clip or transformers users (read
   in place).
2. The release URL, verified by the SHA256 in it.
3. The hub copies through ``$HF_ENDPOINT``, verified against the SHA256 and size the hub announces
   (skipped with ``HF_HUB_OFFLINE=1``).

``CLIP_WEIGHTS_SOURCE=release`` keeps to the release's file and URL, ``hub`` to the hub copies,
``auto`` (the default) tries everything. Any source other than the release file is named in a
warning. When every source fails, one :class:`DownloadError` lists each with the reason.
"""

import logging
import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

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

__all__ = ["SOURCE_ENV", "Located", "weights_source", "find_on_disk", "fetch_weights"]

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


def fetch_weights(name: str, url: str, hub_files: Sequence[HubFile], root: str) -> Located:
    """A verified file with the weights of the released model `name`, from the first source that
    provides one (see the module's docstring); warns when it is not the release's own file.

    Raises:
        DownloadError: every allowed source failed; the message lists each and why.
        ValueError: ``CLIP_WEIGHTS_SOURCE`` or ``CLIP_DOWNLOAD_TIMEOUT`` is invalid.
    """
    located = find_on_disk(url, hub_files, root)
    mode = weights_source()
    release_target = os.path.join(root, os.path.basename(url))
    failures: List[Tuple[str, str]] = []
    if located is None and mode != HUB:
        try:
            located = Located(_download(url, root), "the release URL", True)
        except DownloadError as exc:
            failures.append((f"release URL {url}", exc.problem))
    if located is None and mode != RELEASE:
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
            located = Located(path, f"the hub copy {hub_file.url(endpoint)}", False)
            break
    elif located is None:
        failures.append(("hub copies", f"skipped ({SOURCE_ENV}={RELEASE})"))
    if located is None:
        raise DownloadError(_failure_report(name, failures, hub_files, root), url, release_target)
    if not located.is_release_file:
        warnings.warn(f"clip.load({name!r}): using {located.source} ({located.path})", stacklevel=4)
    logger.info("weights of %s: %s (%s)", name, located.path, located.source)
    return located


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
