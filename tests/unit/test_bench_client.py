"""The benchmark's load client against loragate's real app over a live socket (fake engine)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from benchmarks.loadgen import LevelRun, client_session, run_level
from benchmarks.servers import free_port
from benchmarks.workload import Encoder, level_bodies, make_prompts
from loragate.engine.fake import CharTokenizer, FakeEngine, Hold
from loragate.server.app import create_app
from loragate.settings import ServerSettings
from tests.unit.conftest import BASE, fake_state_factory


@dataclass
class LiveFake:
    url: str
    fake: FakeEngine
    loop: asyncio.AbstractEventLoop | None = None  # the server's, once it has started

    def release(self, hold: Hold) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(hold.released.set)


@pytest.fixture
def live_fake() -> Iterator[LiveFake]:
    """The app over a FakeEngine, served by uvicorn on a real port in a thread."""
    port = free_port()
    live = LiveFake(f"http://127.0.0.1:{port}/v1/chat/completions", FakeEngine())
    fake_factory = fake_state_factory(live.fake)

    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[object]:
        live.loop = asyncio.get_running_loop()
        async with fake_factory(settings) as state:  # type: ignore[attr-defined]
            yield state

    settings = ServerSettings.model_construct(log_level="warning")
    app = create_app(settings, factory)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def _run(url: str, bodies: list[dict[str, Any]], concurrency: int) -> LevelRun:
    async with client_session() as session:
        return await run_level(session, url, bodies, concurrency)


def test_streamed_requests_time_the_first_content_token_and_each_gap(live_fake: LiveFake) -> None:
    url, fake = live_fake.url, live_fake.fake
    fake.enqueue(["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"])
    bodies = level_bodies([BASE], ["one", "two", "three"], output_tokens=3, stream=True)
    run = asyncio.run(_run(url, bodies, concurrency=2))
    assert [r.error for r in run.records] == [None] * 3  # all ok
    for record in run.records:
        assert record.output_tokens == 3  # from the usage chunk
        assert len(record.itl) == 2  # three content chunks, two gaps
        assert record.ttft is not None and 0 < record.ttft <= record.latency
    assert sorted(r.prompt_tokens for r in run.records) == sorted(
        len(p) for p, _, _ in fake.requests
    )
    sent = [options for _, options, _ in fake.requests]
    assert all(o.ignore_eos and o.max_tokens == 3 and o.temperature == 0 for o in sent)


def test_the_clock_stops_at_content_not_at_the_role_chunk(live_fake: LiveFake) -> None:
    """loragate sends the role chunk before the engine answers; TTFT must not count it."""
    hold = Hold()
    live_fake.fake.enqueue([hold, "late"])
    threading.Timer(0.3, live_fake.release, args=(hold,)).start()
    bodies = level_bodies([BASE], ["hi"], output_tokens=1, stream=True)
    (record,) = asyncio.run(_run(live_fake.url, bodies, concurrency=1)).records
    assert record.ok and record.ttft is not None and record.ttft >= 0.25


def test_unstreamed_requests_and_errors_are_recorded(live_fake: LiveFake) -> None:
    url = live_fake.url
    bodies = level_bodies([BASE, "no-such-model"], ["x", "y"], output_tokens=2, stream=False)
    run = asyncio.run(_run(url, bodies, concurrency=1))
    good, bad = run.records
    assert good.ok and good.output_tokens == 2 and good.ttft == pytest.approx(good.latency, 0.5)
    assert not bad.ok and bad.error is not None and bad.error.startswith("HTTP 404")


def test_prompts_are_distinct_reproducible_and_cut_to_the_token_count() -> None:
    tokenizer: Encoder = CharTokenizer()  # type: ignore[assignment]
    prompts = make_prompts(tokenizer, 3, 40, seed=7)
    assert len(set(prompts)) == 3
    assert make_prompts(tokenizer, 3, 40, seed=7) == prompts
    assert all(len(tokenizer.encode(p, add_special_tokens=False)) <= 40 for p in prompts)
