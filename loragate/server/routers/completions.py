from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from loragate.server.auth import require_api_key
from loragate.server.completion_service import completion, completion_stream, prepare_completions
from loragate.server.generation import UsageMode
from loragate.server.leases import respond
from loragate.server.observability import new_request_id
from loragate.server.openapi import GENERATION
from loragate.server.protocol import CompletionRequest
from loragate.server.state import app_state

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/completions", response_model=None, responses=GENERATION)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = app_state(request)
    engine, defaults = state.engine, state.model_defaults
    max_sequences = state.settings.max_sequences_per_request
    request_id = f"cmpl-{new_request_id()}"
    usage_mode = UsageMode(body.include_usage(), body.continuous_usage())
    return await respond(
        request,
        body.model,
        stream=body.stream,
        reserve_tokens=(body.max_tokens or 0) * (body.n or 1),
        prepare=lambda target: prepare_completions(engine, target, body, defaults, max_sequences),
        whole=lambda prepared, target: completion(
            engine, prepared, target.name, request_id, body.echo
        ),
        chunks=lambda prepared, target: completion_stream(
            engine, prepared, target.name, request_id, body.echo, usage_mode
        ),
    )
