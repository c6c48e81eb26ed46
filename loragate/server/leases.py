"""Holding a model target for exactly as long as a response is being produced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.requests import Request

from loragate.adapters.errors import UnknownModelError
from loragate.adapters.targets import ModelTarget
from loragate.server.request_record import UNKNOWN_MODEL, RequestRecord, current_record
from loragate.server.state import app_state, registry
from loragate.server.streaming import EventStreamResponse, sse_events, until_disconnect
from loragate.server.tenancy import admit, admit_to_persona, check_access, may_use

P = TypeVar("P")


async def open_lease(
    request: Request, model: str | None, *, counted: bool = True, reserve_tokens: int = 0
) -> tuple[ModelTarget, AsyncExitStack]:
    """Check the key's access and limits, then resolve and lease `model`; the caller closes the
    stack when the response is done. `counted`: a request of the model's in its metrics and
    its key's limits (tokenizing is not); `reserve_tokens`: its completion's most."""
    record = current_record() if counted else None
    stack = AsyncExitStack()
    try:
        key = check_access(request, model)
        if counted:
            await admit(request, key, stack, reserve_tokens)
        target = await stack.enter_async_context(registry(request).lease(model))
        if counted:
            await admit_to_persona(request, target, stack)
    except UnknownModelError as exc:
        await stack.aclose()
        if record is not None:
            record.served(UNKNOWN_MODEL, None)
        # Only the models this key may use (and a version hint): the others are not its business.
        catalog = registry(request)
        visible = [n for n in exc.valid if may_use(key, catalog, n.partition("@")[0])]
        raise UnknownModelError(model or "", visible) from exc
    except Exception:
        await stack.aclose()
        if record is not None:  # a persona that exists but cannot be served now
            _served_by_name(request, record, model)
        raise
    if record is not None:
        record.served(target.name, target.version)
        metrics = app_state(request).metrics
        stack.callback(metrics.request_started(target.name, target.version or ""))
    return target, stack


def _served_by_name(request: Request, record: RequestRecord, model: str | None) -> None:
    persona = registry(request).find((model or "").partition("@")[0])
    if persona is None:
        record.served(UNKNOWN_MODEL, None)
    else:
        record.served(persona.name, persona.version)


async def released_after(stream: AsyncIterator[str], stack: AsyncExitStack) -> AsyncIterator[str]:
    async with stack:
        async for item in stream:
            yield item


async def respond(
    request: Request,
    model: str | None,
    *,
    stream: bool,
    prepare: Callable[[ModelTarget], P],
    whole: Callable[[P, ModelTarget], Awaitable[BaseModel]],
    chunks: Callable[[P, ModelTarget], AsyncIterator[BaseModel]],
    encode: Callable[[AsyncIterator[BaseModel]], AsyncIterator[str]] = sse_events,
    reserve_tokens: int = 0,
) -> Response:
    """Lease the model, prepare the request (errors are plain HTTP errors), then answer it whole
    or as SSE (`encode` writes the events: OpenAI's chat chunks by default); the lease lasts
    until the last byte, and a departed client cancels the work."""
    target, lease = await open_lease(request, model, reserve_tokens=reserve_tokens)
    try:
        prepared = await app_state(request).off_loop(lambda: prepare(target))
    except BaseException:
        await lease.aclose()
        raise
    if stream:
        return EventStreamResponse(released_after(encode(chunks(prepared, target)), lease))
    async with lease:
        result = await until_disconnect(request, whole(prepared, target))
    return JSONResponse(result.model_dump(mode="json", exclude_unset=True))
