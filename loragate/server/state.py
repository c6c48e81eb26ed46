"""Everything the routes need, built in one place by the lifespan, reached by typed accessors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from loragate.adapters.registry import PersonaRegistry
from loragate.server.engine.protocol import Engine
from loragate.server.errors import NotFoundError
from loragate.server.targets import ModelCatalog, SamplingDefaults
from loragate.settings import ServerSettings


@dataclass
class AppState:
    settings: ServerSettings
    engine: Engine
    catalog: ModelCatalog
    model_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    started_at: float = field(default_factory=time.time)


def app_state(request: Request) -> AppState:
    state = request.app.state.loragate
    assert isinstance(state, AppState)
    return state


def engine(request: Request) -> Engine:
    return app_state(request).engine


def catalog(request: Request) -> ModelCatalog:
    return app_state(request).catalog


def settings(request: Request) -> ServerSettings:
    return app_state(request).settings


def registry(request: Request) -> PersonaRegistry:
    found = catalog(request)
    if not isinstance(found, PersonaRegistry):
        raise NotFoundError("This server serves no personas (it has no persona registry).")
    return found
