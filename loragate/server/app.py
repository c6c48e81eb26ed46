"""The FastAPI application: its lifespan owns the engine and builds all state in one place."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

import loragate
from loragate.server.errors import install_error_handlers
from loragate.server.observability import RequestIdMiddleware
from loragate.server.routers import chat, completions, legacy, models, personas, web
from loragate.server.state import AppState
from loragate.settings import ServerSettings

logger = logging.getLogger(__name__)

StateFactory = Callable[[ServerSettings], AbstractAsyncContextManager[AppState]]


def create_app(settings: ServerSettings, state_factory: StateFactory | None = None) -> FastAPI:
    """`state_factory` builds the engine and catalog; the default starts vLLM."""
    if state_factory is None:
        from loragate.server.runtime import vllm_state

        state_factory = vllm_state

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with state_factory(settings) as state:
            app.state.loragate = state
            logger.info("serving %s", state.catalog.base_name)
            yield

    app = FastAPI(title="loragate", version=loragate.__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    for router in (chat.router, completions.router, models.router, legacy.router, web.router):
        app.include_router(router)
    app.include_router(personas.router)
    return app
