"""The fast layer: the HTTP app over a scriptable fake engine, driven by the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import openai
import pytest
from fastapi.testclient import TestClient

from loragate.server.app import create_app
from loragate.server.base_catalog import BaseModelCatalog
from loragate.server.engine.fake import FakeEngine
from loragate.server.state import AppState
from loragate.settings import ServerSettings

BASE = "fake-base"


def fake_state_factory(engine: FakeEngine) -> Callable[[ServerSettings], object]:
    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        catalog = BaseModelCatalog(BASE, "/models/fake", engine.max_model_len)
        yield AppState(settings=settings, engine=engine, catalog=catalog)

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
