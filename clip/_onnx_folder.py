"""The export folder of `clip.export.to_onnx`: checked before any work, written beside its final place
and renamed into it whole, so that OUT_DIR holds either what it held before or a complete export.

An existing OUT_DIR is replaced only when it is empty, or with `force` when it holds nothing but an
earlier export's files; never a folder of other files, the working folder or a folder above it.
"""

import contextlib
import os
import tempfile
from typing import Iterator, Union

from ._atomic import replacing_folder

__all__ = ["EXPORT_FILES", "check_destination", "writing_folder"]

GRAPH_FILES = ("visual.onnx", "textual.onnx")
METADATA_FILE = "clip_export.json"
# everything an export may hold: the graphs, their weights when kept beside them, the metadata
EXPORT_FILES = (*GRAPH_FILES, *(f"{name}.data" for name in GRAPH_FILES), METADATA_FILE)
NAMES_SHOWN = 3  # files of a refused folder named in the message


def check_destination(
    out_dir: "Union[str, os.PathLike[str]]", force: bool, force_hint: str = "force=True"
) -> None:
    """Raise an OSError (FileNotFoundError, PermissionError, NotADirectoryError, FileExistsError) with
    a message saying what to do when `out_dir` cannot take an export; `force_hint` is how the caller
    asks for replacing an earlier export (``force=True``, ``--force``)."""
    shown = os.fspath(out_dir)
    path = os.path.abspath(shown)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        state = "is not a folder" if os.path.exists(parent) else "does not exist"
        raise FileNotFoundError(f"cannot write {shown}: its folder {parent} {state}; create it first")
    try:
        with tempfile.TemporaryDirectory(dir=parent):
            pass
    except OSError as exc:
        raise PermissionError(
            f"cannot write {shown}: no folder can be created in {parent} ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from exc
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise NotADirectoryError(f"{shown} exists and is not a folder; name a new or empty folder")
    entries = sorted(os.listdir(path))
    if not entries:
        return
    here = os.path.realpath(os.getcwd())
    target = os.path.realpath(path)
    if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
        raise FileExistsError(
            f"{shown} is the working folder or a folder above it; name a new or empty folder"
        )
    others = [name for name in entries if name not in EXPORT_FILES]
    if others:
        more = f" and {len(others) - NAMES_SHOWN} more" if len(others) > NAMES_SHOWN else ""
        raise FileExistsError(
            f"{shown} exists and holds other files than an export "
            f"({', '.join(map(repr, others[:NAMES_SHOWN]))}{more}); name a new or empty folder "
            f"({force_hint} replaces only an earlier export)"
        )
    if not force:
        raise FileExistsError(f"{shown} holds an earlier export; pass {force_hint} to replace it")


@contextlib.contextmanager
def writing_folder(out_dir: "Union[str, os.PathLike[str]]", force: bool) -> Iterator[str]:
    """A fresh folder beside `out_dir` to write the export into; when the block ends it takes
    `out_dir`'s place (checked again with `check_destination` first). On an error or Ctrl-C it is
    removed and `out_dir` is left as it was."""
    with replacing_folder(
        out_dir, suffix=".partial", before_swap=lambda: check_destination(out_dir, force)
    ) as scratch:
        yield scratch
