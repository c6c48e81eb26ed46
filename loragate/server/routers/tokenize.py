"""vLLM's /tokenize and /detokenize: a text or a persona's rendered conversation, as tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from loragate.prompting import render_prompt_ids
from loragate.server.auth import require_api_key
from loragate.server.chat_service import conversation_of
from loragate.server.errors import BadRequestError
from loragate.server.leases import open_lease
from loragate.server.openapi import errors
from loragate.server.protocol import DetokenizeRequest, TokenizeRequest
from loragate.server.sampling import check_prompt_chars, check_token_ids
from loragate.server.state import app_state

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/tokenize", responses=errors(400, 401, 403, 404))
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = app_state(request)
    engine = state.engine
    target, lease = await open_lease(request, body.model, counted=False)
    async with lease:

        def work() -> list[int]:
            tokenizer = engine.tokenizer
            if body.messages is None:
                assert body.prompt is not None
                check_prompt_chars(engine, len(body.prompt), "prompt")
                special = True if body.add_special_tokens is None else body.add_special_tokens
                return list(tokenizer.encode(body.prompt, add_special_tokens=special))
            messages = conversation_of(body.messages, target)
            tools = [t.model_dump(exclude_none=True) for t in body.tools or []] or None
            try:
                ids = render_prompt_ids(
                    tokenizer, messages, add_generation_prompt=body.add_generation_prompt,
                    tools=tools, chat_template=target.chat_template,
                )  # fmt: skip
            except ValueError as exc:
                raise BadRequestError(
                    f"Tools cannot be offered: {exc}", param="tools", code="tools_not_supported"
                ) from exc
            return ids

        ids = await state.off_loop(work)
    result: dict[str, Any] = {
        "count": len(ids),
        "max_model_len": engine.max_model_len,
        "tokens": ids,
        "token_strs": None,
    }
    if body.return_token_strs:
        result["token_strs"] = [engine.tokenizer.decode([i]) for i in ids]
    return result


@router.post("/detokenize", responses=errors(400, 401, 403, 404))
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    state = app_state(request)
    engine = state.engine
    _, lease = await open_lease(request, body.model, counted=False)
    async with lease:
        check_token_ids(body.tokens, engine.vocab_size, "tokens")
        text = await state.off_loop(lambda: engine.tokenizer.decode(body.tokens))
    return {"prompt": text}
