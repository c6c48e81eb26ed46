"""OpenTelemetry traces, off unless --otlp-traces-endpoint is set (the `otel` extra).

One SERVER span per HTTP request, the child of the client's W3C `traceparent` when it sends
one, with the `gen_ai.*` attributes of OpenTelemetry's semantic conventions and vLLM's latency
attributes (the names vLLM's own `llm_request` span uses); under it, an `adapter load` span when
the request had to load its persona, and `prefill` and `decode` spans from the token timings.
The exporter is vLLM's choice too: OTLP over gRPC, or HTTP with
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loragate.server.observability import current_request_id
from loragate.server.request_record import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span


def otlp_exporter(endpoint: str) -> SpanExporter:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter(endpoint=endpoint)
    raise ValueError(f"unsupported OTEL_EXPORTER_OTLP_TRACES_PROTOCOL '{protocol}'")


class RequestTracer:
    """Spans of requests, sent by a batch processor to `exporter` (off the request path)."""

    def __init__(self, exporter: SpanExporter, *, batch: bool = True):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create({"service.name": "loragate"}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("loragate")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, record: RequestRecord, headers: Mapping[str, str]) -> tuple[Span, object]:
        """The request's span, current until `finish` (adapter loads nest under it)."""
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(carrier=headers)
        span = self._tracer.start_span(
            f"{record.method} {record.path}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=record.started_ns,
        )
        return span, context.attach(trace.set_span_in_context(span, parent))

    def finish(self, span: Span, token: object, record: RequestRecord) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        context.detach(token)  # type: ignore[arg-type]
        if record.route is not None:
            span.update_name(f"{record.method} {record.route}")
        span.set_attributes(_attributes(record))
        self._phases(span, record)
        if (record.status or 500) >= 500 or (record.engine_error_status or 0) >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=record.wall_ns(record.finished_at))

    def _phases(self, span: Span, record: RequestRecord) -> None:
        from opentelemetry import trace

        parent = trace.set_span_in_context(span)
        phases = (
            ("prefill", record.engine_started_at, record.first_token_at),
            ("decode", record.first_token_at, record.last_token_at),
        )
        for name, begin, end in phases:
            if begin is not None and end is not None and end > begin:
                child = self._tracer.start_span(
                    name, context=parent, start_time=record.wall_ns(begin)
                )
                child.end(end_time=record.wall_ns(end))

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes what the batch processor still holds

    # -- AdapterEvents: a load is a child of the request that needed it -----------------------

    def adapter_loaded(self, name: str, version: str, seconds: float) -> None:
        now = time.time_ns()
        span = self._tracer.start_span(
            "adapter load",
            start_time=now - int(seconds * 1e9),
            attributes={"loragate.persona": name, "loragate.persona.version": version},
        )
        span.end(end_time=now)

    def adapter_load_failed(self, name: str, version: str) -> None:
        pass

    def adapter_evicted(self, name: str, version: str) -> None:
        pass

    def persona_swapped(self, name: str, old_version: str, new_version: str) -> None:
        pass

    def persona_deleted(self, name: str) -> None:
        pass


def _attributes(record: RequestRecord) -> dict[str, str | int | float]:
    values: dict[str, str | int | float | None] = {
        "http.request.method": record.method,
        "http.route": record.route,
        "url.path": record.path,
        "http.response.status_code": record.status or 500,
        "http.request.body.size": record.body_bytes,
        "gen_ai.request.model": record.model,
        "gen_ai.response.model": record.model,
        "loragate.persona.version": record.version or None,
        "loragate.outcome": record.outcome() if record.model is not None else None,
        "loragate.stream": record.streamed,
        "gen_ai.request.id": current_request_id(),
    }
    if record.model is not None:
        tokens: dict[str, str | int | float | None] = {
            # Today's semantic conventions, and the older names vLLM's span still uses.
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "gen_ai.usage.prompt_tokens": record.prompt_tokens,
            "gen_ai.usage.completion_tokens": record.completion_tokens,
            "gen_ai.latency.time_to_first_token": record.ttft_s,
            "gen_ai.latency.time_in_queue": record.queue_time_s,
            "gen_ai.latency.e2e": record.elapsed_s(),
        }
        values.update(tokens)
    return {key: value for key, value in values.items() if value is not None}


def request_tracer(endpoint: str | None) -> RequestTracer | None:
    return None if endpoint is None else RequestTracer(otlp_exporter(endpoint))
