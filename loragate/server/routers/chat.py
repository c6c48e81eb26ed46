from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from loragate.server.auth import require_api_key
from loragate.server.chat_service import chat_completion, chat_stream, prepare_chat
from loragate.server.generation import UsageMode
from loragate.server.leases import respond
from loragate.server.observability import new_request_id
from loragate.server.openapi import GENERATION
from loragate.server.protocol import ChatCompletionRequest
from loragate.server.state import app_state

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/chat/completions", response_model=None, responses=GENERATION)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = app_state(request)
    engine, defaults, parser = state.engine, state.model_defaults, state.tool_parser
    request_id = f"chatcmpl-{new_request_id()}"
    usage_mode = UsageMode(body.include_usage(), body.continuous_usage())
    return await respond(
        request,
        body.model,
        stream=body.stream,
        reserve_tokens=body.token_budget() or 0,
        prepare=lambda target: prepare_chat(engine, target, body, defaults, parser),
        whole=lambda prepared, target: chat_completion(engine, prepared, target.name, request_id),
        chunks=lambda prepared, target: chat_stream(
            engine, prepared, target.name, request_id, usage_mode
        ),
    )
