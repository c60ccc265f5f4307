"""Writing an output so that a reader finds the old file or the whole new one, never a part of one.

`replacing(path)` gives a temporary path beside `path`; what is written there replaces `path` in one
rename when the block ends, or is removed on any error or Ctrl-C. The file gets the mode a plain
``open(path, "w")`` would give it (0666 less the umask), not tempfile's private 0600.
`replacing_folder(path)` does the same for a folder: written whole beside `path`, then swapped in.
`interrupts_held()` holds Ctrl-C back for the few steps that swap an output into place.
"""

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from typing import Any, Callable, Iterator, List, Optional, Union

__all__ = ["file_mode", "directory_mode", "replacing", "replacing_folder", "interrupts_held"]

ALL_FILE_BITS = 0o666  # what open() asks for; the umask takes bits away
ALL_DIRECTORY_BITS = 0o777  # what mkdir() asks for


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()`` under the current umask (0644 under umask 022)."""
    return ALL_FILE_BITS & ~_umask()


def directory_mode() -> int:
    """The mode a new folder gets from ``mkdir()`` under the current umask (0755 under umask 022)."""
    return ALL_DIRECTORY_BITS & ~_umask()


@contextlib.contextmanager
def replacing(path: "Union[str, os.PathLike[str]]", prefix: Optional[str] = None) -> Iterator[str]:
    """A fresh temporary path in `path`'s folder; when the block ends, the file written there takes
    `path`'s place (mode: see `file_mode`). On an error or Ctrl-C it is removed, `path` untouched.

    The temporary file's name starts with `prefix` (default: ``.NAME.``, NAME being `path`'s) and
    ends with ``.tmp``: a writer that sweeps its own leftovers names them with its prefix.
    """
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}." if prefix is None else prefix, suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def replacing_folder(
    path: "Union[str, os.PathLike[str]]",
    suffix: str = "",
    before_swap: Optional[Callable[[], None]] = None,
) -> Iterator[str]:
    """A fresh folder beside `path` (named ``.NAME.<random><suffix>``, mode: see `directory_mode`);
    when the block ends, `before_swap` (if any) runs, then the folder takes `path`'s place, an old
    `path` being moved aside first and removed only once the new one is in (Ctrl-C held meanwhile).
    On an error or Ctrl-C, the new folder is removed and `path` is left as it was."""
    target = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(target)
    scratch = tempfile.mkdtemp(prefix=f".{base}.", suffix=suffix, dir=parent)
    try:
        os.chmod(scratch, directory_mode())  # mkdtemp's folders are private (0700)
        yield scratch
        if before_swap is not None:
            before_swap()
        with interrupts_held():
            _swap_folder_in(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _swap_folder_in(scratch: str, path: str) -> None:
    """Put the folder `scratch` at `path`; an old `path` is moved aside first and removed only after."""
    if not os.path.lexists(path):
        os.replace(scratch, path)
        return
    parent, base = os.path.split(path)
    aside = tempfile.mkdtemp(prefix=f".{base}.replaced.", dir=parent)
    os.replace(path, aside)  # onto an empty folder: allowed
    try:
        os.replace(scratch, path)
    except BaseException:
        os.replace(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) during the block takes effect when it ends: steps that must not be cut apart.

    Only the main thread receives signals in Python; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt
