"""The real gateway under faults: its engine core killed mid-stream (and the dead engine freed),
a burst beyond its queue, SIGTERM during long streams (drained, exit 0), and a drain timeout
that ends the rest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway, running_gateway
from tests.integration.lora_factory import make_lora_adapter
from tests.integration.persona_support import PERSONA_STD, greedy_tokens

MAX_NUM_SEQS, MAX_WAITING = 8, 2
PERSONA = "t3-alpha"
STORY = [{"role": "user", "content": "Write a very long story."}]


def chat(max_tokens: int, model: str = BASE_MODEL, stream: bool = True) -> dict[str, Any]:
    return {
        "model": model,
        "messages": STORY,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }


def engine_cores(gateway: Gateway) -> list[psutil.Process]:
    children = psutil.Process(gateway.process.pid).children(recursive=True)
    return [
        p for p in children if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
    ]


def health(gateway: Gateway) -> str:
    try:
        return str(httpx.get(f"{gateway.url}/health", timeout=5).json()["status"])
    except httpx.HTTPError:
        return "unreachable"


async def read_stream(
    http: httpx.AsyncClient, body: dict[str, Any], started: asyncio.Event | None = None
) -> list[str]:
    """The stream's data lines; `started` is set once content has come."""
    events: list[str] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line.removeprefix("data: "))
            if started is not None and '"content":"' in line:
                started.set()
    return events


def finish_reason(events: list[str]) -> str | None:
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    return next((r for r in reversed(reasons) if r), None)


@pytest.fixture(scope="module")
def persona_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("supervised-adapters")
    return make_lora_adapter(root / PERSONA, seed=1, std=PERSONA_STD)


@pytest.fixture(scope="module")
def supervised(persona_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("supervised") / "gateway.log"
    args = [
        "--persona", f"{PERSONA}={persona_path}",
        "--max-num-seqs", str(MAX_NUM_SEQS),
        "--max-waiting-requests", str(MAX_WAITING),
    ]  # fmt: skip
    with running_gateway(log, args) as gateway:
        yield gateway


def test_a_burst_beyond_the_queue_gets_429s_with_retry_after_and_the_rest_complete(
    supervised: Gateway,
) -> None:
    burst = 3 * (MAX_NUM_SEQS + MAX_WAITING)

    def one(_: int) -> httpx.Response:
        body = chat(48, stream=False)
        return httpx.post(f"{supervised.base_url}/chat/completions", json=body, timeout=600)

    with ThreadPoolExecutor(burst) as pool:
        responses = list(pool.map(one, range(burst)))
    statuses = [r.status_code for r in responses]
    refused = [r for r in responses if r.status_code == 429]
    done = [r for r in responses if r.status_code == 200]
    assert len(refused) + len(done) == burst, statuses
    assert len(refused) >= burst - 2 * (MAX_NUM_SEQS + MAX_WAITING), statuses
    assert len(done) >= MAX_NUM_SEQS + MAX_WAITING, statuses
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["code"] == "server_overloaded"
    for response in done:
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "length" and choice["message"]["content"]
    # The SDK's own retries get through once the burst is over.
    sdk = openai.OpenAI(base_url=supervised.base_url, api_key="x", max_retries=5)
    reply = sdk.chat.completions.create(model=BASE_MODEL, messages=STORY, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content


def test_a_killed_engine_ends_every_stream_with_an_error_and_comes_back_with_its_persona(
    supervised: Gateway,
) -> None:
    sdk = openai.OpenAI(base_url=supervised.base_url, api_key="x", max_retries=0, timeout=300)
    before = greedy_tokens(sdk, PERSONA)
    assert before != greedy_tokens(sdk, BASE_MODEL)
    pid = supervised.process.pid

    async def kill_during_streams() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=supervised.url, timeout=300) as http:
            started = [asyncio.Event() for _ in range(8)]
            models = [BASE_MODEL, PERSONA] * 4
            streams = [
                asyncio.create_task(read_stream(http, chat(1500, model), event))
                for model, event in zip(models, started, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 300)
            cores = engine_cores(supervised)
            assert cores
            for core in cores:
                os.kill(core.pid, signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*streams), 60)

    killed_at = time.monotonic()
    for events in asyncio.run(kill_during_streams()):
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "service_unavailable_error", error
    seen = []
    while (state := health(supervised)) != "ok" or "recovering" not in seen:
        seen.append(state)
        assert time.monotonic() - killed_at < 300, f"not recovered: {seen[-5:]}"
        time.sleep(0.2)
    recovered_in = time.monotonic() - killed_at
    print(f"recovered in {recovered_in:.1f} s; health went {sorted(set(seen))} then ok")
    assert "recovering" in seen
    assert supervised.process.poll() is None and supervised.process.pid == pid
    assert greedy_tokens(sdk, PERSONA) == before
    loaded = httpx.get(f"{supervised.base_url}/personas/{PERSONA}", timeout=30).json()
    assert loaded["state"] == "loaded"


def test_a_restart_frees_the_dead_engine(tmp_path: Path) -> None:
    """Nothing keeps a dead engine (its AsyncLLM, tokenizer, processors) once the new one serves:
    in a fresh interpreter, as in `loragate serve`, where vLLM's first import happens."""
    probe = [sys.executable, "-m", "tests.integration.restart_probe", str(tmp_path), "2"]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"gateway RSS (MiB) at start and after each restart: {report['rss_mib']}")
    assert report["alive"] == [[], []]


def test_sigterm_lets_the_streams_in_flight_finish_then_exits_0(
    tmp_path: Path,
) -> None:
    with running_gateway(tmp_path / "gateway.log") as gateway:

        async def terminate_during_streams() -> tuple[list[list[str]], int]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=300) as http:
                started = [asyncio.Event() for _ in range(4)]
                streams = [
                    asyncio.create_task(read_stream(http, chat(160), event)) for event in started
                ]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 300)
                gateway.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                refused = await http.post("/v1/chat/completions", json=chat(4, stream=False))
                return await asyncio.gather(*streams), refused.status_code

        streams, refused = asyncio.run(terminate_during_streams())
        for events in streams:
            assert events[-1] == "[DONE]" and finish_reason(events) == "length", events[-2:]
        assert refused == 503
        assert gateway.process.wait(timeout=60) == 0


def test_past_the_drain_timeout_the_streams_end_with_an_error_event(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gateway.log", ["--drain-timeout", "1"]) as gateway:

        async def terminate_during_streams() -> list[list[str]]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=300) as http:
                started = [asyncio.Event() for _ in range(2)]
                streams = [
                    asyncio.create_task(read_stream(http, chat(1500), event)) for event in started
                ]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 300)
                gateway.process.send_signal(signal.SIGTERM)
                return await asyncio.wait_for(asyncio.gather(*streams), 60)

        for events in asyncio.run(terminate_during_streams()):
            assert events[-1] == "[DONE]"
            assert "shutting down" in json.loads(events[-2])["error"]["message"]
        assert gateway.process.wait(timeout=60) == 0
