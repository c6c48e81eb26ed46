"""GET /metrics over the fake engine: what loragate counts per persona, per route and per adapter,
read back with prometheus_client's own parser; and the JSON access log."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from loragate.engine.fake import Hold
from loragate.server.observability import JsonFormatter, RequestIdFilter
from tests.unit import personas_support
from tests.unit.conftest import BASE as FAKE_BASE
from tests.unit.conftest import LiveFake, wait_for
from tests.unit.personas_support import BASE, CountingEngine, start, write_bundle

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

root, engine, client = personas_support.root, personas_support.engine, personas_support.client
raise_server_exceptions = personas_support.raise_server_exceptions


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names_with(samples: Samples, label: str, value_: str) -> set[str]:
    return {name for name, labels in samples if (label, value_) in labels}


def put(client: TestClient, root: Path, name: str, version: str) -> None:
    bundle = write_bundle(root / f"{name}-{version}", version=version)
    response = client.put(f"/v1/personas/{name}", json={"path": str(bundle)})
    assert response.status_code in (200, 201), response.text


def test_requests_tokens_and_latencies_are_counted_per_persona_and_outcome(
    client: TestClient, root: Path, sdk: openai.OpenAI, engine: CountingEngine
) -> None:
    put(client, root, "alpha", "1")
    put(client, root, "beta", "7")
    for _ in range(3):
        sdk.chat.completions.create(model="alpha", messages=USER)
    for _ in sdk.chat.completions.create(model="alpha", messages=USER, stream=True):
        pass
    sdk.completions.create(model="beta", prompt="once upon")
    sdk.completions.create(model=BASE, prompt="x")
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nobody", messages=USER)
    tokenized = client.post("/tokenize", json={"model": "alpha", "prompt": "hi"})
    assert tokenized.status_code == 200  # a tokenizer call, not a request of the persona's
    with pytest.raises(openai.BadRequestError):  # over the context: refused once resolved
        sdk.completions.create(model="beta", prompt="x" * 5000)
    with pytest.raises(openai.BadRequestError):  # invalid before any model is resolved
        sdk.chat.completions.create(model="beta", messages=USER, temperature=-1)

    samples = scrape(client)
    alpha, beta = {"persona": "alpha", "version": "1"}, {"persona": "beta", "version": "7"}
    assert value(samples, "loragate_persona_requests_total", **alpha, outcome="ok") == 4
    assert value(samples, "loragate_persona_requests_total", **beta, outcome="ok") == 1
    assert value(samples, "loragate_persona_requests_total", **beta, outcome="client_error") == 1
    unknown = {"persona": "unknown", "version": "", "outcome": "client_error"}
    assert value(samples, "loragate_persona_requests_total", **unknown) == 1
    base = {"persona": BASE, "version": ""}
    assert value(samples, "loragate_persona_requests_total", **base, outcome="ok") == 1
    # Each fake reply is "Hello", " world": two tokens; the prompts are the engine's own.
    prompts = [
        len(ids)
        for ids, _, adapter in engine.requests
        if adapter and adapter.name.startswith("alpha")
    ]
    assert value(samples, "loragate_persona_prompt_tokens_total", **alpha) == sum(prompts)
    assert value(samples, "loragate_persona_completion_tokens_total", **alpha) == 8
    assert value(samples, "loragate_persona_time_to_first_token_seconds_count", **alpha) == 4
    assert value(samples, "loragate_persona_e2e_request_latency_seconds_count", **alpha) == 4
    assert value(samples, "loragate_persona_inter_token_latency_seconds_count", **alpha) == 4
    assert value(samples, "loragate_persona_request_queue_time_seconds_count", **alpha) == 4
    assert value(samples, "loragate_persona_requests_in_flight", **alpha) == 0
    chat = {"route": "/v1/chat/completions", "method": "POST"}
    assert value(samples, "loragate_http_requests_total", **chat, status="200") == 4
    assert value(samples, "loragate_http_requests_total", **chat, status="404") == 1
    assert value(samples, "loragate_http_requests_total", **chat, status="400") == 1
    assert value(samples, "loragate_http_request_body_bytes_count", route="/v1/completions") == 3


def test_residency_follows_loads_evictions_swaps_and_deletes(tmp_path: Path, root: Path) -> None:
    engine = CountingEngine(load_delay=0)
    with start(tmp_path, engine, root, max_cpu_loras=1) as client:
        put(client, root, "alpha", "1")
        samples = scrape(client)
        assert value(samples, "loragate_persona_loaded", persona="alpha", version="1") == 1
        assert (
            value(samples, "loragate_persona_adapter_loads_total", persona="alpha", version="1")
            == 1
        )
        assert (
            value(
                samples, "loragate_persona_adapter_load_seconds_count", persona="alpha", version="1"
            )
            == 1
        )
        assert value(samples, "loragate_lora_max_cpu_loras") == 1

        put(client, root, "beta", "1")  # one slot: alpha makes room
        samples = scrape(client)
        assert value(samples, "loragate_persona_loaded", persona="alpha", version="1") == 0
        assert value(samples, "loragate_persona_loaded", persona="beta", version="1") == 1
        assert (
            value(samples, "loragate_persona_adapter_evictions_total", persona="alpha", version="1")
            == 1
        )
        assert value(samples, "loragate_lora_adapters_resident") == 1

        put(client, root, "beta", "2")
        assert value(scrape(client), "loragate_persona_swaps_total", persona="beta") == 1

        engine.refuse.add("gamma")
        bundle = write_bundle(root / "gamma", version="1")
        assert client.put("/v1/personas/gamma", json={"path": str(bundle)}).status_code == 400
        failures = "loragate_persona_adapter_load_failures_total"
        assert value(scrape(client), failures, persona="gamma", version="1") == 1

        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
        sdk.chat.completions.create(model="alpha", messages=USER)
        assert "loragate_persona_requests_total" in names_with(scrape(client), "persona", "alpha")
        assert client.delete("/v1/personas/alpha").status_code == 200
        assert names_with(scrape(client), "persona", "alpha") == set()


def test_metrics_need_the_api_key_unless_public(tmp_path: Path, root: Path) -> None:
    with start(tmp_path, CountingEngine(), root, api_key="secret") as client:
        assert client.get("/metrics").status_code == 401
        assert value(scrape(client, authorization="Bearer secret"), "loragate_lora_max_loras") >= 1
    with start(tmp_path, CountingEngine(), root, api_key="secret", metrics_public=True) as client:
        assert client.get("/metrics").status_code == 200


def test_the_access_log_is_one_json_object_per_request(
    client: TestClient, root: Path, sdk: openai.OpenAI
) -> None:
    put(client, root, "alpha", "1")
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)  # as configure_logging's, for --log-format json
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("loragate.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        sdk.chat.completions.create(model="alpha", messages=USER)
        for _ in sdk.chat.completions.create(model="alpha", messages=USER, stream=True):
            pass
        client.get("/health")  # a probe: not in the access log
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)

    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [e["stream"] for e in entries] == [False, True], entries
    for entry in entries:
        assert entry["route"] == "/v1/chat/completions" and entry["status"] == 200
        assert (entry["model"], entry["version"], entry["outcome"]) == ("alpha", "1", "ok")
        assert entry["completion_tokens"] == 2 and entry["prompt_tokens"] > 0
        assert entry["latency_s"] >= entry["ttft_s"] > 0
        assert len(entry["request_id"]) == 32 and entry["logger"] == "loragate.access"


def scrape_live(origin: str) -> Samples:
    text = httpx.get(f"{origin}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_client_leaving_a_stream_is_counted_as_aborted(live_fake: LiveFake) -> None:
    hold = Hold()
    live_fake.fake.enqueue(["Hel", hold, "lo"])
    with openai.OpenAI(base_url=f"{live_fake.origin}/v1", api_key="x", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model=FAKE_BASE, messages=USER, stream=True)
        next(stream), next(stream)
        wait_for(hold.reached.is_set)
        assert value(scrape_live(live_fake.origin), "loragate_http_open_streams") == 1
        stream.close()
    base = {"persona": FAKE_BASE, "version": ""}

    def aborted() -> bool:
        samples = scrape_live(live_fake.origin)
        return value(samples, "loragate_persona_requests_total", **base, outcome="aborted") == 1

    wait_for(aborted)
    samples = scrape_live(live_fake.origin)
    route = "/v1/chat/completions"
    assert value(samples, "loragate_http_client_disconnects_total", route=route) == 1
    assert value(samples, "loragate_http_open_streams") == 0
    assert value(samples, "loragate_persona_requests_in_flight", **base) == 0
    assert value(samples, "loragate_persona_completion_tokens_total", **base) == 1
