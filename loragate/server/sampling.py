"""Request fields, target defaults and the model's defaults into one SamplingOptions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loragate.adapters.targets import SamplingDefaults
from loragate.engine.protocol import Engine
from loragate.engine.types import SamplingOptions
from loragate.prompting import Message
from loragate.server.errors import BadRequestError, ContextLengthError
from loragate.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields


def _pick(value: Any, default: Any, fallback: Any) -> Any:
    if value is not None:
        return value
    return default if default is not None else fallback


def completion_budget(
    requested: int | None, default: int | None, prompt_len: int, max_model_len: int
) -> int:
    """Tokens the completion may use; a prompt that leaves no room is a 400 naming both lengths."""
    room = max_model_len - prompt_len
    if room <= 0:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{prompt_len} tokens. Shorten the prompt.",
            param="messages",
        )
    wanted = requested if requested is not None else default
    if wanted is None:
        return room
    if requested is not None and requested > room:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} "
            "for the completion). Reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    return min(wanted, room)


def sampling_options(
    request: SamplingFields,
    defaults: SamplingDefaults,
    *,
    max_tokens: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingOptions:
    structured = _structured(request)
    return SamplingOptions(
        max_tokens=max_tokens,
        n=request.n,
        temperature=_pick(request.temperature, defaults.temperature, 1.0),
        top_p=_pick(request.top_p, defaults.top_p, 1.0),
        top_k=_top_k(_pick(request.top_k, defaults.top_k, 0)),
        min_p=_pick(request.min_p, defaults.min_p, 0.0),
        seed=request.seed,
        stop=request.stop_list(),
        presence_penalty=_pick(request.presence_penalty, defaults.presence_penalty, 0.0),
        frequency_penalty=_pick(request.frequency_penalty, defaults.frequency_penalty, 0.0),
        repetition_penalty=_pick(request.repetition_penalty, defaults.repetition_penalty, 1.0),
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        logit_bias=_logit_bias(request),
        **structured,
    )


def _top_k(value: int) -> int:
    return 0 if value < 0 else value  # OpenAI-style -1 and vLLM's 0 both mean "off"


def _logit_bias(request: SamplingFields) -> dict[int, float] | None:
    if not request.logit_bias:
        return None
    return {int(token): bias for token, bias in request.logit_bias.items()}


def _structured(request: SamplingFields) -> dict[str, Any]:
    """The SamplingOptions constraint fields: from vLLM's `structured_outputs`, else from
    OpenAI's `response_format` (chat)."""
    if request.structured_outputs is not None:
        given = request.structured_outputs
        fmt = request.response_format if isinstance(request, ChatCompletionRequest) else None
        if fmt is not None and fmt.type != "text":
            raise BadRequestError(
                "Give either response_format or structured_outputs, not both",
                param="structured_outputs",
            )
        return {
            "json_schema": given.json_,
            "json_object": bool(given.json_object),
            "regex": given.regex,
            "choice": tuple(given.choice) if given.choice else None,
            "grammar": given.grammar,
        }
    if not isinstance(request, ChatCompletionRequest) or request.response_format is None:
        return {}
    fmt = request.response_format
    if fmt.type == "json_schema":
        assert fmt.json_schema is not None
        if not fmt.json_schema.schema_:
            raise BadRequestError(
                "response_format.json_schema.schema must be a non-empty JSON schema",
                param="response_format.json_schema.schema",
            )
        return {"json_schema": fmt.json_schema.schema_}
    return {"json_object": fmt.type == "json_object"}


def check_prompt_chars(engine: Engine, chars: int, param: str) -> None:
    """A 400 for a text that cannot fit the context whatever its tokens, before tokenizing it
    (tokenizing megabytes takes seconds and gigabytes)."""
    max_model_len = engine.max_model_len
    limit = max_model_len * engine.max_token_chars
    if chars > limit:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens; the prompt has "
            f"{chars} characters, more than {max_model_len} tokens can hold ({limit}). "
            "Shorten the prompt.",
            param=param,
        )


def check_messages_fit(engine: Engine, messages: Sequence[Message], param: str) -> None:
    check_prompt_chars(engine, sum(len(m["content"]) for m in messages), param)


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    bad = next((t for t in ids if t >= vocab_size), None)
    if bad is not None:
        raise BadRequestError(
            f"Token id {bad} is out of vocabulary (the vocabulary has {vocab_size} tokens)",
            param=param,
            code="token_out_of_vocabulary",
        )


def completion_logprobs(request: CompletionRequest) -> tuple[int | None, int | None]:
    """(sampled-token logprobs, prompt logprobs) for a text completion."""
    if request.logprobs is None:
        return None, None
    return request.logprobs, (request.logprobs if request.echo else None)
