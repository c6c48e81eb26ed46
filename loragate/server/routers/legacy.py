"""The Llama-3.1 tutorial's `POST /`: {"prompt"} in, {"response", "status", "time"} out."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from loragate.adapters.targets import ModelTarget
from loragate.prompting import Message, render_prompt_ids
from loragate.server.auth import require_api_key
from loragate.server.errors import BadRequestError
from loragate.server.generation import Prepared, generate_all, prepare
from loragate.server.leases import open_lease
from loragate.server.observability import new_request_id
from loragate.server.openapi import LEGACY_BODY, errors
from loragate.server.protocol import LegacyPromptRequest, SamplingFields
from loragate.server.sampling import check_messages_fit, completion_budget, sampling_options
from loragate.server.state import AppState, app_state
from loragate.server.streaming import until_disconnect
from loragate.validation_errors import first_problem

router = APIRouter(dependencies=[Depends(require_api_key)])


async def _parse(request: Request) -> LegacyPromptRequest:
    # Parsed by hand: the tutorial's own client sends "Content-Type: application/jons".
    try:
        data = json.loads(await request.body() or b"null")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"The body is not valid UTF-8: {exc.reason} at byte {exc.start}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"Malformed JSON body: {exc}") from exc
    except RecursionError as exc:  # json recurses per level: "[" * 10_000 runs out of stack
        raise BadRequestError("Malformed JSON body: nested too deeply") from exc
    if not isinstance(data, dict):
        raise BadRequestError('The body must be a JSON object such as {"prompt": "你好"}')
    try:
        return LegacyPromptRequest.model_validate(data)
    except ValidationError as exc:
        problem = first_problem(exc.errors())
        raise BadRequestError(problem.sentence(), param=problem.dotted()) from exc


def _history(body: LegacyPromptRequest) -> list[Message]:
    turns: list[Message] = []
    for turn in body.history:
        if isinstance(turn, tuple):  # the [[user, assistant], ...] pairs of chat UIs
            turns += [
                {"role": "user", "content": turn[0]},
                {"role": "assistant", "content": turn[1]},
            ]
        else:
            turns.append({"role": turn.role, "content": turn.content})
    return turns


def _prepare(state: AppState, target: ModelTarget, body: LegacyPromptRequest) -> Prepared:
    system = body.system or target.system_prompt or state.settings.legacy_system_prompt
    messages: list[Message] = [{"role": "system", "content": system}, *_history(body)]
    messages.append({"role": "user", "content": body.prompt})
    engine = state.engine
    check_messages_fit(engine, messages, "prompt")
    ids = render_prompt_ids(engine.tokenizer, messages, chat_template=target.chat_template)
    defaults = target.defaults.over(state.model_defaults)
    fallback = defaults.max_tokens or state.settings.legacy_max_new_tokens
    budget = completion_budget(body.max_new_tokens, fallback, len(ids), engine.max_model_len)
    # The same builder as the OpenAI routes: every persona default applies here too.
    fields = SamplingFields(temperature=body.temperature, top_p=body.top_p)
    options = sampling_options(fields, defaults, max_tokens=budget)
    return prepare(engine, ids, options, target.adapter)


@router.post("/", responses=errors(400, 401, 403, 404, 429, 503), openapi_extra=LEGACY_BODY)
async def legacy_prompt(request: Request) -> dict[str, Any]:
    body = await _parse(request)
    state = app_state(request)
    reserve = body.max_new_tokens or state.settings.legacy_max_new_tokens
    target, lease = await open_lease(request, body.model or body.persona, reserve_tokens=reserve)
    async with lease:
        prepared = await state.off_loop(lambda: _prepare(state, target, body))
        result = await until_disconnect(
            request, generate_all(state.engine, prepared, f"legacy-{new_request_id()}")
        )
    return {
        "response": result.choices[0].text,
        "status": 200,
        "time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
    }
