"""Metrics and the access log on the real engine (issue 15), on a gateway of its own so that every
count is this module's: two adapter slots (--max-loras 2, --max-cpu-loras 2), JSON logs.

/metrics is read with prometheus_client's parser: vLLM's own `vllm:*` metrics beside loragate's
per persona, per adapter and per route.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway, running_gateway
from tests.integration.lora_factory import make_lora_adapter
from tests.integration.persona_support import PERSONA_STD, PersonaApi

pytestmark = pytest.mark.integration

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Count to twenty."}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def metered(home: Path) -> Iterator[Gateway]:
    args = ["--adapter-root", str(home), "--max-loras", "2", "--max-cpu-loras", "2",
            "--log-format", "json"]  # fmt: skip
    with running_gateway(home / "gateway.log", args) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def client(metered: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=metered.base_url, api_key="x", max_retries=0, timeout=300) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def adapters(home: Path) -> dict[str, Path]:
    seeds = {"m-alpha": 31, "m-beta": 32, "m-gamma": 33}
    return {
        name: make_lora_adapter(home / name, seed=seed, std=PERSONA_STD)
        for name, seed in seeds.items()
    }


def scrape(gateway: Gateway) -> Samples:
    response = httpx.get(f"{gateway.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def vllm_value(samples: Samples, name: str) -> float:
    """A vLLM metric summed over its engines (its labels: model_name, engine)."""
    return sum(v for (n, _), v in samples.items() if n == name)


def wait_until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_counts_per_persona_and_outcome_equal_what_was_sent(
    metered: Gateway, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    with PersonaApi(metered) as api:
        api.put_ok("m-alpha", adapters["m-alpha"])
        api.put_ok("m-beta", adapters["m-beta"])
    tokens = {"m-alpha": 0, "m-beta": 0}
    for model, n in (("m-alpha", 3), ("m-beta", 2)):
        for _ in range(n):
            reply = client.chat.completions.create(model=model, messages=USER, max_tokens=8)
            assert reply.usage is not None
            tokens[model] += reply.usage.completion_tokens
    stream = client.chat.completions.create(
        model="m-alpha", messages=USER, max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    tokens["m-alpha"] += usage[0].completion_tokens
    leaving = client.chat.completions.create(
        model="m-beta", messages=USER, max_tokens=200, stream=True
    )
    next(leaving), next(leaving)
    leaving.close()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="m-nobody", messages=USER, max_tokens=8)

    alpha, beta = {"persona": "m-alpha", "version": "1"}, {"persona": "m-beta", "version": "1"}
    requests = "loragate_persona_requests_total"
    wait_until(lambda: value(scrape(metered), requests, **beta, outcome="aborted") == 1)
    samples = scrape(metered)
    assert value(samples, requests, **alpha, outcome="ok") == 4
    assert value(samples, requests, **beta, outcome="ok") == 2
    assert value(samples, requests, persona="unknown", version="", outcome="client_error") == 1
    assert value(samples, "loragate_persona_completion_tokens_total", **alpha) == tokens["m-alpha"]
    assert value(samples, "loragate_persona_completion_tokens_total", **beta) > tokens["m-beta"]
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                      "request_queue_time_seconds"):  # fmt: skip
        assert value(samples, f"loragate_persona_{histogram}_count", **alpha) == 4
    assert value(samples, "loragate_persona_inter_token_latency_seconds_count", **alpha) >= 4 * 6
    chat = {"route": "/v1/chat/completions"}
    assert value(samples, "loragate_http_client_disconnects_total", **chat) == 1
    assert value(samples, "loragate_http_open_streams") == 0
    # vLLM's own, from its stat logger: the same requests, seen by the engine.
    assert vllm_value(samples, "vllm:request_success_total") == 6  # not the aborted one
    assert vllm_value(samples, "vllm:prompt_tokens_total") > 0
    assert vllm_value(samples, "vllm:generation_tokens_total") >= sum(tokens.values())
    assert any(name == "vllm:lora_requests_info" for name, _ in samples)


async def test_vllm_requests_running_rises_during_long_requests_and_falls_after(
    metered: Gateway,
) -> None:
    client = openai.AsyncOpenAI(base_url=metered.base_url, api_key="x", max_retries=0, timeout=300)

    async def long_reply() -> None:
        await client.chat.completions.create(
            model=BASE_MODEL, messages=USER, max_tokens=160,
            extra_body={"ignore_eos": True},
        )  # fmt: skip

    replies = asyncio.gather(long_reply(), long_reply())
    peak = 0.0
    while not replies.done() and peak < 2:
        peak = max(peak, vllm_value(await asyncio.to_thread(scrape, metered),
                                    "vllm:num_requests_running"))  # fmt: skip
        await asyncio.sleep(0.2)
    await replies
    await client.close()
    assert peak >= 1
    wait_until(lambda: vllm_value(scrape(metered), "vllm:num_requests_running") == 0)


def test_residency_follows_a_load_an_eviction_and_a_delete(
    metered: Gateway, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    with PersonaApi(metered) as api:
        for name in ("m-alpha", "m-beta"):
            if api.get(name).status_code == 404:
                api.put_ok(name, adapters[name])
            client.chat.completions.create(model=name, messages=USER, max_tokens=2)
        loaded = "loragate_persona_loaded"
        samples = scrape(metered)
        assert value(samples, loaded, persona="m-alpha", version="1") == 1
        assert value(samples, loaded, persona="m-beta", version="1") == 1
        api.put_ok("m-gamma", adapters["m-gamma"])  # two slots: m-alpha, least recent, leaves
        samples = scrape(metered)
        assert value(samples, loaded, persona="m-alpha", version="1") == 0
        assert value(samples, loaded, persona="m-gamma", version="1") == 1
        evictions = "loragate_persona_adapter_evictions_total"
        assert value(samples, evictions, persona="m-alpha", version="1") == 1
        assert value(samples, "loragate_lora_adapters_resident") == 2
        assert value(samples, "loragate_persona_adapter_load_seconds_count",
                     persona="m-gamma", version="1") == 1  # fmt: skip
        api.delete("m-alpha")
        remaining = {labels for _, labels in scrape(metered)}
        assert not any(("persona", "m-alpha") in labels for labels in remaining)


def test_the_json_log_has_an_access_entry_per_request(
    metered: Gateway, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.with_raw_response.create(
        model=BASE_MODEL, messages=USER, max_tokens=4
    )
    request_id = reply.headers["x-request-id"]
    wait_until(lambda: request_id in metered.log())
    entries = [json.loads(line) for line in metered.log().splitlines() if line.startswith("{")]
    (access,) = [e for e in entries if e["request_id"] == request_id and "route" in e]
    assert access["route"] == "/v1/chat/completions" and access["status"] == 200
    assert access["model"] == BASE_MODEL and access["outcome"] == "ok"
    assert access["completion_tokens"] == 4 and access["prompt_tokens"] > 0
    assert access["latency_s"] >= access["ttft_s"] > 0


DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "loragate.json"
METRIC_NAME = re.compile(r"\b(?:vllm:|loragate_)[a-zA-Z0-9_:]*")


def test_every_metric_the_dashboard_queries_exists(
    metered: Gateway, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    with PersonaApi(metered) as api:
        if api.get("m-alpha").status_code == 404:
            api.put_ok("m-alpha", adapters["m-alpha"])  # into a full engine: one is evicted
    client.chat.completions.create(model="m-alpha", messages=USER, max_tokens=4)
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    queried = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert len(queried) >= 15
    served = {name for name, _ in scrape(metered)}
    assert queried - served == set()
