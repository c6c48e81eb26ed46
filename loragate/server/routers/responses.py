"""The Responses API: POST /v1/responses, and GET / DELETE of a stored response."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from loragate.adapters.targets import ModelTarget
from loragate.server.auth import presented_key, require_api_key
from loragate.server.chat_service import (
    PreparedChat,
    chat_completion,
    chat_stream,
    prepare_chat,
)
from loragate.server.errors import NotFoundError, as_gateway_error
from loragate.server.generation import UsageMode
from loragate.server.leases import respond
from loragate.server.openapi import GENERATION, errors
from loragate.server.responses_protocol import ResponsesRequest
from loragate.server.responses_service import (
    EventStream,
    Output,
    as_response,
    chat_request,
    input_messages,
    new_id,
    response_body,
    sse_of,
)
from loragate.server.responses_store import ResponseStore, owner_of
from loragate.server.state import app_state

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)])


def _not_found(response_id: str) -> NotFoundError:
    error = NotFoundError(f"No response with id '{response_id[:200]}'.", param="response_id")
    error.type = "invalid_request_error"
    return error


@router.post("/v1/responses", response_model=None, responses=GENERATION)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    state = app_state(request)
    store, owner = state.responses, owner_of(presented_key(request))
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = await asyncio.to_thread(store.get, owner, body.previous_response_id)
        if previous is None:
            raise _not_found(body.previous_response_id)
        history = previous.conversation
    conversation = [*history, *input_messages(body)]
    chat = chat_request(body, conversation)
    response_id = new_id("resp")
    engine = state.engine

    async def whole(prepared: PreparedChat, target: ModelTarget) -> BaseModel:
        completion = await chat_completion(engine, prepared, target.name, response_id)
        output = Output.of(completion)
        created = float(completion.created)
        result = response_body(body, response_id, target.name, created, output)
        await _keep(store, owner, body, result, [*conversation, *output.as_messages()])
        return as_response(result)

    async def events(prepared: PreparedChat, target: ModelTarget) -> AsyncIterator[BaseModel]:
        stream = EventStream(body, response_id, target.name)
        for event in stream.opening():
            yield event
        chunks = chat_stream(engine, prepared, target.name, response_id, UsageMode(include=True))
        try:
            async for chunk in chunks:
                for event in stream.on_chunk(chunk):
                    yield event
        except Exception as exc:  # after the first event: an error event, as OpenAI sends
            if as_gateway_error(exc) is None:
                logger.exception("error during a response stream")
            yield stream.failure(exc)
            return
        for event in stream.closing():
            yield event
        conversation_after = [*conversation, *stream.output.as_messages()]
        await _keep(store, owner, body, stream.final_body(), conversation_after)

    return await respond(
        request,
        body.model,
        stream=body.stream,
        reserve_tokens=chat.token_budget() or 0,
        prepare=lambda target: prepare_chat(
            engine, target, chat, state.model_defaults, state.tool_parser
        ),
        whole=whole,
        chunks=events,
        encode=sse_of,
    )


async def _keep(
    store: ResponseStore,
    owner: str,
    request: ResponsesRequest,
    result: dict[str, Any],
    conversation: list[dict[str, Any]],
) -> None:
    if request.store:
        await asyncio.to_thread(store.put, owner, result, conversation)


@router.get("/v1/responses/{response_id}", response_model=None, responses=errors(401, 404))
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    store = app_state(request).responses
    found = await asyncio.to_thread(store.get, owner_of(presented_key(request)), response_id)
    if found is None:
        raise _not_found(response_id)
    return found.body


@router.delete("/v1/responses/{response_id}", responses=errors(401, 404))
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    store = app_state(request).responses
    owner = owner_of(presented_key(request))
    if not await asyncio.to_thread(store.delete, owner, response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}
