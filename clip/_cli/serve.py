"""`clip serve [COLLECTION]`: keep a model loaded and answer over HTTP, with a search page at `/`.

The app is clip/_serve/app.py (FastAPI), run here with uvicorn; both come with the optional extra
``clip-faithful[serve]``. The server listens on the loopback interface unless --host says otherwise
(with a warning: it has no authentication). SIGINT and SIGTERM stop it cleanly: requests in flight
are answered, the model thread is stopped, and the exit status is 0.
"""

import argparse
import contextlib
import ipaddress
import os
import signal
import sys
import threading
from typing import Any, Iterator, List, Optional

from .common import EXIT_OK

DEFAULT_MODEL = "ViT-B/32"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20.0
MEGABYTE = 1024 * 1024
MILLISECOND = 0.001
EXTRA_ADVICE = 'clip serve needs FastAPI, uvicorn and python-multipart: pip install "clip-faithful[serve]"'
EPILOG = """\
endpoints (JSON; the OpenAPI page is at /docs):
  GET  /                 the search page (/?q=TEXT runs that search)
  GET  /healthz          the model and the collection
  POST /v1/classify      multipart image + labels fields (or classes=imagenet|cifar10|cifar100)
  POST /v1/embed         JSON {"texts": [...]} or multipart images -> L2-normalised features
  GET  /v1/search        ?q=TEXT&k=10 over COLLECTION (POST: multipart image, k)
  GET  /v1/thumb/ROW     a small JPEG of a collection item

examples:
  clip embed photos/ -o photos.clip && clip serve photos.clip      then open http://127.0.0.1:8000/
  clip serve --model RN50 --port 8080                              classify and embed only
"""


def _parser() -> argparse.ArgumentParser:
    from .common import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="clip serve",
        description="Serve zero-shot classification, embeddings and search over an embedded collection "
        "over HTTP, with a search page; one process keeps the model loaded and batches requests.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "collection", nargs="?", default=None, metavar="COLLECTION", help="the output folder of clip embed"
    )
    add_model_arguments(parser, None)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; "
        "anything else is reachable by others, without authentication)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--max-upload",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest request body in MiB; larger ones get 413 (default: {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    parser.add_argument("--max-batch", type=int, default=16, help="most images or texts per forward pass")
    parser.add_argument(
        "--batch-window",
        type=float,
        default=25.0,
        metavar="MS",
        help="the most milliseconds the model waits for more requests to batch, while fewer are queued "
        "than were recently served at once (default: 25; a lone client never waits)",
    )
    parser.add_argument(
        "--queue", type=int, default=64, help="requests that may wait for the model; more get 503"
    )
    return parser


def main(argv: List[str]) -> int:
    """Run `clip serve` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip serve", _parser(), _run, argv)


def _check_arguments(args: argparse.Namespace) -> None:
    from .common import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {args.port}")
    if not args.max_upload > 0:
        raise UsageError(f"--max-upload must be more than 0 MiB, got {args.max_upload:g}")
    for flag, value in (("--max-batch", args.max_batch), ("--queue", args.queue)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 0 <= args.batch_window <= 1000:
        raise UsageError(f"--batch-window must be 0 to 1000 ms, got {args.batch_window:g}")


def _import_server() -> Any:
    from .common import CommandFailure

    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn
    except ImportError as exc:
        raise CommandFailure(f"{EXTRA_ADVICE} (missing: {exc.name or 'a module'})") from exc
    return uvicorn


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_collection(path: str) -> Any:
    from .. import collection
    from .common import UsageError

    try:
        opened = collection.open(path)
        opened.check_index()  # a stale index, or one without faiss installed: said now, not per search
    except (collection.CollectionError, ImportError) as exc:
        raise UsageError(str(exc)) from exc
    if len(opened) == 0:
        raise UsageError(f"{path}: the collection is empty (no image was embedded)")
    return opened


def _check_same_model(path: str, opened: Any, model: str) -> None:
    """Refuse a model whose weights are not those `opened` was embedded with (by SHA256, where the
    collection recorded it): its scores against the stored features would mean nothing."""
    from .collection import model_sha256, short_digest
    from .common import UsageError, shorten

    digest = opened.model_sha256
    actual = model_sha256(model) if digest is not None else None
    if actual is None or actual == digest:
        return  # nothing recorded to compare, or no such model (loading it says so)
    raise UsageError(
        f"{path} was embedded with {opened.model!r} ({short_digest(digest)}); --model {shorten(model)} is "
        f"another model ({short_digest(actual)}), and its scores against the stored features would mean "
        "nothing. Serve without --model, or embed the collection again with this model"
    )


def _shown_model(model: str) -> str:
    """The model as /healthz names it: a released name, or a checkpoint's file name (no folders)."""
    from ..clip import available_models

    return model if model in available_models() else os.path.basename(model.rstrip("/"))


def _run(args: argparse.Namespace) -> int:
    from .common import CommandFailure, UsageError, load_model

    _check_arguments(args)
    uvicorn = _import_server()
    from .._serve.app import ServeSettings, create_app
    from .._serve.limits import LOOPBACK_NAMES

    opened = _open_collection(args.collection) if args.collection is not None else None
    model_name = args.model or (opened.model if opened is not None and opened.model else DEFAULT_MODEL)
    if opened is not None:
        _check_same_model(args.collection, opened, model_name)
    model, preprocess = load_model(model_name, args.device, args.download_root, args.download)
    dim = int(model.text_projection.shape[1])
    if opened is not None and opened.dim != dim:
        raise UsageError(
            f"{args.collection} holds {opened.dim}-dimensional features of {opened.model!r}; --model gives "
            f"{dim}: serve it with the model it was embedded with"
        )
    if not _is_loopback(args.host):
        print(
            f"clip serve: warning: listening on {args.host}: anyone who can reach this machine can use the "
            "server and see the collection's images (it has no authentication)",
            file=sys.stderr,
        )
    settings = ServeSettings(
        max_upload=int(args.max_upload * MEGABYTE),
        max_batch=args.max_batch,
        window=args.batch_window * MILLISECOND,
        queue_size=args.queue,
        hosts=(*LOOPBACK_NAMES, args.host.strip("[]")) if _is_loopback(args.host) else None,
    )
    app = create_app(
        model, preprocess, model_name=_shown_model(model_name), collection=opened, settings=settings
    )
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"clip serve: http://{shown_host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = _server(uvicorn, config)
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to an address it cannot bind (after logging why)
        server.started = False
    finally:
        if opened is not None:
            opened.close()
    if not server.started:
        raise CommandFailure(
            f"cannot listen on {shown_host}:{args.port} (in use, or not an address of this machine)"
        )
    print(f"clip serve: stopped{f' ({server.received})' if server.received else ''}", file=sys.stderr)
    return EXIT_OK


def _server(uvicorn: Any, config: Any) -> Any:
    """A uvicorn Server whose SIGINT / SIGTERM stop it and return (uvicorn's own raises the signal
    again once it has stopped, which would end the process with a traceback or a signal status)."""

    class Server(uvicorn.Server):
        received: Optional[str] = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def _stop(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop without waiting for open connections
            self.should_exit = True
            self.received = signal.Signals(sig).name

    return Server(config)
