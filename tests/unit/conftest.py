"""The fast layer: the HTTP app over a scriptable fake engine, driven by the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import openai
import pytest
from fastapi.testclient import TestClient

from loragate.adapters.registry import PersonaRegistry
from loragate.adapters.validation import ModelShape
from loragate.engine.fake import FakeEngine
from loragate.server.app import create_app
from loragate.server.state import AppState
from loragate.settings import ServerSettings

BASE = "fake-base"
# No persona is registered on this app; the shape only has to exist.
FAKE_SHAPE = ModelShape(
    hidden_size=8,
    intermediate_size=16,
    num_attention_heads=2,
    num_key_value_heads=1,
    num_hidden_layers=1,
    head_dim=4,
)


def fake_state_factory(engine: FakeEngine) -> Callable[[ServerSettings], object]:
    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        registry = PersonaRegistry(settings, engine, BASE, "/models/fake", shape=FAKE_SHAPE)
        yield AppState(settings=settings, engine=engine, catalog=registry)

    return factory


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def client(fake: FakeEngine, settings: ServerSettings) -> Iterator[TestClient]:
    app = create_app(settings, fake_state_factory(fake))  # type: ignore[arg-type]
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def sdk(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0
    )
