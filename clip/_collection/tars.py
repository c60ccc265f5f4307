"""webdataset ``.tar`` shards, as img2dataset writes them, read in place (never unpacked).

A sample is the members of a tar that share a key (the member name up to the first dot of its file
name): ``KEY.jpg`` / ``.jpeg`` / ``.png`` / ``.webp`` is the image, ``KEY.txt`` its caption and
``KEY.json`` its metadata (kept as text). Listing a tar reads its headers (seeking past the image
bytes) and the small ``.txt`` / ``.json`` members; an image is later read by its offset and size.
A sample whose image member is cut short by the end of the file, or that has no image, is listed
with its problem, so that the run reports it (tar and key) and goes on.
"""

import io
import os
import re
import tarfile
from typing import Dict, List, Optional, Sequence, Tuple

from .layout import CollectionError
from .runs import Item

__all__ = ["IMAGE_EXTENSIONS", "expand", "is_tar", "list_tars", "read_member", "read_tar_member"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
META_EXTENSION = "json"
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHOICE = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand(pattern: str) -> List[str]:
    """Brace patterns as webdataset and the shell spell them: ``{00000..00099}`` (zero padding kept
    from the first bound) and ``{a,b}``; several braces multiply out, in order."""
    found = [m for m in (_RANGE.search(pattern), _CHOICE.search(pattern)) if m is not None]
    if not found:
        return [pattern]
    match = min(found, key=lambda m: m.start())  # the leftmost brace varies slowest
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if match.re is _CHOICE:
        return [name for choice in match.group(1).split(",") for name in expand(f"{head}{choice}{tail}")]
    low, high = match.group(1), match.group(2)
    if int(high) < int(low):
        raise CollectionError(f"{pattern}: the range {match.group(0)} runs backwards")
    width = len(low) if low.startswith("0") else 0
    numbers = range(int(low), int(high) + 1)
    return [name for number in numbers for name in expand(f"{head}{number:0{width}d}{tail}")]


def is_tar(name: str) -> bool:
    """Whether `name` (a path or a brace pattern) names ``.tar`` shards."""
    return name.lower().endswith(".tar") or bool(re.search(r"\.tar\}?$", name.lower()))


def _split(name: str) -> Tuple[str, str]:
    """(key, extension) of a member name: the extension is what follows the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, extension.lower() if dot else ""


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _list_tar(tar: str) -> List[Item]:
    """The samples of one tar, in the order of their first member."""
    size = os.path.getsize(tar)
    samples: Dict[str, Dict[str, object]] = {}
    problem: Optional[str] = None
    with open(tar, "rb") as handle:
        try:
            archive = tarfile.open(fileobj=handle, mode="r:")
        except tarfile.TarError as exc:
            raise CollectionError(f"{tar}: not a tar file ({exc}); pass webdataset .tar shards") from exc
        while True:
            try:
                member = archive.next()
            except tarfile.TarError as exc:
                problem = f"the tar is damaged after this point ({exc})"
                break
            if member is None:
                break
            if not member.isfile():
                continue
            key, extension = _split(member.name)
            sample = samples.setdefault(key, {})
            if member.offset_data + member.size > size:
                sample["problem"] = f"{member.name} is truncated (the tar ends inside it)"
            elif extension in IMAGE_EXTENSIONS and "image" not in sample:
                sample["image"] = (member.name, member.offset_data, member.size)
            elif extension in (CAPTION_EXTENSION, META_EXTENSION):
                extracted = archive.extractfile(member)
                if extracted is not None:
                    sample[extension] = _text(extracted.read()).rstrip("\n")
    items = []
    for key, sample in samples.items():
        image = sample.get("image")
        reason = sample.get("problem")
        if image is None and reason is None:
            reason = f"no image member ({', '.join('.' + e for e in IMAGE_EXTENSIONS)})"
        name, offset, length = image if image is not None else (f"{key}.?", None, None)  # type: ignore[misc]
        items.append(
            Item(
                path=f"{tar}/{name}",
                caption=sample.get(CAPTION_EXTENSION),  # type: ignore[arg-type]
                tar=tar,
                key=key,
                offset=offset,
                size=length,
                meta=sample.get(META_EXTENSION),  # type: ignore[arg-type]
                problem=reason,  # type: ignore[arg-type]
            )
        )
    if problem is not None:
        items.append(Item(path=f"{tar}/...", tar=tar, key="(the rest of the tar)", problem=problem))
    return items


def list_tars(sources: Sequence[str]) -> Tuple[List[Item], bool, List[Tuple[int, int]]]:
    """The samples of the tars named by `sources` (paths or brace patterns), whether any has a
    caption, and the item range ``[start, stop)`` of each tar (a tar is a shard: the unit of
    resuming and of splitting over torchrun's processes). Paths are made absolute."""
    tars: List[str] = []
    for source in sources:
        tars.extend(os.path.abspath(name) for name in expand(source))
    missing = [name for name in tars if not os.path.isfile(name)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CollectionError(f"{missing[0]}: no such file{more}; check the shard names or the brace pattern")
    if len(set(tars)) != len(tars):
        raise CollectionError("a tar is named twice in SRC; name each shard once")
    items: List[Item] = []
    bounds = []
    for tar in tars:
        samples = _list_tar(tar)
        bounds.append((len(items), len(items) + len(samples)))
        items.extend(samples)
    captions = any(item.caption is not None for item in items)
    if captions:
        items = [item if item.caption is not None else _with_caption(item, "") for item in items]
    return items, captions, bounds


def _with_caption(item: Item, caption: str) -> Item:
    return Item(item.path, caption, item.tar, item.key, item.offset, item.size, item.meta, item.problem)


def read_member(item: Item) -> io.BytesIO:
    """The bytes of a tar sample's image member; an OSError when the file holds fewer."""
    assert item.tar is not None and item.offset is not None and item.size is not None
    with open(item.tar, "rb") as handle:
        handle.seek(item.offset)
        data = handle.read(item.size)
    if len(data) != item.size:
        raise OSError(f"truncated: {len(data)} of {item.size} bytes")
    return io.BytesIO(data)


def read_tar_member(tar: str, name: str) -> bytes:
    """The bytes of member `name` of `tar`, found by reading the tar's headers (seeking past the
    other members' data); an OSError when the tar or the member is gone, or the member is cut short."""
    try:
        with tarfile.open(tar, mode="r:") as archive:
            member = archive.getmember(name)
            extracted = archive.extractfile(member)
            data = extracted.read() if extracted is not None else b""
    except KeyError:
        raise FileNotFoundError(f"{tar} holds no member {name}") from None
    except tarfile.TarError as exc:
        raise OSError(f"{tar} cannot be read as a tar ({exc})") from exc
    if len(data) != member.size:
        raise OSError(f"{tar}: {name} is truncated ({len(data)} of {member.size} bytes)")
    return data
