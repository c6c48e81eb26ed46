"""What a connection may ask before any route runs: the body size, and the legacy port's routes."""

from __future__ import annotations

import json
from collections.abc import Callable, Container

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loragate.server.errors import PayloadTooLargeError, error_envelope

# The tutorial's server answered only `POST /`; its port keeps to that (and a health check).
LEGACY_ROUTES = frozenset({("POST", "/"), ("GET", "/health")})


async def send_error(
    send: Send, status: int, body: dict[str, object], extra: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """413 in OpenAI's envelope for a body over `limit` bytes, before any of it is parsed.

    The body is read here (every route parses all of it anyway) and replayed to the app; a
    declared Content-Length over the limit is refused without reading a byte.
    """

    def __init__(self, app: ASGIApp, limit: Callable[[Scope], int]):
        """`limit(scope)`: the engine's context decides it, known once the lifespan started."""
        self.app = app
        self.limit_of = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(chunks, None, receive), send)

    async def _refuse(self, send: Send, limit: int) -> None:
        error = PayloadTooLargeError(
            f"The request body is larger than {limit} bytes (--max-request-body-bytes)."
        )
        await send_error(send, error.status, error.envelope())


def _replay(chunks: list[bytes], pending: Message | None, receive: Receive) -> Receive:
    """A receive that hands out the buffered body in one message, then the real receive's."""
    queue: list[Message] = []
    if chunks or pending is None:
        queue.append({"type": "http.request", "body": b"".join(chunks), "more_body": False})
    if pending is not None:
        queue.append(pending)

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed


class LegacyPortMiddleware:
    """On the legacy port, only the tutorial's routes; the API, admin and web routes live on
    the API port (unless --legacy-serves-all-routes)."""

    def __init__(self, app: ASGIApp, legacy_port: int, routes: Container[tuple[str, str]]):
        self.app = app
        self.legacy_port = legacy_port
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        on_legacy_port = scope["type"] == "http" and server and server[1] == self.legacy_port
        if on_legacy_port and (scope["method"], scope["path"]) not in self.routes:
            body = error_envelope(
                f"{scope['method']} {scope['path']} is not served on the legacy port "
                f"{self.legacy_port}, which serves only the tutorial's POST /; use the API port.",
                "not_found_error",
            )
            await send_error(send, 404, body)
            return
        await self.app(scope, receive, send)
