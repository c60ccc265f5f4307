"""Simulated file-system faults for the download tests."""

import errno
import os
from typing import Any


class DiskFullFile:
    """Wraps a real file; writes fail with ENOSPC once `capacity` bytes have been written."""

    def __init__(self, real: Any, capacity: int) -> None:
        self._real, self._left = real, capacity

    def write(self, data: bytes) -> int:
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __enter__(self) -> "DiskFullFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()
