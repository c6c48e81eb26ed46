"""The FastAPI application: its lifespan owns the engine and builds all state in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

import loragate
from loragate.engine.protocol import Engine
from loragate.engine.supervisor import SupervisedEngine
from loragate.server.errors import install_error_handlers
from loragate.server.lifecycle import Lifecycle, TrafficGate
from loragate.server.limits import LEGACY_ROUTES, BodyLimitMiddleware, LegacyPortMiddleware
from loragate.server.observability import RequestIdMiddleware
from loragate.server.openapi import EVERY_ROUTE, install_openapi
from loragate.server.routers import (
    chat,
    completions,
    keys,
    legacy,
    messages,
    metrics,
    models,
    personas,
    responses,
    tokenize,
    web,
)
from loragate.server.state import AppState, scope_state
from loragate.server.telemetry import TelemetryMiddleware
from loragate.server.tracing import RequestTracer, request_tracer
from loragate.settings import ServerSettings

logger = logging.getLogger(__name__)

StateFactory = Callable[[ServerSettings], AbstractAsyncContextManager[AppState]]


class Gateway(FastAPI):
    tracer: RequestTracer | None = None

    def build_middleware_stack(self) -> ASGIApp:
        # Around Starlette's ServerErrorMiddleware, which `add_middleware` cannot reach: the 500
        # it renders for an unhandled exception carries the request id, and its log line too;
        # and it is counted in the metrics and the access log like any other response.
        telemetry = TelemetryMiddleware(super().build_middleware_stack(), self.tracer)
        return RequestIdMiddleware(telemetry)


def create_app(
    settings: ServerSettings,
    state_factory: StateFactory | None = None,
    tracer: RequestTracer | None = None,
) -> FastAPI:
    """`state_factory` builds the engine and catalog; the default starts vLLM. `tracer`: where
    the spans go (default: --otlp-traces-endpoint's collector, if set)."""
    if state_factory is None:
        from loragate.server.runtime import vllm_state

        state_factory = vllm_state

    lifecycle = Lifecycle(settings.drain_timeout, settings.request_timeout)
    tracer = tracer or request_tracer(settings.otlp_traces_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with state_factory(settings) as state:
            app.state.loragate = state
            state.keyring.refresh()  # read now: a bad --keys-file stops the start, not requests
            if tracer is not None:
                state.catalog.report_to(tracer)
            logger.info("serving %s (tool parser %s)", state.catalog.base_name, state.tool_parser)
            watch = _supervise(state.engine, lifecycle)
            try:
                yield
            finally:
                if watch is not None:
                    watch.cancel()
                state.close()
                if tracer is not None:
                    tracer.shutdown()

    app = Gateway(title="loragate", version=loragate.__version__, lifespan=lifespan)
    app.tracer = tracer
    app.state.lifecycle = lifecycle
    install_error_handlers(app)
    install_openapi(app)
    # Inside the request id (Gateway), so that a refusal here has one. Added innermost first.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=lambda scope: settings.body_limit(scope_state(scope).engine.max_model_len),
    )
    if settings.legacy_enabled() and not settings.legacy_serves_all_routes:
        assert settings.legacy_port is not None
        app.add_middleware(
            LegacyPortMiddleware, legacy_port=settings.legacy_port, routes=LEGACY_ROUTES
        )
    app.add_middleware(TrafficGate, lifecycle=lifecycle)
    app.router.routes.extend(_api_routes())
    return app


def _supervise(engine: Engine, lifecycle: Lifecycle) -> asyncio.Task[None] | None:
    """A supervised engine: a drain can end its requests, and its failure ends the process."""
    if not isinstance(engine, SupervisedEngine):
        return None
    lifecycle.interrupt_with(engine.interrupt)
    lifecycle.on_drain(engine.stop_restarting)

    async def exit_when_failed() -> None:
        await engine.failed.wait()
        logger.critical("exiting: %s", engine.failure)
        lifecycle.exit(1)

    return asyncio.create_task(exit_when_failed())


@functools.cache
def _api_routes() -> list[BaseRoute]:
    """Every route, built once per process: including a router analyses each endpoint's
    signature and builds its pydantic models (30 ms for all of them, per app otherwise). The
    routes hold no state of an app's, so every app may share them."""
    api = APIRouter()
    modules = (chat, completions, responses, messages, models, legacy, web, tokenize, personas,
               keys, metrics)  # fmt: skip
    for module in modules:
        api.include_router(module.router, responses=EVERY_ROUTE)
    return api.routes
