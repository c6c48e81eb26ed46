from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from loragate.server.auth import require_api_key
from loragate.server.completion_service import completion, completion_stream, prepare_completions
from loragate.server.leases import respond
from loragate.server.observability import new_request_id
from loragate.server.protocol import CompletionRequest
from loragate.server.state import app_state

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    engine, defaults = app_state(request).engine, app_state(request).model_defaults
    request_id = f"cmpl-{new_request_id()}"
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await respond(
        request,
        body.model,
        stream=body.stream,
        prepare=lambda target: prepare_completions(engine, target, body, defaults),
        whole=lambda prepared, target: completion(
            engine, prepared, target.name, request_id, body.echo
        ),
        chunks=lambda prepared, target: completion_stream(
            engine, prepared, target.name, request_id, body.echo, include_usage
        ),
    )
