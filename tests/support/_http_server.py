"""A small threaded HTTP file server on 127.0.0.1 for download tests.

Serves a dict of ``{path: Route}``; each route says how to misbehave. Reusable by any test file::

    with FileServer() as server:
        url = server.add_model("RN50.pt", payload)               # /<sha256 of payload>/RN50.pt
        url = server.add_model("x.pt", payload, cut_after=1000, cut_times=1)
        ...
        assert server.requests == []                              # "no network access"

Route options (combine freely):

* ``status``: 200 by default; 404/500/... send a short error body; 301/302/307 redirect to
  ``location``.
* ``accept_ranges``: honour ``Range: bytes=a-[b]`` with 206 (default) or ignore it and send 200.
* ``cut_after`` / ``cut_times``: close the connection after that many body bytes, on the first
  ``cut_times`` requests (None: every request).
* ``declared_length``: the Content-Length header to send instead of the true one (larger: the
  server sends fewer bytes than announced; smaller: more), or ``OMIT_LENGTH`` for none.
* ``stall_s`` / ``stall_after``: sleep that long before the response (``stall_after=None``) or
  after that many body bytes.
* ``chunk_delay_s``: sleep between chunks of ``CHUNK_BYTES`` (a slow server, for races).
* ``content_type`` and extra ``headers`` (sent with redirects too).

`FileServer.add_hub_file` serves a file the way the Hugging Face hub serves weights: a 302 from
``/{repo}/resolve/main/{file}`` to a storage URL, announcing ``X-Linked-Etag`` / ``X-Linked-Size``.
"""

import hashlib
import http.server
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

__all__ = ["FileServer", "Route", "RequestRecord", "OMIT_LENGTH", "HTML_PAGE", "sha256_hex"]

OMIT_LENGTH = "omit"
CHUNK_BYTES = 16 * 1024
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    b"<body><p>Please sign in to continue.</p></body></html>\n"
)
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


def sha256_hex(data: bytes) -> str:
    """Hex SHA256 of `data`."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Route:
    """How one path is served. Fields may be changed between requests by the test."""

    body: bytes = b""
    status: int = 200
    location: Optional[str] = None
    accept_ranges: bool = True
    cut_after: Optional[int] = None
    cut_times: Optional[int] = None
    declared_length: Union[int, str, None] = None
    stall_s: float = 0.0
    stall_after: Optional[int] = None
    chunk_delay_s: float = 0.0
    content_type: str = "application/octet-stream"
    headers: Dict[str, str] = field(default_factory=dict)
    cuts_done: int = 0


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str
    headers: Dict[str, str]

    @property
    def range(self) -> Optional[str]:
        """The Range header, if any."""
        return self.headers.get("range")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        owner = self.server.owner
        record = RequestRecord(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        with owner._lock:
            owner.requests.append(record)
            route = owner.routes.get(self.path)
            cut = False
            if route is not None and route.cut_after is not None:
                if route.cut_times is None or route.cuts_done < route.cut_times:
                    route.cuts_done += 1
                    cut = True
        if route is None:
            self._send_error(404, b"not found\n")
            return
        if route.stall_s and route.stall_after is None:
            owner._sleep(route.stall_s)
        if route.status in (301, 302, 303, 307, 308):
            self.send_response(route.status)
            self.send_header("Location", route.location or "/")
            self.send_header("Content-Length", "0")
            for name, value in route.headers.items():  # e.g. the hub's X-Linked-Etag / X-Linked-Size
                self.send_header(name, value)
            self.end_headers()
            return
        if route.status != 200:
            self._send_error(route.status, b"error\n")
            return

        body, status, extra = route.body, 200, {}
        total = len(body)
        wanted = self.headers.get("Range")
        match = _RANGE_RE.match(wanted.strip()) if wanted else None
        if route.accept_ranges:
            extra["Accept-Ranges"] = "bytes"
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else total - 1
                if start >= total:
                    self._send_error(416, b"", {"Content-Range": f"bytes */{total}"})
                    return
                end = min(end, total - 1)
                body, status = body[start : end + 1], 206
                extra["Content-Range"] = f"bytes {start}-{end}/{total}"

        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        if route.declared_length != OMIT_LENGTH:
            declared = len(body) if route.declared_length is None else route.declared_length
            self.send_header("Content-Length", str(declared))
        for name, value in {**extra, **route.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if not send_body:
            return
        limit = route.cut_after if cut else None
        self._send_body(body, limit, route)

    def _send_body(self, body: bytes, limit: Optional[int], route: Route) -> None:
        stop = len(body) if limit is None else min(limit, len(body))
        stall_at = route.stall_after if route.stall_s else None
        sent = 0
        try:
            while sent < stop:
                if stall_at is not None and sent >= stall_at:
                    # Stall (longer than the client waits), then hang up.
                    self.wfile.flush()
                    self.server.owner._sleep(route.stall_s)
                    limit = sent
                    break
                step = min(CHUNK_BYTES, stop - sent)
                if stall_at is not None:
                    step = min(step, stall_at - sent)
                self.wfile.write(body[sent : sent + step])
                sent += step
                if route.chunk_delay_s:
                    self.wfile.flush()
                    self.server.owner._sleep(route.chunk_delay_s)
            self.wfile.flush()
        except OSError:
            return
        if limit is not None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _send_error(self, status: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "FileServer"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up on purpose in these tests (timeouts, cuts)


class FileServer:
    """Threaded HTTP server on 127.0.0.1 (random port) serving in-memory routes.

    Use as a context manager, or call `start` / `stop`. `requests` logs every request.
    """

    def __init__(self) -> None:
        self.routes: Dict[str, Route] = {}
        self.requests: List[RequestRecord] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FileServer":
        """Bind to a free port and serve in a background thread."""
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes stalled handlers so no thread outlives the test for long."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # -- routes ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """Absolute URL of `path` (which starts with '/')."""
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **options: object) -> str:
        """Serve `body` at `path` with the given `Route` options; returns the URL."""
        self.routes[path] = Route(body=body, **options)  # type: ignore[arg-type]
        return self.url(path)

    def add_model(self, name: str, payload: bytes, served: Optional[bytes] = None, **options: object) -> str:
        """Serve at ``/<sha256(payload)>/<name>`` the bytes `served` (default: `payload`)."""
        return self.add(f"/{sha256_hex(payload)}/{name}", payload if served is None else served, **options)

    def add_hub_file(
        self,
        repo: str,
        filename: str,
        payload: bytes,
        *,
        announced_sha256: Optional[str] = None,
        announced_size: Optional[int] = None,
        **storage_options: object,
    ) -> str:
        """Serve `payload` as the Hugging Face hub does an LFS file; returns the hub URL.

        ``/{repo}/resolve/main/{filename}`` answers 302 to a storage URL ``/storage/<sha256>``,
        with ``X-Linked-Etag`` (quoted SHA256, default: the payload's) and ``X-Linked-Size``
        (default: its length); `storage_options` are `Route` options of the storage URL.
        """
        digest = sha256_hex(payload)
        storage = self.add(f"/storage/{digest}", payload, **storage_options)
        sha = digest if announced_sha256 is None else announced_sha256
        size = len(payload) if announced_size is None else announced_size
        headers = {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size), "ETag": '"0123abcd"'}
        return self.add(f"/{repo}/resolve/main/{filename}", status=302, location=storage, headers=headers)

    def route(self, url_or_path: str) -> Route:
        """The Route behind a URL or path, to change its behaviour between requests."""
        return self.routes[self._path(url_or_path)]

    # -- request log -----------------------------------------------------------------------
    def _path(self, url_or_path: str) -> str:
        prefix = self.url("")
        return url_or_path[len(prefix) :] if url_or_path.startswith(prefix) else url_or_path

    def requests_for(self, url_or_path: str) -> List[RequestRecord]:
        """Logged requests for one path."""
        path = self._path(url_or_path)
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        """Forget logged requests."""
        with self._lock:
            self.requests.clear()
