"""Requests that once took the server down or got a wrong answer without an error (issue 10),
on the real engine: after each, the engine still serves.

- Prompt logprobs (`echo` with `logprobs`) over prompts of several tokens used to kill the
  engine: vLLM's logits LoRA calls the CPU LoRA ops with one index per request for the rows of
  a request's prompt, which loragate's isolation wrapper refused inside vLLM's worker.
- A persona whose activations overflow must not poison the KV cache for everyone else.
- Every field at its extremes, and hostile bodies: a 4xx, never a 5xx or a dead engine.
- Killed with SIGKILL, the gateway takes its engine processes with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway, running_gateway
from tests.integration.lora_factory import make_lora_adapter
from tests.integration.persona_support import PersonaApi

pytestmark = pytest.mark.integration

PERSONA = "hostile-ok"
POISON = "hostile-poison"
# No system message: the chat template's default system prompt leads, as for most requests.
DEFAULT_PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name three fruits."}
]


@pytest.fixture(scope="module")
def personas(gateway: Gateway, workspace: Path) -> Iterator[None]:
    """A normal persona, and one whose weights are huge but finite: its activations overflow."""
    ok = make_lora_adapter(workspace / "hostile" / "ok", seed=11, std=0.05)
    poison = make_lora_adapter(workspace / "hostile" / "poison", seed=12, std=1e18)
    with PersonaApi(gateway) as api:
        api.put_ok(PERSONA, ok)
        api.put_ok(POISON, poison)
        yield
        api.delete(PERSONA)
        api.delete(POISON)


def assert_serving(gateway: Gateway, client: openai.OpenAI) -> None:
    assert httpx.get(f"{gateway.url}/health", timeout=30).status_code == 200
    reply = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content


def _ids(length: int) -> list[int]:
    """A prompt of exactly `length` ordinary tokens of the embedded model's vocabulary."""
    return [1000 + (7 * i) % 5000 for i in range(length)]


@pytest.mark.usefixtures("personas")
@pytest.mark.parametrize("length", [1, 3, 50])
def test_prompt_logprobs_on_base_and_persona_never_kill_the_engine(
    gateway: Gateway, client: openai.OpenAI, length: int
) -> None:
    prompt = _ids(length)
    prompt_logprobs: dict[str, list[float]] = {}
    for model in (BASE_MODEL, PERSONA):
        for echo in (True, False):
            for logprobs in (0, 1, 5):
                reply = client.completions.create(
                    model=model, prompt=prompt, max_tokens=2, echo=echo, logprobs=logprobs,
                    temperature=0,
                )  # fmt: skip
                choice = reply.choices[0]
                assert choice.logprobs is not None and reply.usage is not None
                tokens = choice.logprobs.tokens or []
                assert len(tokens) == (length if echo else 0) + reply.usage.completion_tokens
                tops = choice.logprobs.top_logprobs or []
                for token, top in zip(tokens[1:], tops[1:], strict=True):
                    assert top is not None and token in top  # the chosen token, also at 0
                    assert len(top) <= logprobs + 1
                if echo and logprobs == 1:
                    prompt_logprobs[model] = list(choice.logprobs.token_logprobs or [])[:length]
    if length > 1:  # the persona's adapter applies to its prompt rows
        assert prompt_logprobs[BASE_MODEL] != prompt_logprobs[PERSONA]
    assert_serving(gateway, client)


@pytest.mark.usefixtures("personas")
async def test_prompt_logprobs_in_mixed_batches(gateway: Gateway, client: openai.OpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="x", max_retries=0) as aio:

        async def one(model: str, length: int) -> int:
            reply = await aio.completions.create(
                model=model, prompt=_ids(length), max_tokens=3, echo=True, logprobs=2
            )
            assert reply.usage is not None
            return reply.usage.prompt_tokens

        models = [BASE_MODEL, PERSONA, POISON, BASE_MODEL, PERSONA, BASE_MODEL]
        jobs = [one(model, 3 + 9 * i) for i, model in enumerate(models)]
        assert await asyncio.gather(*jobs) == [3 + 9 * i for i in range(len(models))]
    assert_serving(gateway, client)


def _greedy(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=DEFAULT_PROMPT,
        max_tokens=12,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


@pytest.mark.usefixtures("personas")
def test_an_overflowing_persona_leaves_everyone_elses_replies_intact(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    before = {model: _greedy(client, model) for model in (BASE_MODEL, PERSONA)}
    assert all(before.values())
    for _ in range(3):  # 200, whatever it says: its activations are bounded, not NaN
        reply = client.chat.completions.create(
            model=POISON,
            messages=DEFAULT_PROMPT,
            max_tokens=24,
            logprobs=True,
        )
        assert reply.choices[0].logprobs is not None
    after = {model: _greedy(client, model) for model in (BASE_MODEL, PERSONA)}
    assert after == before
    assert_serving(gateway, client)


JSON = {"content-type": "application/json"}
CHAT = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
TEXT = {"model": BASE_MODEL, "prompt": "Hello", "max_tokens": 3}
EXTREMES: list[tuple[str, dict[str, Any]]] = [
    *[("chat", {"seed": v}) for v in (2**63, -(2**63) - 1, 2**64, 2**63 - 1, -(2**63))],
    *[("chat", {"n": v}) for v in (0, 1000, 2**40)],
    *[("chat", {"max_tokens": v}) for v in (0, -1, 2**31, 2**63, 2**64)],
    *[("chat", {"max_completion_tokens": v}) for v in (2**31 - 1, 10**30)],
    ("chat", {"logprobs": True, "top_logprobs": 1000}),
    ("chat", {"logprobs": True, "top_logprobs": 20}),
    *[("chat", {"logit_bias": v}) for v in ({"99999999": 1}, {"1": 1e9}, {"-1": 1}, {"5": 100})],
    *[("chat", {"temperature": v}) for v in (1e-300, 2.0, 3.0, -1, 1e308)],
    *[("chat", {"top_p": v}) for v in (0.0, 1e-300, 1.5)],
    *[("chat", {"top_k": v}) for v in (2**31 - 1, 2**62, -2, 1)],
    *[("chat", {"min_p": v}) for v in (0.0, 1.0, 2.0)],
    *[("chat", {"presence_penalty": v}) for v in (2.0, -2.0, 1e308)],
    *[("chat", {"frequency_penalty": v}) for v in (2.0, -2.0, -1e308)],
    *[("chat", {"repetition_penalty": v}) for v in (1e-300, 0.01, 100.0, 1e308)],
    *[("chat", {"min_tokens": v}) for v in (2**31 - 1, 2**40, 3)],
    ("chat", {"stop": [f"s{i}" for i in range(1000)]}),
    ("chat", {"stop": [f"s{i}" for i in range(64)]}),
    ("chat", {"stop": "x" * 100_000}),
    ("chat", {"n": 4, "temperature": 0}),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"schema": "nope"}}}),
    ("chat", {"structured_outputs": {"regex": "("}}),
    ("chat", {"structured_outputs": {"grammar": "not a grammar ::= ::="}}),
    ("chat", {"structured_outputs": {"choice": ["yes", "no"]}}),
    ("chat", {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("chat", {"messages": [{"role": "user", "content": "x" * 100_000}]}),
    ("chat", {"messages": [{"role": "user", "content": "a\x00b"}]}),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
    ("chat", {"stream_options": {"include_usage": True}}),
    ("text", {"prompt": [10**9]}),
    ("text", {"prompt": [-1]}),
    ("text", {"prompt": [[1, 2], [2**31]]}),
    ("text", {"prompt": ["a"] * 300, "n": 16}),
    ("text", {"echo": True, "logprobs": 20}),
    ("text", {"logprobs": 10**6}),
    ("text", {"prompt": "x" * 100_000}),
    ("text", {"prompt": "\ud800"}),
]


def _post(http: httpx.Client, kind: str, fields: dict[str, Any]) -> httpx.Response:
    base = CHAT if kind == "chat" else TEXT
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    # json.dumps escapes a lone surrogate as \ud800, which httpx's own encoder cannot write.
    return http.post(path, content=json.dumps({**base, **fields}), headers=JSON)


def test_every_field_at_its_extremes_is_served_or_refused_never_a_5xx(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    server_errors = []
    with httpx.Client(base_url=gateway.url, timeout=300) as http:
        for kind, fields in EXTREMES:
            response = _post(http, kind, fields)
            if response.status_code >= 500:
                server_errors.append((kind, fields, response.status_code, response.text[:300]))
            elif response.status_code >= 400:
                assert response.json()["error"]["message"], response.text
    assert not server_errors
    assert_serving(gateway, client)


def test_hostile_bodies_are_refused_and_the_engine_serves(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    huge = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 50_000_000
    deep = b'{"model": "m", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with httpx.Client(base_url=gateway.url, timeout=300, headers=JSON) as http:
        for path in ("/v1/chat/completions", "/v1/completions"):
            too_large = http.post(path, content=huge + b'"}]}')
            assert too_large.status_code == 413, too_large.text
            assert too_large.json()["error"]["code"] == "request_too_large"
            assert "x-request-id" in too_large.headers
            for body in (deep, b'{"prompt": "\xff\xfe"}'):
                response = http.post(path, content=body)
                assert response.status_code == 400, response.text
        for body in (deep, b'{"prompt": "\xff\xfe"}', b"[" * 10_000):
            legacy = httpx.post(gateway.legacy_url, content=body, timeout=60)
            assert legacy.status_code == 400, legacy.text
    assert_serving(gateway, client)


def test_the_legacy_port_serves_only_the_tutorials_routes(gateway: Gateway) -> None:
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/personas"), ("GET", "/")):
        response = httpx.request(method, f"{gateway.legacy_url}{path}", timeout=30)
        assert response.status_code == 404, (path, response.text)
        assert "legacy port" in response.json()["error"]["message"]
    assert httpx.get(f"{gateway.legacy_url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{gateway.url}/v1/models", timeout=30).status_code == 200


def test_a_killed_gateway_takes_its_engine_processes_along(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    log = tmp_path_factory.mktemp("orphans") / "gateway.log"
    with running_gateway(log, ["--header-read-timeout", "2"]) as gateway:
        _slow_clients_are_cut_off(gateway)
        engine = psutil.Process(gateway.process.pid).children(recursive=True)
        assert engine, "the gateway has no engine processes"
        os.kill(gateway.process.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs(engine, timeout=30)
        assert not alive, f"orphaned: {[(p.pid, p.name()) for p in alive]}"
        assert len(gone) == len(engine)


def _slow_clients_are_cut_off(gateway: Gateway) -> None:
    """Half-sent headers, and no bytes at all: closed after the header-read timeout."""
    import socket

    sockets = []
    for i in range(100):
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        if i % 2:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    time.sleep(4)
    try:
        assert all(_closed_by_server(sock) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(f"{gateway.url}/v1/models", timeout=30).status_code == 200


def _closed_by_server(sock: Any) -> bool:
    try:
        return bool(sock.recv(1) == b"")
    except ConnectionResetError:  # closed with our half-sent request unread
        return True
