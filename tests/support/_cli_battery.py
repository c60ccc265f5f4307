"""A harness for hostile command lines: run `clip` in a subprocess and judge how it failed.

`run_clip` runs ``python -m clip ARGS`` in a folder (no download permission, an empty weights cache,
warnings off) and returns a :class:`Ran`. It runs in a subprocess that stays up for the session
(tests/support/_cli_worker.py: torch and clip imported once, each command run as ``python -m clip`` runs it,
with its own environment, working folder and umask), so that a case costs its own work and not
four seconds of importing torch; ``fresh=True`` starts a new process for the one command instead.
`interrupt_clip` always starts a new process, to send it Ctrl-C. `snapshot` lists a folder's files
with their SHA256 and mode, to compare before and after. `assert_one_line_error` checks the
contract every subcommand keeps for expected failures: the exit status, exactly one
``clip ...: error: ...`` line on stderr that contains what the test names, and no traceback.
"""

import atexit
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

TIMEOUT_S = 180


@dataclass
class Ran:
    code: int
    out: str
    err: str


def clip_environment(cwd: Path, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CLIP_CACHE_DIR": str(cwd / ".empty-cache")}
    env.pop("CLIP_ALLOW_DOWNLOAD", None)
    env.update(extra or {})
    return env


def run_clip(
    args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None, fresh: bool = False
) -> Ran:
    """``python -m clip ARGS`` run in `cwd` (in the shared worker, or a new process if `fresh`)."""
    environment = clip_environment(cwd, env)
    if not fresh:
        return _worker().run([str(arg) for arg in args], cwd, environment)
    done = subprocess.run(
        [sys.executable, "-m", "clip", *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT_S,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


class _Worker:
    """The subprocess of tests/support/_cli_worker.py, fed one command line at a time."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("_cli_worker.py")
        environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            text=True,
            encoding="utf-8",
        )
        atexit.register(self.stop)

    def run(self, args: Sequence[str], cwd: Path, env: Dict[str, str]) -> Ran:
        umask = os.umask(0)
        os.umask(umask)  # read, not changed: the caller's umask is the command's
        request = {"args": list(args), "cwd": str(cwd), "env": env, "umask": umask}
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the clip worker died (exit status {self.process.poll()})"
        answer = json.loads(line)
        return Ran(answer["code"], answer["out"], answer["err"])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()


_shared: Optional[_Worker] = None


def _worker() -> _Worker:
    global _shared
    if _shared is None or not _shared.alive():
        _shared = _Worker()
    return _shared


def interrupt_clip(
    args: Sequence[str], cwd: Path, ready: Callable[[], bool], env: Optional[Dict[str, str]] = None
) -> Ran:
    """Start ``python -m clip ARGS``, send it SIGINT (Ctrl-C) once `ready()` is true, and wait."""
    process = subprocess.Popen(
        [sys.executable, "-m", "clip", *map(str, args)],
        cwd=cwd,
        env=clip_environment(cwd, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=TIMEOUT_S)
    return Ran(process.returncode, out, err)


def snapshot(folder: Path) -> Dict[str, Tuple[str, int]]:
    """Every file and folder below `folder`: relative path -> (SHA256 or "dir", permission bits)."""
    listing: Dict[str, Tuple[str, int]] = {}
    if not folder.exists():
        return listing
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            path = Path(root) / name
            listing[str(path.relative_to(folder))] = ("dir", path.stat().st_mode & 0o777)
        for name in files:
            path = Path(root) / name
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "special"
            listing[str(path.relative_to(folder))] = (digest, path.lstat().st_mode & 0o777)
    return listing


def assert_one_line_error(ran: Ran, code: int, *needles: str) -> str:
    """`ran` exited with `code`, printed no traceback and one ``clip...: error:`` line holding every
    one of `needles` (case-sensitive); returns that line."""
    assert "Traceback" not in ran.err, ran.err
    errors = [line for line in ran.err.splitlines() if line.startswith("clip") and ": error: " in line]
    assert len(errors) == 1, ran.err
    assert ran.code == code, (ran.code, ran.err)
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
