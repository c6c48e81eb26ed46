from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from loragate.server.auth import require_api_key
from loragate.server.completion_service import completion, completion_stream, prepare_completions
from loragate.server.leases import open_lease, released_after
from loragate.server.observability import new_request_id
from loragate.server.protocol import CompletionRequest
from loragate.server.state import app_state
from loragate.server.streaming import EventStreamResponse, sse_events, until_disconnect

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = app_state(request)
    target, lease = await open_lease(request, body.model)
    request_id = f"cmpl-{new_request_id()}"
    try:
        prepared = prepare_completions(state.engine, target, body, state.model_defaults)
    except BaseException:
        await lease.aclose()
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = completion_stream(
            state.engine, prepared, target.name, request_id, body.echo, include_usage
        )
        return EventStreamResponse(released_after(sse_events(chunks), lease))
    async with lease:
        result = await until_disconnect(
            request, completion(state.engine, prepared, target.name, request_id, body.echo)
        )
    return JSONResponse(result.model_dump(mode="json", exclude_unset=True))
