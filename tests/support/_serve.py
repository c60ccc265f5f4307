"""`clip serve` as a user runs it, for tests/test_serve*.py and benchmarks/bench_serve.py.

* :func:`make_photos`: a folder of small generated photos (JPEG and PNG) and a CSV giving each a
  caption, ready for ``clip embed``;
* :class:`ServeProcess`: ``python -m clip serve ...`` in a subprocess on a free loopback port,
  waited for until /healthz answers, stopped with a signal;
* :func:`find_chromium`: Debian's ``chromium`` (or another Chromium-family browser) on PATH, and the
  flags that run it headless in a fresh profile with nothing reaching the network.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import httpx
import numpy as np
from _images import make_smooth_rgb

__all__ = ["make_photos", "free_port", "ServeProcess", "find_chromium", "chromium_command", "CAPTIONS"]

CAPTIONS = (
    "a red sunset over the sea",
    "a green meadow",
    "a blue door",
    "an orange cat on a sofa",
    "a grey city street",
    "a yellow field of flowers",
)
STARTUP_TIMEOUT = 60.0  # seconds for the server to answer /healthz (imports torch, loads the model)
STOP_TIMEOUT = 30.0
POLL = 0.1
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def make_photos(folder: Path, count: int = len(CAPTIONS)) -> Path:
    """Write `count` photo-like images into `folder` (every third a PNG) and ``folder/pairs.csv``
    (path, caption); return the CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,caption"]
    for index in range(count):
        name = f"photo{index}.{'png' if index % 3 == 2 else 'jpg'}"
        image = make_smooth_rgb((160 + 12 * index, 120 + 8 * index), np.random.default_rng([31, index]))
        image.save(folder / name)
        lines.append(f"{folder / name},{CAPTIONS[index % len(CAPTIONS)]}")
    table = folder / "pairs.csv"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return table


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServeProcess:
    """``python -m clip serve ARGS --port PORT``, started at once, running until :meth:`stop` (or the
    end of a with block); :meth:`wait_ready` waits until it answers.

    `url` is the server's base URL; `stderr` what it has printed (read after it stopped).
    """

    def __init__(self, args: Sequence[str], cwd: Optional[Path] = None, env: Optional[dict] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "clip", "serve", *args, "--port", str(self.port)]
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.returncode: Optional[int] = None

    def __enter__(self) -> "ServeProcess":
        return self  # started; wait_ready() waits for it to answer

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"clip serve exited with {self.process.returncode}:\n{self.output}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"clip serve did not answer within {STARTUP_TIMEOUT:.0f} s:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (once) and wait for the exit status."""
        if self.returncode is None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            try:
                self.returncode = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.returncode = self.process.wait()
        return self.returncode

    @property
    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")


def find_chromium() -> Optional[str]:
    """The path of a Chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_command(browser: str, profile: Path, *extra: str) -> List[str]:
    """`browser` headless in the fresh `profile` folder, with no sandbox, GPU, sync or updates."""
    return [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *extra,
    ]
