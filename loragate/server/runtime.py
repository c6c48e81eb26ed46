"""Production wiring: resolve the model, start vLLM, build the catalog, stop it all at the end."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from loragate.adapters.registry import PersonaRegistry
from loragate.adapters.sources import personas_running
from loragate.adapters.targets import SamplingDefaults
from loragate.engine.supervisor import SupervisedEngine, Supervision
from loragate.server.state import AppState
from loragate.settings import ServerSettings

logger = logging.getLogger(__name__)


def resolve_model(settings: ServerSettings) -> tuple[str, str]:
    """(model path or hub id, served name)."""
    if settings.model is None:
        from loragate.default_model import DEFAULT_MODEL_NAME, ensure_default_model

        path = str(ensure_default_model())
        return path, settings.served_model_name or DEFAULT_MODEL_NAME
    name = settings.served_model_name or Path(settings.model.rstrip("/")).name
    return settings.model, name


@asynccontextmanager
async def vllm_state(settings: ServerSettings) -> AsyncIterator[AppState]:
    from loragate.engine.vllm_engine import VllmEngine

    model_path, served_name = resolve_model(settings)
    engine = await SupervisedEngine.started(
        lambda: VllmEngine.start(settings, model_path, served_name), Supervision.of(settings)
    )
    try:
        registry = PersonaRegistry(settings, engine, served_name, model_path)
        engine.on_restart(registry.engine_replaced)
        defaults = SamplingDefaults.from_mapping(engine.generation_defaults())
        async with personas_running(registry, settings):
            yield AppState(
                settings=settings, engine=engine, catalog=registry, model_defaults=defaults
            )
    finally:
        await engine.shutdown()
