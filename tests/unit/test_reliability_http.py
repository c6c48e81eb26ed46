"""What a client sees of the engine's death, of a full queue, of a deadline and of a drain, over
a real socket (uvicorn), the app on a supervised engine over fake engines."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from loragate.adapters.registry import PersonaRegistry
from loragate.engine import supervisor
from loragate.engine.fake import FakeEngine, Hold
from loragate.engine.supervisor import SupervisedEngine, Supervision
from loragate.server.app import create_app
from loragate.server.lifecycle import Lifecycle
from loragate.server.state import AppState
from loragate.settings import ServerSettings
from tests.unit.conftest import BASE, FAKE_SHAPE, server_settings, wait_for

USER = [{"role": "user", "content": "hi"}]


@dataclass
class Live:
    origin: str
    engines: list[FakeEngine]
    lifecycle: Lifecycle
    loop: asyncio.AbstractEventLoop
    stopped: threading.Event = field(default_factory=threading.Event)
    supervised: list[SupervisedEngine] = field(default_factory=list)

    @property
    def engine(self) -> FakeEngine:
        return self.engines[-1]

    def on_loop(self, work: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(work)

    def run(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.origin}/v1", api_key="x", max_retries=0)


def serve(tmp_path: Path, max_num_seqs: int = 64, **overrides: Any) -> Iterator[Live]:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    engines: list[FakeEngine] = []

    def start() -> FakeEngine:
        engines.append(FakeEngine(max_num_seqs=max_num_seqs))
        return engines[-1]

    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        holder["loop"] = asyncio.get_running_loop()
        engine = await SupervisedEngine.started(start, Supervision.of(settings))
        holder["engine"] = engine
        registry = PersonaRegistry(settings, engine, BASE, "/models/fake", shape=FAKE_SHAPE)
        engine.on_restart(registry.engine_replaced)
        try:
            yield AppState(settings=settings, engine=engine, catalog=registry)
        finally:
            await engine.shutdown()

    settings = server_settings(state_dir=tmp_path, log_level="warning", **overrides)
    app = create_app(settings, factory)
    lifecycle: Lifecycle = app.state.lifecycle
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    stopped = threading.Event()

    def stop() -> None:
        stopped.set()
        server.should_exit = True

    lifecycle.serve_with(stop)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30)
    origin = f"http://127.0.0.1:{listening.getsockname()[1]}"
    live = Live(origin, engines, lifecycle, holder["loop"], stopped, [holder["engine"]])
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    monkeypatch.setattr(supervisor, "HEALTH_INTERVAL_S", 0.02)
    yield from serve(tmp_path, max_num_seqs=2, max_waiting_requests=1)


def stream_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line]


def test_a_full_queue_is_a_429_with_retry_after_that_the_sdk_raises(live: Live) -> None:
    holds = [Hold() for _ in range(3)]
    live.engine.enqueue(*([hold] for hold in holds))
    body = {"model": BASE, "messages": USER}
    with httpx.Client(base_url=live.origin, timeout=10) as http:
        streams = [
            http.stream("POST", "/v1/chat/completions", json={**body, "stream": True})
            for _ in holds
        ]
        opened = [stream.__enter__() for stream in streams]
        wait_for(lambda: all(hold.reached.is_set() for hold in holds))
        with live.sdk() as sdk, pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model=BASE, messages=USER)  # type: ignore[arg-type]
        assert refused.value.response.headers["Retry-After"] == "1"
        assert refused.value.code == "server_overloaded"
        for hold in holds:
            live.on_loop(hold.released.set)
        for response, stream in zip(opened, streams, strict=True):
            assert stream_events(response)[-1] == "[DONE]"
            stream.__exit__(None, None, None)


def test_the_engines_death_ends_a_stream_with_an_error_event_then_it_recovers(
    live: Live,
) -> None:
    hold = Hold()
    live.engine.enqueue(["Hel", hold])
    body = {"model": BASE, "messages": USER, "stream": True}
    with httpx.Client(base_url=live.origin, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            wait_for(hold.reached.is_set)
            live.on_loop(live.engine.kill)
            events = stream_events(response)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "engine_unavailable"
        wait_for(lambda: len(live.engines) == 2 and http.get("/health").status_code == 200)
        reply = http.post("/v1/chat/completions", json={"model": BASE, "messages": USER})
        assert reply.status_code == 200


def test_health_says_recovering_with_retry_after_while_the_engine_restarts(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    original = live.supervised[0]._start

    def slow_start() -> FakeEngine:
        gate.wait(10)
        engine = original()
        assert isinstance(engine, FakeEngine)
        return engine

    monkeypatch.setattr(live.supervised[0], "_start", slow_start)
    live.on_loop(live.engine.kill)
    with httpx.Client(base_url=live.origin, timeout=10) as http:
        wait_for(lambda: http.get("/health").json()["status"] == "recovering")
        health = http.get("/health")
        assert health.status_code == 503 and int(health.headers["Retry-After"]) >= 1
        for stream in (False, True):  # a stream too: its 503 before any event
            body = {"model": BASE, "messages": USER, "stream": stream}
            refused = http.post("/v1/chat/completions", json=body)
            assert refused.status_code == 503 and "Retry-After" in refused.headers
        gate.set()
        wait_for(lambda: http.get("/health").json() == {"status": "ok"})


def test_a_drain_lets_the_requests_in_flight_finish_and_refuses_new_ones(live: Live) -> None:
    hold = Hold()
    live.engine.enqueue(["Hel", hold, "lo"])
    body = {"model": BASE, "messages": USER, "stream": True}
    with httpx.Client(base_url=live.origin, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            wait_for(hold.reached.is_set)
            drained = live.run(live.lifecycle.drain())
            wait_for(lambda: live.lifecycle.draining)
            health = http.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            refused = http.post("/v1/completions", json={"model": BASE, "prompt": "x"})
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
            assert refused.json()["error"]["code"] == "server_shutting_down"
            assert not live.stopped.is_set()
            live.on_loop(hold.released.set)
            events = stream_events(response)
        text = "".join(
            json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[1:-1]
        )
        assert text == "Hello" and events[-1] == "[DONE]"
    drained.result(timeout=5)
    assert live.stopped.is_set()


@pytest.mark.parametrize("live_drain", [0.2], indirect=True)
def test_past_the_drain_timeout_the_rest_end_with_an_error_event(live_drain: Live) -> None:
    live = live_drain
    hold = Hold()
    live.engine.enqueue(["Hel", hold, "lo"])
    body = {"model": BASE, "messages": USER, "stream": True}
    with (
        httpx.Client(base_url=live.origin, timeout=10) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        wait_for(hold.reached.is_set)
        drained = live.run(live.lifecycle.drain())
        events = stream_events(response)
    assert events[-1] == "[DONE]"
    assert "shutting down" in json.loads(events[-2])["error"]["message"]
    drained.result(timeout=5)
    assert live.stopped.is_set()


@pytest.fixture
def live_drain(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Live]:
    yield from serve(tmp_path, drain_timeout=request.param)


@pytest.mark.parametrize("live_drain", [30.0], indirect=True)
def test_past_the_request_timeout_a_reply_is_a_504_and_a_stream_ends_with_an_error(
    live_drain: Live,
) -> None:
    live = live_drain
    live.lifecycle.request_timeout = 0.2
    live.engine.enqueue([Hold()], ["Hel", Hold()])
    with httpx.Client(base_url=live.origin, timeout=10) as http:
        reply = http.post("/v1/chat/completions", json={"model": BASE, "messages": USER})
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "request_timeout"
        body = {"model": BASE, "messages": USER, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            events = stream_events(response)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "request_timeout"
    wait_for(lambda: live.engine.running == set())
