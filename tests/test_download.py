"""Tests for `clip._weights.download`: verified, resumable, lock-protected downloads.

Every test serves a few hundred KB of random bytes from a local HTTP server (tests/support/_http_server.py)
at ``http://127.0.0.1:<port>/<sha256>/<name>.pt``, the layout of the release's URLs.
"""

import builtins
import errno
import hashlib
import json
import os
import pickle
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from _faults import DiskFullFile
from _http_server import HTML_PAGE, OMIT_LENGTH, FileServer, sha256_hex

import clip._weights.download as dl
from clip._weights.download import DownloadError, _download, default_cache_dir

PAYLOAD_BYTES = 300 * 1024
MODULE_FILE = Path(dl.__file__).resolve()
POSIX = sys.platform != "win32"
REDOWNLOAD_WARNING = "exists, but the SHA256 checksum does not match; re-downloading the file"


@pytest.fixture
def payload() -> bytes:
    return random.Random(1234).randbytes(PAYLOAD_BYTES)


@pytest.fixture(autouse=True)
def _bounded_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug must fail fast, never hang the suite for the 30 s default.
    monkeypatch.setenv(dl.TIMEOUT_ENV, "5")


def _files(root: Path) -> List[str]:
    return sorted(p.name for p in root.iterdir())


def _assert_nothing_final(root: Path, name: str, partial_kept: bool = False) -> None:
    """Nothing at the final path, no marker, no lock; a partial file only where expected."""
    expected = [name + dl.PARTIAL_SUFFIX] if partial_kept else []
    assert _files(root) == expected


def _assert_helpful(err: DownloadError, url: str, target: Path) -> None:
    text = str(err)
    assert url in text
    assert str(target) in text
    assert f"download it from {url} and save it as {target}" in text
    assert "download_root=" in text
    assert (err.url, err.path) == (url, str(target))


# ----------------------------------------------------------------------------------------------
# Fresh download, cache reuse, trust marker


def test_fresh_download(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("RN50.pt", payload)
    path = _download(url, str(tmp_path))

    assert path == os.path.join(str(tmp_path), "RN50.pt")
    assert Path(path).read_bytes() == payload
    assert _files(tmp_path) == ["RN50.pt", "RN50.pt" + dl.VERIFIED_SUFFIX]
    marker = json.loads(Path(path + dl.VERIFIED_SUFFIX).read_text())
    st = os.stat(path)
    assert marker == {"sha256": sha256_hex(payload), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    (request,) = http_server.requests
    assert request.range is None


def test_creates_missing_root(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload)
    root = tmp_path / "deep" / "cache"
    assert Path(_download(url, str(root))).read_bytes() == payload


def test_cached_file_reused_without_network(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload)
    first = _download(url, str(tmp_path))
    http_server.clear_log()
    http_server.stop()  # any network access would now fail loudly

    assert _download(url, str(tmp_path)) == first
    assert http_server.requests == []


def test_file_placed_by_hand_is_verified_and_reused(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    url = http_server.add_model("a.pt", payload)
    (tmp_path / "a.pt").write_bytes(payload)

    assert Path(_download(url, str(tmp_path))).read_bytes() == payload
    assert http_server.requests == []
    assert (tmp_path / ("a.pt" + dl.VERIFIED_SUFFIX)).is_file()


class _HashSpy:
    """Counts SHA256 objects created and files opened for reading, while the test runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hashers = 0
        self.opened: List[str] = []
        real_sha256, real_open = hashlib.sha256, builtins.open

        def sha256(*args: Any, **kwargs: Any) -> Any:
            self.hashers += 1
            return real_sha256(*args, **kwargs)

        def spy_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            self.opened.append(str(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(hashlib, "sha256", sha256)
        monkeypatch.setattr(builtins, "open", spy_open)


def test_trust_marker_skips_rehashing(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add_model("a.pt", payload)
    path = _download(url, str(tmp_path))
    spy = _HashSpy(monkeypatch)

    assert _download(url, str(tmp_path)) == path
    assert spy.hashers == 0
    assert path not in spy.opened  # the checkpoint itself was not read
    assert path + dl.VERIFIED_SUFFIX in spy.opened  # ... only its marker


def test_trust_marker_invalidated_by_mtime_change(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add_model("a.pt", payload)
    path = _download(url, str(tmp_path))
    http_server.clear_log()
    st = os.stat(path)
    new_mtime = st.st_mtime_ns + 5 * 10**9
    os.utime(path, ns=(st.st_atime_ns, new_mtime))
    spy = _HashSpy(monkeypatch)

    assert _download(url, str(tmp_path)) == path
    assert spy.hashers == 1 and path in spy.opened  # full check of the unchanged content
    assert http_server.requests == []
    assert json.loads(Path(path + dl.VERIFIED_SUFFIX).read_text())["mtime_ns"] == new_mtime

    spy.hashers, spy.opened = 0, []
    assert _download(url, str(tmp_path)) == path  # trusted again after re-verification
    assert spy.hashers == 0


def test_trust_marker_invalidated_by_size_change(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    url = http_server.add_model("a.pt", payload)
    path = _download(url, str(tmp_path))
    st = os.stat(path)
    with open(path, "ab") as handle:
        handle.write(b"tail")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the size differs now
    http_server.clear_log()

    with pytest.warns(UserWarning, match=re.escape(REDOWNLOAD_WARNING)):
        assert _download(url, str(tmp_path)) == path
    assert Path(path).read_bytes() == payload
    assert len(http_server.requests) == 1


def test_marker_for_another_checksum_is_not_trusted(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    url = http_server.add_model("a.pt", payload)
    target = tmp_path / "a.pt"
    target.write_bytes(b"not the model")
    st = os.stat(target)
    forged = {"sha256": "0" * 64, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    Path(str(target) + dl.VERIFIED_SUFFIX).write_text(json.dumps(forged))

    with pytest.warns(UserWarning, match=re.escape(REDOWNLOAD_WARNING)):
        _download(url, str(tmp_path))
    assert target.read_bytes() == payload


def test_corrupted_cached_file_is_redownloaded_with_warning(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    url = http_server.add_model("a.pt", payload)
    (tmp_path / "a.pt").write_bytes(b"\0" * 1000)

    with pytest.warns(UserWarning, match=re.escape(f"{tmp_path / 'a.pt'} {REDOWNLOAD_WARNING}")):
        path = _download(url, str(tmp_path))
    assert Path(path).read_bytes() == payload
    assert len(http_server.requests) == 1


# ----------------------------------------------------------------------------------------------
# Interrupted downloads and resuming


def test_interrupted_download_resumes_with_range(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    cut = 100_000
    url = http_server.add_model("a.pt", payload, cut_after=cut, cut_times=1)
    target = tmp_path / "a.pt"

    with pytest.raises(DownloadError, match=f"closed after {cut} of {len(payload)} bytes") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, target)
    _assert_nothing_final(tmp_path, "a.pt", partial_kept=True)
    assert Path(str(target) + dl.PARTIAL_SUFFIX).read_bytes() == payload[:cut]

    assert _download(url, str(tmp_path)) == str(target)
    first, second = http_server.requests
    assert first.range is None and second.range == f"bytes={cut}-"
    assert target.read_bytes() == payload
    assert _files(tmp_path) == ["a.pt", "a.pt" + dl.VERIFIED_SUFFIX]


def test_server_ignoring_range_restarts_from_zero(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    url = http_server.add_model("a.pt", payload, accept_ranges=False, cut_after=50_000, cut_times=1)
    with pytest.raises(DownloadError):
        _download(url, str(tmp_path))

    path = _download(url, str(tmp_path))
    assert http_server.requests[-1].range == "bytes=50000-"  # asked, got a 200 with everything
    assert Path(path).read_bytes() == payload
    assert _files(tmp_path) == ["a.pt", "a.pt" + dl.VERIFIED_SUFFIX]


def test_corrupt_partial_is_discarded(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload)
    Path(tmp_path / ("a.pt" + dl.PARTIAL_SUFFIX)).write_bytes(b"x" * 4096)

    with pytest.raises(DownloadError, match="SHA256 checksum .* does not match") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    assert http_server.requests[-1].range == "bytes=4096-"
    _assert_nothing_final(tmp_path, "a.pt")  # the bad partial is gone: the next call starts over

    assert Path(_download(url, str(tmp_path))).read_bytes() == payload
    assert http_server.requests[-1].range is None


def test_complete_partial_is_finished_after_416(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    # A download killed between its last byte and the rename: the server has nothing left to send.
    url = http_server.add_model("a.pt", payload)
    Path(tmp_path / ("a.pt" + dl.PARTIAL_SUFFIX)).write_bytes(payload)

    assert Path(_download(url, str(tmp_path))).read_bytes() == payload
    (request,) = http_server.requests
    assert request.range == f"bytes={len(payload)}-"


# ----------------------------------------------------------------------------------------------
# Server errors and hostile responses


def test_wrong_bytes_raise_and_leave_nothing(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload, served=payload[::-1])
    caught = None
    try:  # code written for the original catches the RuntimeError it raised for a bad checksum
        _download(url, str(tmp_path))
    except RuntimeError as exc:
        caught = exc
    assert isinstance(caught, DownloadError), caught
    assert "does not match the expected " + sha256_hex(payload) in str(caught)
    assert "HTML" not in str(caught)
    _assert_helpful(caught, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt")


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_status(http_server: FileServer, payload: bytes, tmp_path: Path, status: int) -> None:
    url = http_server.add_model("a.pt", payload, status=status)
    with pytest.raises(DownloadError, match=f"HTTP {status}") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt")


def test_connection_refused(tmp_path: Path, payload: bytes) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{sha256_hex(payload)}/a.pt"
    with pytest.raises(DownloadError, match="download failed") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt")


@pytest.mark.parametrize("stall_after", [None, 64 * 1024], ids=["before-headers", "mid-body"])
def test_stalled_server_times_out(
    http_server: FileServer,
    payload: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stall_after: Any,
) -> None:
    timeout_s, stall_s = 0.5, 10.0
    monkeypatch.setenv(dl.TIMEOUT_ENV, str(timeout_s))
    url = http_server.add_model("a.pt", payload, stall_s=stall_s, stall_after=stall_after)

    start = time.monotonic()
    with pytest.raises(DownloadError, match="timeout") as info:
        _download(url, str(tmp_path))
    elapsed = time.monotonic() - start
    assert elapsed < 5 * timeout_s
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt", partial_kept=stall_after is not None)


def test_redirect_is_followed(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add(f"/{sha256_hex(payload)}/a.pt", status=302, location="/blobs/0001")
    http_server.add("/blobs/0001", payload)

    path = _download(url, str(tmp_path))
    assert path == str(tmp_path / "a.pt")  # named after the URL we were given, not the redirect
    assert Path(path).read_bytes() == payload
    assert [r.path for r in http_server.requests] == [f"/{sha256_hex(payload)}/a.pt", "/blobs/0001"]


def test_fewer_bytes_than_content_length(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    announced = len(payload) + 1000
    url = http_server.add_model("a.pt", payload, declared_length=announced)
    with pytest.raises(DownloadError, match=f"closed after {len(payload)} of {announced} bytes") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt", partial_kept=True)

    http_server.route(url).declared_length = None  # the server is fixed: the resume finishes it
    assert Path(_download(url, str(tmp_path))).read_bytes() == payload


def test_more_bytes_than_content_length(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload, declared_length=len(payload) - 1000)
    with pytest.raises(DownloadError, match="SHA256 checksum .* does not match") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt")


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_instead_of_file(
    http_server: FileServer, payload: bytes, tmp_path: Path, content_type: str
) -> None:
    url = http_server.add_model("a.pt", payload, served=HTML_PAGE, content_type=content_type)
    with pytest.raises(DownloadError, match="HTML page") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt")


def test_missing_content_length(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = _record_tqdm(monkeypatch)
    url = http_server.add_model("a.pt", payload, declared_length=OMIT_LENGTH)
    assert Path(_download(url, str(tmp_path))).read_bytes() == payload
    assert bars[0]["total"] is None


# ----------------------------------------------------------------------------------------------
# Disk problems


def _deny_writes_under(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a read-only directory (chmod does not stop root): every write under it fails."""
    prefix = str(root) + os.sep
    real_os_open, real_open = os.open, builtins.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path: Any) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(prefix)

    def denied(path: Any) -> OSError:
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if inside(path) and flags & write_flags:
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if inside(file) and any(c in mode for c in "wax+"):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    def guard(real: Any) -> Any:
        def fake(path: Any, *args: Any, **kwargs: Any) -> Any:
            if inside(path):
                raise denied(path)
            return real(path, *args, **kwargs)

        return fake

    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    for name in ("replace", "rename", "remove", "unlink", "mkdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))


def test_read_only_cache_without_the_file(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add_model("a.pt", payload)
    _deny_writes_under(tmp_path, monkeypatch)
    with pytest.raises(DownloadError, match="not writable") as info:
        _download(url, str(tmp_path))
    monkeypatch.undo()
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    assert http_server.requests == []
    assert _files(tmp_path) == []


def test_read_only_cache_with_the_file(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shared, read-only model directory prepared by hand: usable, verified, no network.
    url = http_server.add_model("a.pt", payload)
    (tmp_path / "a.pt").write_bytes(payload)
    _deny_writes_under(tmp_path, monkeypatch)
    assert _download(url, str(tmp_path)) == str(tmp_path / "a.pt")
    monkeypatch.undo()
    assert http_server.requests == []
    assert _files(tmp_path) == ["a.pt"]


def test_read_only_cache_trusts_its_marker(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Verified once while writable; later read-only: no lock, no hashing, no network.
    url = http_server.add_model("a.pt", payload)
    path = _download(url, str(tmp_path))
    http_server.clear_log()
    _deny_writes_under(tmp_path, monkeypatch)
    spy = _HashSpy(monkeypatch)
    assert _download(url, str(tmp_path)) == path
    assert spy.hashers == 0 and path not in spy.opened
    monkeypatch.undo()
    assert http_server.requests == []


def test_read_only_cache_with_a_corrupt_file(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add_model("a.pt", payload)
    (tmp_path / "a.pt").write_bytes(b"junk")
    _deny_writes_under(tmp_path, monkeypatch)
    with pytest.raises(DownloadError, match="checksum does not match.*not writable") as info:
        _download(url, str(tmp_path))
    monkeypatch.undo()
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    assert (tmp_path / "a.pt").read_bytes() == b"junk"


def _chmod_restricts_us(scratch: Path) -> bool:
    """False where a 0o555 directory stays writable to this process (root, CAP_DAC_OVERRIDE)."""
    probe = scratch / "chmod-probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "file").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


@pytest.mark.skipif(not POSIX, reason="POSIX permissions")
def test_read_only_cache_real_chmod(
    http_server: FileServer, payload: bytes, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not _chmod_restricts_us(tmp_path_factory.mktemp("probe")):
        pytest.skip("chmod does not restrict this process (root): covered by the simulated tests above")
    url = http_server.add_model("a.pt", payload)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DownloadError, match="not writable"):
            _download(url, str(tmp_path))
    finally:
        tmp_path.chmod(0o755)
    assert _files(tmp_path) == []


def test_disk_full_while_writing(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add_model("a.pt", payload)
    real_open = builtins.open

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(dl.PARTIAL_SUFFIX) and "b" in mode and mode[0] in "wa":
            return DiskFullFile(handle, capacity=100_000)
        return handle

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(DownloadError, match="No space left on device") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt")  # the half-written temp file is removed


def test_rename_failure_leaves_nothing(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add_model("a.pt", payload)
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if str(src).endswith(dl.PARTIAL_SUFFIX):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DownloadError, match="into place") as info:
        _download(url, str(tmp_path))
    _assert_helpful(info.value, url, tmp_path / "a.pt")
    _assert_nothing_final(tmp_path, "a.pt")


# ----------------------------------------------------------------------------------------------
# Concurrency and locking

# A child process that loads clip/_weights/download.py without the clip package (no torch import:
# fast to start): a stand-in package over clip/_weights/ lets it import its sibling sniff.py.
_CHILD_PRELUDE = textwrap.dedent(
    """
    import importlib.util, os, sys, types
    package = types.ModuleType("weights_under_test")
    package.__path__ = [os.path.dirname(sys.argv[1])]
    sys.modules[package.__name__] = package
    spec = importlib.util.spec_from_file_location("weights_under_test.download", sys.argv[1])
    dl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dl)
    assert "torch" not in sys.modules
    """
)
_CHILD_DOWNLOAD = _CHILD_PRELUDE + textwrap.dedent(
    """
    print("ready", flush=True)
    sys.stdin.readline()
    print(dl._download(sys.argv[2], sys.argv[3]), flush=True)
    """
)
_CHILD_HOLD_LOCK = _CHILD_PRELUDE + textwrap.dedent(
    """
    lock = dl._acquire_lock(sys.argv[2])
    lock.__enter__()
    print("locked", flush=True)
    import time
    time.sleep(60)
    """
)


def _spawn(script: str, *args: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, "-c", script, str(MODULE_FILE), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CLIP_DOWNLOAD_TIMEOUT": "10"},
    )


def test_ten_processes_download_once(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload, chunk_delay_s=0.02)  # ~0.4 s: the calls overlap
    children = [_spawn(_CHILD_DOWNLOAD, url, str(tmp_path)) for _ in range(10)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:  # release all of them at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [child.returncode for child in children] == [0] * 10, [err for _, err in results]
    assert {out.strip() for out, _ in results} == {str(tmp_path / "a.pt")}
    assert (tmp_path / "a.pt").read_bytes() == payload
    assert _files(tmp_path) == ["a.pt", "a.pt" + dl.VERIFIED_SUFFIX]  # no .lock, no .partial
    assert len(http_server.requests_for(url)) == 1  # the others waited, then reused the file


def test_threads_download_once(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload, chunk_delay_s=0.01)
    results: Dict[int, Any] = {}

    def worker(i: int) -> None:
        try:
            results[i] = _download(url, str(tmp_path))
        except Exception as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert set(results.values()) == {str(tmp_path / "a.pt")}
    assert len(http_server.requests_for(url)) == 1
    assert _files(tmp_path) == ["a.pt", "a.pt" + dl.VERIFIED_SUFFIX]


@pytest.mark.skipif(not POSIX, reason="SIGKILL is POSIX")
def test_lock_blocks_then_recovers_from_killed_holder(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    url = http_server.add_model("a.pt", payload)
    lock_path = str(tmp_path / ("a.pt" + dl.LOCK_SUFFIX))
    holder = _spawn(_CHILD_HOLD_LOCK, lock_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        outcome: Dict[str, Any] = {}
        waiter = threading.Thread(target=lambda: outcome.update(path=_download(url, str(tmp_path))))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and http_server.requests == []  # the lock holds it back
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        waiter.join(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert not waiter.is_alive()
    assert outcome["path"] == str(tmp_path / "a.pt")
    assert (tmp_path / "a.pt").read_bytes() == payload


@pytest.mark.skipif(not POSIX, reason="SIGKILL is POSIX")
def test_stale_lock_and_partial_of_killed_process(
    http_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    url = http_server.add_model("a.pt", payload)
    lock_path = tmp_path / ("a.pt" + dl.LOCK_SUFFIX)
    partial_path = tmp_path / ("a.pt" + dl.PARTIAL_SUFFIX)
    partial_path.write_bytes(payload[:50_000])  # what the killed download had received
    holder = _spawn(_CHILD_HOLD_LOCK, str(lock_path))
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)
    assert lock_path.exists()  # left behind by the killed holder

    start = time.monotonic()
    assert Path(_download(url, str(tmp_path))).read_bytes() == payload
    assert time.monotonic() - start < 5
    (request,) = http_server.requests
    assert request.range == "bytes=50000-"
    assert _files(tmp_path) == ["a.pt", "a.pt" + dl.VERIFIED_SUFFIX]


# ----------------------------------------------------------------------------------------------
# Progress bar


def _record_tqdm(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    bars: List[Dict[str, Any]] = []

    class FakeTqdm:
        def __init__(self, **kwargs: Any) -> None:
            self.record = {**kwargs, "updated": 0}
            bars.append(self.record)

        def update(self, n: int) -> None:
            self.record["updated"] += n

        def __enter__(self) -> "FakeTqdm":
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(dl, "tqdm", FakeTqdm)
    return bars


def test_progress_bar_configuration(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = _record_tqdm(monkeypatch)
    url = http_server.add_model("a.pt", payload, cut_after=10_000, cut_times=1)
    with pytest.raises(DownloadError):
        _download(url, str(tmp_path))
    _download(url, str(tmp_path))

    first, resumed = bars
    for bar in bars:
        assert bar["total"] == len(payload)
        assert (bar["unit"], bar["unit_scale"], bar["unit_divisor"], bar["ncols"]) == ("iB", True, 1024, 80)
    assert (first["initial"], first["updated"]) == (0, 10_000)
    assert (resumed["initial"], resumed["updated"]) == (10_000, len(payload) - 10_000)


# ----------------------------------------------------------------------------------------------
# Configuration and argument checks


def test_default_cache_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(dl.CACHE_DIR_ENV, str(tmp_path / "models"))
    assert default_cache_dir() == str(tmp_path / "models")
    monkeypatch.setenv(dl.CACHE_DIR_ENV, "~/elsewhere")  # read at call time, "~" expanded
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "elsewhere")


def test_default_cache_dir_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(dl.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # ignored, as by the original
    assert default_cache_dir() == str(tmp_path / ".cache" / "clip")
    monkeypatch.setenv(dl.CACHE_DIR_ENV, "")
    assert default_cache_dir() == str(tmp_path / ".cache" / "clip")


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_invalid_timeout_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.setenv(dl.TIMEOUT_ENV, value)
    url = f"http://127.0.0.1:9/{'0' * 64}/a.pt"
    with pytest.raises(ValueError, match=dl.TIMEOUT_ENV):
        _download(url, str(tmp_path))


def test_url_without_checksum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SHA256"):
        _download("http://127.0.0.1:9/models/a.pt", str(tmp_path))


def test_target_is_a_directory(http_server: FileServer, payload: bytes, tmp_path: Path) -> None:
    url = http_server.add_model("a.pt", payload)
    (tmp_path / "a.pt").mkdir()
    with pytest.raises(RuntimeError, match="is not a regular file"):
        _download(url, str(tmp_path))
    assert http_server.requests == []


def test_unreadable_cached_file_is_not_replaced(
    http_server: FileServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add_model("a.pt", payload)
    target = tmp_path / "a.pt"
    target.write_bytes(payload)
    real_open = builtins.open

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(DownloadError, match="cannot read the cached file") as info:
        _download(url, str(tmp_path))
    monkeypatch.undo()
    _assert_helpful(info.value, url, target)
    assert target.read_bytes() == payload and http_server.requests == []
    assert _files(tmp_path) == ["a.pt"]


def test_download_error_pickles(tmp_path: Path) -> None:
    err = DownloadError("it broke", "http://example.invalid/x/a.pt", str(tmp_path / "a.pt"))
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), str(clone), clone.url, clone.path) == (DownloadError, str(err), err.url, err.path)
