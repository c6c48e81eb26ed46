"""Server-sent events that end with [DONE], and cancellation when the client goes away."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from loragate.server.errors import ClientClosedRequestError, GatewayError, as_gateway_error
from loragate.server.request_record import current_record
from loragate.server.state import scope_state

logger = logging.getLogger(__name__)
T = TypeVar("T")

DONE = "data: [DONE]\n\n"


async def sse_events(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    """Each chunk as an SSE event; an error becomes an error event. [DONE] always ends it."""
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
    except Exception as exc:
        error = as_gateway_error(exc)
        if error is None:
            logger.exception("error during a stream")
            error = GatewayError("Internal server error")
        yield f"data: {json.dumps(error.envelope())}\n\n"
    yield DONE


class EventStreamResponse(StreamingResponse):
    """Races the body against the client's disconnect on every ASGI version.

    Starlette only listens for `http.disconnect` below ASGI spec 2.4; above it a departed client
    is noticed at the next write, which can be long for a queued request. Listening always
    cancels the body generator at once, and its `finally` aborts the engine request.
    """

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = current_record()
        if record is not None:
            record.streamed = True
        open_streams = scope_state(scope).metrics.open_streams
        open_streams.inc()
        stream = asyncio.ensure_future(self.stream_response(send))
        listen = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({stream, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if record is not None and listen.done() and not stream.done():
                record.disconnected = True
            for task in (stream, listen):
                task.cancel()
            await asyncio.gather(stream, listen, return_exceptions=True)
            open_streams.dec()
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            raise stream.exception()  # type: ignore[misc]


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client disconnects first (non-streamed requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        # Waiting for the cancelled work lets its cleanup (the engine abort) finish first.
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        if (record := current_record()) is not None:
            record.disconnected = True
        logger.info("client disconnected; its request was aborted")
        raise ClientClosedRequestError("The client closed the connection before the reply.")
    return task.result()


async def _wait_disconnect(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
