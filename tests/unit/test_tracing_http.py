"""Traces over the fake engine, into the OpenTelemetry SDK's in-memory exporter: a span per
request with the gen_ai attributes, the client's traceparent as its parent, and its children."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loragate.server.app import create_app
from loragate.server.tracing import RequestTracer
from tests.unit.personas_support import (
    CountingEngine,
    make_settings,
    persona_state_factory,
    write_bundle,
    write_model_dir,
)

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def client(tmp_path: Path, spans: InMemorySpanExporter) -> Iterator[TestClient]:
    root = tmp_path / "adapters"
    root.mkdir()
    settings = make_settings(root, max_cpu_loras=1)
    factory = persona_state_factory(
        CountingEngine(load_delay=0.01), write_model_dir(tmp_path / "m")
    )
    app = create_app(settings, factory, RequestTracer(spans, batch=False))
    with TestClient(app) as test_client:
        for name in ("alpha", "beta"):  # one slot: beta's load evicts alpha
            bundle = write_bundle(root / name, version="2")
            assert test_client.put(f"/v1/personas/{name}", json={"path": str(bundle)}).is_success
        yield test_client


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def test_a_request_span_carries_gen_ai_attributes_under_the_clients_traceparent(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    sdk.chat.completions.create(
        model="alpha", messages=USER, extra_headers={"traceparent": traceparent}
    )
    (request,) = named(spans, "POST /v1/chat/completions")
    assert request.context is not None and request.parent is not None
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(request.parent.span_id, "016x") == PARENT_ID
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.request.model"] == "alpha"
    assert attributes["loragate.persona.version"] == "2"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert int(str(attributes["gen_ai.usage.input_tokens"])) > 0
    assert (
        0
        < float(str(attributes["gen_ai.latency.time_to_first_token"]))
        <= float(str(attributes["gen_ai.latency.e2e"]))
    )
    assert attributes["gen_ai.latency.time_in_queue"] == 0.0  # the fake engine has no queue
    assert len(str(attributes["gen_ai.request.id"])) == 32
    children = {"adapter load", "prefill", "decode"}  # alpha was evicted: this request loads it
    for name in children:
        (child,) = named(spans, name)
        assert child.parent is not None and child.parent.span_id == request.context.span_id
        assert child.start_time is not None and request.start_time is not None
        assert child.end_time is not None and request.end_time is not None
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time


def test_without_a_traceparent_a_request_starts_its_own_trace(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    assert client.get("/v1/models").status_code == 200
    (request,) = named(spans, "GET /v1/models")
    assert request.parent is None
    assert "gen_ai.request.model" not in (request.attributes or {})
