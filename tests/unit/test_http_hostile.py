"""Hostile HTTP in the fast layer: undecodable and over-deep bodies, a dead engine, and the
request id on every error, the unhandled 500 included (issue 10, item 9)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from loragate.engine.fake import Die, FakeEngine
from loragate.engine.types import GenerationUpdate
from loragate.server.app import create_app
from loragate.server.observability import RequestIdFilter
from loragate.settings import ServerSettings
from tests.unit.conftest import BASE, fake_state_factory

INVALID_UTF8 = b'{"prompt": "\xff\xfe caf\xe9"}'
DEEP = b"[" * 10_000
BODY_ROUTES = ["/", "/v1/chat/completions", "/v1/completions", "/v1/load_lora_adapter"]
JSON = {"content-type": "application/json"}


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("body", [INVALID_UTF8, DEEP, b"[" * 10_000 + b"]" * 10_000])
@pytest.mark.parametrize("path", BODY_ROUTES)
def test_undecodable_and_over_deep_bodies_are_400(
    client: TestClient, path: str, body: bytes
) -> None:
    error = error_of(client.post(path, content=body, headers=JSON), 400)
    assert error["type"] == "invalid_request_error"


def test_the_legacy_route_says_why_it_cannot_read_the_body(client: TestClient) -> None:
    # Its own client sends a wrong content type, so it parses by hand and words its own errors.
    assert "UTF-8" in error_of(client.post("/", content=INVALID_UTF8), 400)["message"]
    assert (
        "nested too deeply"
        in error_of(client.post("/", content=DEEP + b"]" * 10_000), 400)["message"]
    )


def test_engine_status_is_503_when_the_engine_is_dead(client: TestClient, fake: FakeEngine) -> None:
    assert client.get("/v1/engine/status").status_code == 200
    fake.dead = True
    error = error_of(client.get("/v1/engine/status"), 503)
    assert error["code"] == "engine_unavailable"


def test_engine_status_is_503_once_the_engine_died_mid_request(
    client: TestClient, fake: FakeEngine
) -> None:
    fake.enqueue(["Hel", Die()])
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    error_of(client.post("/v1/chat/completions", json=chat), 503)
    error_of(client.get("/v1/engine/status"), 503)


class BrokenEngine(FakeEngine):
    """An engine with a bug: generating raises what no handler expects."""

    async def generate(self, *_: Any, **__: Any) -> AsyncGenerator[GenerationUpdate, None]:
        raise RuntimeError("a bug in the engine")
        yield  # pragma: no cover  (makes this an async generator, as the protocol says)


class Remember(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def broken(settings: ServerSettings) -> Iterator[TestClient]:
    app = create_app(settings, fake_state_factory(BrokenEngine()))
    # The server, not the client, sees the exception re-raised after the 500 went out.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def logged() -> Iterator[Remember]:
    handler = Remember()
    logger = logging.getLogger("loragate")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": BASE, "prompt": "hi"}),
        ("/", {"prompt": "hi"}),
    ],
)
def test_an_unhandled_error_is_a_500_envelope_with_the_clients_request_id(
    broken: TestClient, logged: Remember, path: str, body: dict[str, Any]
) -> None:
    response = broken.post(path, json=body, headers={"X-Request-Id": "client-id-1"})
    error = error_of(response, 500)
    assert error == {
        "message": "Internal server error",
        "type": "internal_error",
        "param": None,
        "code": None,
    }
    assert response.headers["x-request-id"] == "client-id-1"
    unhandled = [r for r in logged.records if r.getMessage() == "unhandled error"]
    assert [getattr(r, "request_id", None) for r in unhandled] == ["client-id-1"]  # its filter's


def test_an_unhandled_error_without_a_client_id_gets_a_fresh_one(broken: TestClient) -> None:
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    first = broken.post("/v1/chat/completions", json=chat)
    second = broken.post("/v1/chat/completions", json=chat)
    error_of(first, 500)
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        (("GET", "/v1/models/nope"), 404),  # no such route
        (("PATCH", "/v1/personas/x"), 405),
        (("POST", "/v1/chat/completions"), 400),  # no body
        (("GET", "/v1/personas/x"), 404),  # no persona registry here
    ],
)
def test_every_error_carries_the_request_id(
    client: TestClient, request_args: tuple[str, str], status: int
) -> None:
    method, path = request_args
    response = client.request(method, path, headers={"X-Request-Id": "abc"})
    error_of(response, status)
    assert response.headers["x-request-id"] == "abc"


def test_405_allows_every_method_of_the_path(client: TestClient) -> None:
    response = client.request("PATCH", "/v1/personas/x")
    error_of(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}
