from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from loragate.server.auth import require_api_key
from loragate.server.chat_service import chat_completion, chat_stream, prepare_chat
from loragate.server.leases import open_lease, released_after
from loragate.server.observability import new_request_id
from loragate.server.protocol import ChatCompletionRequest
from loragate.server.state import app_state
from loragate.server.streaming import EventStreamResponse, sse_events, until_disconnect

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = app_state(request)
    target, lease = await open_lease(request, body.model)
    request_id = f"chatcmpl-{new_request_id()}"
    try:
        prepared = prepare_chat(state.engine, target, body, state.model_defaults)
    except BaseException:
        await lease.aclose()
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = chat_stream(state.engine, prepared, target.name, request_id, include_usage)
        return EventStreamResponse(released_after(sse_events(chunks), lease))
    async with lease:
        completion = await until_disconnect(
            request, chat_completion(state.engine, prepared, target.name, request_id)
        )
    return JSONResponse(completion.model_dump(mode="json", exclude_unset=True))
