"""Limits every request passes before the app sees it, answered with a JSON error.

* The upload limit: a request body over `limit` bytes is answered 413. A declared Content-Length
  over the limit is refused before any of the body is read; a body sent without one (chunked) is
  counted as it arrives and refused once it passes the limit, by raising a 413 HTTPException from
  inside the request's body reader, which the app's handlers turn into JSON.
* The Host header: a server on the loopback interface answers only requests addressed to a
  loopback name (400 otherwise), so that a web page elsewhere cannot read it through DNS rebinding
  (a name of the page's site made to point at 127.0.0.1).
"""

import json
from typing import Any, Awaitable, Callable, Dict, Optional, Sequence

from starlette.exceptions import HTTPException

__all__ = ["RequestLimits", "LOOPBACK_NAMES"]

BAD_REQUEST = 400
TOO_LARGE = 413
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WRONG_HOST = "this server answers only requests addressed to it by a loopback name (127.0.0.1, localhost)"
Message = Dict[str, Any]


def _too_large(limit: int) -> str:
    return f"the request body is over the upload limit of {limit} bytes (clip serve --max-upload)"


def _host_name(host: bytes) -> str:
    """The name of a Host header's value, without its port: ``[::1]:8000`` -> ``::1``."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class RequestLimits:
    """ASGI middleware refusing request bodies over `limit` bytes and, when `hosts` is given, requests
    whose Host header names none of them."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], limit: int, hosts: Optional[Sequence[str]] = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.hosts = None if hosts is None else {name.lower() for name in hosts}

    async def __call__(
        self,
        scope: Dict[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None and _host_name(headers.get(b"host", b"")) not in self.hosts:
            await _refuse(
                send, BAD_REQUEST, "this server answers only requests addressed to it by a loopback name"
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await _refuse(send, TOO_LARGE, _too_large(self.limit))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(TOO_LARGE, _too_large(self.limit))
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Callable[[Message], Awaitable[None]], status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
