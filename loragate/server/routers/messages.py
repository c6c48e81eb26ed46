"""Anthropic's Messages API, POST /v1/messages: its errors in Anthropic's envelope."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from loragate.server.anthropic_protocol import MessagesRequest
from loragate.server.auth import require_api_key
from loragate.server.chat_service import prepare_chat
from loragate.server.errors import anthropic_error_response
from loragate.server.leases import respond
from loragate.server.messages_service import (
    anthropic_sse,
    chat_request,
    message,
    message_events,
    new_message_id,
)
from loragate.server.openapi import MESSAGES
from loragate.server.state import app_state


class AnthropicErrorsRoute(APIRoute):
    """Whatever fails in this route (the key, the body, the model, the engine) answers in
    Anthropic's error envelope; every other route keeps OpenAI's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def anthropic_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return anthropic_error_response(exc)

        return anthropic_errors


router = APIRouter(dependencies=[Depends(require_api_key)], route_class=AnthropicErrorsRoute)


@router.post("/v1/messages", response_model=None, responses=MESSAGES)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    state = app_state(request)
    engine, defaults, parser = state.engine, state.model_defaults, state.tool_parser
    message_id = new_message_id()
    return await respond(
        request,
        body.model,
        stream=body.stream,
        reserve_tokens=body.max_tokens,
        # Off the event loop, as chat prepares: the translation checks the tools' JSON schemas.
        prepare=lambda target: prepare_chat(engine, target, chat_request(body), defaults, parser),
        whole=lambda prepared, target: message(engine, prepared, target.name, message_id),
        chunks=lambda prepared, target: message_events(engine, prepared, target.name, message_id),
        encode=anthropic_sse,
    )
