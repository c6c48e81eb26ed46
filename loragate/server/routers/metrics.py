"""GET /metrics: Prometheus' text format (vLLM's engine metrics and loragate's own)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from loragate.server.auth import require_api_key
from loragate.server.exposition import render
from loragate.server.openapi import Responses, errors
from loragate.server.state import app_state

router = APIRouter()
_TEXT: Responses = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus' text format."}
}


@router.get("/metrics", response_class=Response, responses={**_TEXT, **errors(401)})
async def metrics(request: Request) -> Response:
    state = app_state(request)
    if not state.settings.metrics_public:
        await require_api_key(request)
    return Response(render(state.metrics), media_type=CONTENT_TYPE_LATEST)
