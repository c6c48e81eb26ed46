"""Clients that leave, keys that are wrong, an engine that dies: the server frees and tells."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway, running_gateway

LONG = {
    "model": BASE_MODEL,
    "messages": [{"role": "user", "content": "Write a very long story."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


def unfinished(gateway: Gateway, headers: dict[str, str] | None = None) -> int:
    status = httpx.get(f"{gateway.base_url}/engine/status", headers=headers, timeout=30).json()
    return int(status["unfinished_requests"])


def wait_until_idle(gateway: Gateway, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while unfinished(gateway) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert unfinished(gateway) == 0, "the engine still holds the departed client's request"


def test_stream_disconnect_aborts_engine_request(gateway: Gateway) -> None:
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json={**LONG, "stream": True}, timeout=300
    ) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert unfinished(gateway) == 1  # running now, so the check below can fail
    wait_until_idle(gateway)


def test_non_streamed_disconnect_aborts_engine_request(gateway: Gateway) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/chat/completions", json=LONG, timeout=3)
    wait_until_idle(gateway)


def test_server_keeps_serving_after_disconnects(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("keyed") / "gateway.log"
    with running_gateway(log, ["--api-key", "sesame", "--on-engine-death", "exit"]) as gw:
        yield gw


def test_api_key_required_except_health(keyed_gateway: Gateway) -> None:
    url = keyed_gateway.base_url
    assert httpx.get(f"{keyed_gateway.url}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{url}/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    legacy = httpx.post(keyed_gateway.legacy_url, json={"prompt": "hi"})
    assert legacy.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=url, api_key="sesame", max_retries=0)
    reply = good.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None


def test_with_on_engine_death_exit_a_dead_engine_ends_the_process(keyed_gateway: Gateway) -> None:
    """Runs last in this module: it kills the keyed gateway's engine core. vLLM's own server's
    behaviour: exit non-zero at once, for a supervisor (systemd, Kubernetes) to restart."""
    children = psutil.Process(keyed_gateway.process.pid).children(recursive=True)
    cores = [
        p for p in children if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
    ]
    assert cores, f"no engine core among {[p.name() for p in children]}"
    for core in cores:
        os.kill(core.pid, signal.SIGKILL)
    assert keyed_gateway.process.wait(timeout=120) == 1
    assert "--on-engine-death exit" in keyed_gateway.log()
