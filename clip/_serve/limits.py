"""The upload limit: a request body over `limit` bytes is answered 413 with a JSON error.

A declared Content-Length over the limit is refused before any of the body is read; a body sent
without one (chunked) is counted as it arrives and refused once it passes the limit, by raising a
413 HTTPException from inside the request's body reader, which the app's handlers turn into JSON.
"""

import json
from typing import Any, Awaitable, Callable, Dict

from starlette.exceptions import HTTPException

__all__ = ["UploadLimit"]

TOO_LARGE = 413
Message = Dict[str, Any]


def _too_large(limit: int) -> str:
    return f"the request body is over the upload limit of {limit} bytes (clip serve --max-upload)"


class UploadLimit:
    """ASGI middleware refusing request bodies over `limit` bytes."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(
        self,
        scope: Dict[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await _refuse(send, _too_large(self.limit))
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


async def _refuse(send: Callable[[Message], Awaitable[None]], message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": TOO_LARGE, "headers": headers})
    await send({"type": "http.response.body", "body": body})
