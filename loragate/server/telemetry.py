"""Around every HTTP request: its record opened on arrival (request_record.py) with its span
when tracing, and, once its last byte is sent, the record counted in the metrics, written to the
access log, and its span ended."""

from __future__ import annotations

import logging
import time

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loragate.server.request_record import (
    UNKNOWN_MODEL,
    RequestRecord,
    close_record,
    open_record,
)
from loragate.server.state import AppState
from loragate.server.tracing import RequestTracer
from loragate.tenants.keyring import ANONYMOUS
from loragate.tenants.usage import UsageRow

access_logger = logging.getLogger("loragate.access")
# Polled by load balancers and Prometheus: counted in the metrics, kept out of the access log.
QUIET_PATHS = frozenset({"/health", "/metrics"})


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp, tracer: RequestTracer | None = None):
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(method=scope["method"], path=scope["path"])
        token = open_record(record)
        tracer = self.tracer
        traced = None
        if tracer is not None:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            traced = tracer.start(record, headers)

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                record.body_bytes += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                if record.response_headers:
                    extra = [(k.encode(), v.encode()) for k, v in record.response_headers.items()]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            record.finish()
            record.route = _route_template(scope.get("route"))
            close_record(token)
            _report(scope, record)
            if tracer is not None and traced is not None:
                tracer.finish(*traced, record)


def _route_template(route: BaseRoute | None) -> str | None:
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _report(scope: Scope, record: RequestRecord) -> None:
    state = getattr(scope["app"].state, "loragate", None)
    if isinstance(state, AppState):  # absent before the lifespan ran (or after it failed)
        state.metrics.request_finished(record, known=lambda name: _still_served(state, name))
        if record.key_name is not None and record.model is not None:
            state.usage.add(usage_row(record))
    if record.path not in QUIET_PATHS:
        access_logger.info(_access_line(record), extra={"access": access_fields(record)})


def usage_row(record: RequestRecord) -> UsageRow:
    """A request that named a model, as its key's usage (errors too, with no tokens)."""
    assert record.key_name is not None and record.model is not None
    return UsageRow(
        key=record.key_name,
        persona=record.model,
        version=record.version,
        route=record.route or record.path,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        status=499 if record.disconnected else record.engine_error_status or record.status or 500,
        at=time.time(),
    )


def _still_served(state: AppState, name: str) -> bool:
    catalog = state.catalog
    return name in (UNKNOWN_MODEL, catalog.base_name) or catalog.find(name) is not None


def access_fields(record: RequestRecord) -> dict[str, object]:
    """The access log's fields (one JSON object per request with --log-format json)."""
    ttft = record.ttft_s
    return {
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "status": record.status or 500,
        "model": record.model,
        "version": record.version or None,
        "outcome": record.outcome() if record.model is not None else None,
        "stream": record.streamed,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_s": round(record.elapsed_s(), 6),
        "ttft_s": None if ttft is None else round(ttft, 6),
        "body_bytes": record.body_bytes,
        "key": record.key_name,  # the API key's name, never its secret
    }


def _access_line(record: RequestRecord) -> str:
    line = f'"{record.method} {record.path}" {record.status or 500} {record.elapsed_s():.3f}s'
    if record.model is not None:
        at = f"@{record.version}" if record.version else ""
        tokens = f"{record.prompt_tokens}+{record.completion_tokens}"
        line += f" model={record.model}{at} tokens={tokens}"
    if record.key_name is not None and record.key_name != ANONYMOUS:
        line += f" key={record.key_name}"
    return line + (" (client left)" if record.disconnected else "")
