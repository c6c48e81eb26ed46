"""Holding a model target for exactly as long as a response is being produced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from starlette.requests import Request

from loragate.server.state import catalog
from loragate.server.targets import ModelTarget


async def open_lease(request: Request, model: str | None) -> tuple[ModelTarget, AsyncExitStack]:
    """Resolve and lease `model`; the caller closes the stack when the response is done."""
    stack = AsyncExitStack()
    target = await stack.enter_async_context(catalog(request).lease(model))
    return target, stack


async def released_after(stream: AsyncIterator[str], stack: AsyncExitStack) -> AsyncIterator[str]:
    async with stack:
        async for item in stream:
            yield item
