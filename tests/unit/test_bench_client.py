"""The benchmark's load client against loragate's real app over a live socket (fake engine)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from benchmarks.loadgen import LevelRun, client_session, run_level
from benchmarks.workload import Encoder, level_bodies, make_prompts
from loragate.engine.fake import CharTokenizer, Hold
from tests.unit.conftest import BASE, LiveFake


async def _run(url: str, bodies: list[dict[str, Any]], concurrency: int) -> LevelRun:
    async with client_session() as session:
        return await run_level(session, url, bodies, concurrency)


def test_streamed_requests_time_the_first_content_token_and_each_gap(live_fake: LiveFake) -> None:
    url, fake = live_fake.chat_url, live_fake.fake
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
    (record,) = asyncio.run(_run(live_fake.chat_url, bodies, concurrency=1)).records
    assert record.ok and record.ttft is not None and record.ttft >= 0.25


def test_unstreamed_requests_and_errors_are_recorded(live_fake: LiveFake) -> None:
    url = live_fake.chat_url
    bodies = level_bodies([BASE, "no-such-model"], ["x", "y"], output_tokens=2, stream=False)
    run = asyncio.run(_run(url, bodies, concurrency=1))
    good, bad = run.records
    assert good.ok and good.output_tokens == 2 and good.ttft == pytest.approx(good.latency, 0.5)
    assert not bad.ok and bad.error is not None and bad.error.startswith("HTTP 404")


def test_prompts_are_distinct_reproducible_and_cut_to_the_token_count() -> None:
    tokenizer: Encoder = CharTokenizer()
    prompts = make_prompts(tokenizer, 3, 40, seed=7)
    assert len(set(prompts)) == 3
    assert make_prompts(tokenizer, 3, 40, seed=7) == prompts
    assert all(len(tokenizer.encode(p, add_special_tokens=False)) <= 40 for p in prompts)
