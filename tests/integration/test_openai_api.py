"""Every field of the chat and text completion APIs, on the real engine, with the official SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from loragate.default_model import ensure_default_model
from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway

MODEL_CONTEXT = 8192  # SmolLM2-135M-Instruct's own
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]


VLLM_EXTRAS = ("ignore_eos", "top_k", "min_p", "repetition_penalty", "min_tokens")


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    """chat.completions.create on the base model; vLLM's extra fields go in extra_body."""
    kwargs.setdefault("messages", QUESTION)
    extra = kwargs.pop("extra_body", {}) | {k: kwargs.pop(k) for k in VLLM_EXTRAS if k in kwargs}
    return client.chat.completions.create(model=BASE_MODEL, extra_body=extra or None, **kwargs)


def test_json_schema_reply_parses_and_matches(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        # Strings, not an integer: greedy digits can run on past max_tokens (seen once, after
        # other tests had filled the prefix cache), and the test is about the schema.
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
        },
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = chat(
        client,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_json_object_reply_is_a_json_object(client: openai.OpenAI) -> None:
    reply = chat(
        client,
        messages=[
            {"role": "user", "content": 'Reply with the JSON object {"a": 1} and nothing else.'}
        ],
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_n_two_gives_two_choices_and_exact_usage(client: openai.OpenAI) -> None:
    reply = chat(client, n=2, max_tokens=12, ignore_eos=True, temperature=1.0, seed=1)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 24


def test_prompt_tokens_are_the_chat_template_tokens(client: openai.OpenAI) -> None:
    assert chat(client, max_tokens=1).usage.prompt_tokens == _template_len(QUESTION)


def test_max_completion_tokens_and_length_finish(client: openai.OpenAI) -> None:
    reply = chat(client, max_completion_tokens=5, ignore_eos=True)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_stop_string_stops_before_it(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = chat(client, messages=messages, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    assert "5" in text
    stopped = chat(client, messages=messages, temperature=0, max_tokens=40, stop=["5"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index("5")]


def test_stop_list_takes_the_first_hit(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    reply = chat(client, messages=messages, temperature=0, max_tokens=40, stop=["7", "4"])
    assert "4" not in reply.choices[0].message.content


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    a = chat(client, temperature=1.0, seed=1234, max_tokens=16)
    b = chat(client, temperature=1.0, seed=1234, max_tokens=16)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_sampling_fields_and_vllm_extras_accepted(client: openai.OpenAI) -> None:
    reply = chat(
        client,
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        user="someone",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 4},
    )
    assert reply.usage.completion_tokens >= 4


def test_text_parts_and_assistant_turns(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                     {"type": "text", "text": "of France?"}]},
    ]  # fmt: skip
    first = chat(client, messages=messages, temperature=0, max_tokens=10)
    assert "Paris" in first.choices[0].message.content
    follow = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert chat(client, messages=follow, max_tokens=1).usage.prompt_tokens == _template_len(follow)


def _template_len(messages: Sequence[Mapping[str, Any]]) -> int:
    from transformers import AutoTokenizer

    from loragate.default_model import ensure_default_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model())
    conversation = [dict(m) for m in messages]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_chat_logprobs_have_openai_shape(client: openai.OpenAI) -> None:
    reply = chat(client, max_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
    greedy = chat(client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    for entry in greedy.choices[0].logprobs.content:
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the top token


def test_stream_last_chunk_carries_usage(client: openai.OpenAI) -> None:
    stream = chat(client, max_tokens=10, ignore_eos=True, stream=True,
                  stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"


def test_stream_logprobs(client: openai.OpenAI) -> None:
    stream = chat(client, max_tokens=7, ignore_eos=True, stream=True, logprobs=True, top_logprobs=1)
    count = sum(
        len(c.choices[0].logprobs.content) for c in stream if c.choices and c.choices[0].logprobs
    )
    assert count == 7


def test_completions_string_list_echo_and_logprobs(client: openai.OpenAI) -> None:
    single = client.completions.create(
        model=BASE_MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert "Paris" in single.choices[0].text
    several = client.completions.create(
        model=BASE_MODEL, prompt=["One, two,", "A, B,"], max_tokens=4, temperature=0.8, n=2
    )
    assert sorted(c.index for c in several.choices) == [0, 1, 2, 3]
    echoed = client.completions.create(
        model=BASE_MODEL, prompt="Hello there", max_tokens=3, echo=True, logprobs=2, temperature=0
    )
    choice, usage = echoed.choices[0], echoed.usage
    assert choice.text.startswith("Hello there")
    logprobs = choice.logprobs
    assert logprobs and logprobs.token_logprobs and logprobs.tokens and usage
    assert logprobs.token_logprobs[0] is None  # the first prompt token has no context
    assert len(logprobs.tokens) == usage.prompt_tokens + 3
    assert "".join(logprobs.tokens) == choice.text


def test_completions_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=BASE_MODEL, prompt="Once upon a time", max_tokens=8, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_models_lists_base_with_the_models_own_context(client: openai.OpenAI) -> None:
    # No --max-model-len: the model's own context, from its config.json.
    config = json.loads((ensure_default_model() / "config.json").read_text())
    assert config["max_position_embeddings"] == MODEL_CONTEXT
    cards = {m.id: m for m in client.models.list()}
    assert cards[BASE_MODEL].model_dump()["max_model_len"] == MODEL_CONTEXT  # vLLM's extra


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"top_logprobs": 2}, None),
        ({"n": 2, "temperature": 0}, None),  # refused by vLLM itself: greedy with n > 1
    ],
)
def test_invalid_fields_are_400_naming_the_param(
    client: openai.OpenAI, kwargs: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, **kwargs)
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    if param:
        assert body["param"] == param


def test_unknown_model_is_404_listing_valid(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert BASE_MODEL in err.value.message


def test_prompt_over_context_is_400_with_both_lengths(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "word " * (MODEL_CONTEXT + 100)}]
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, messages=long)
    assert "8192" in err.value.message and err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, max_tokens=9000)
    assert "8192" in err.value.message and "9000" in err.value.message


async def test_sixteen_concurrent_streams_complete_with_every_token(gateway: Gateway) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="x", max_retries=0, timeout=300
    ) as async_client:
        results = await _sixteen_streams(async_client)
    assert results == [(24, 24, "length")] * 16


async def _sixteen_streams(async_client: openai.AsyncOpenAI) -> list[tuple[int, int, str]]:
    async def one(i: int) -> tuple[int, int, str]:
        stream = await async_client.chat.completions.create(
            model=BASE_MODEL,
            messages=[{"role": "user", "content": f"Tell me a fact about the number {i}."}],
            max_tokens=24,
            extra_body={"ignore_eos": True},
            stream=True,
            logprobs=True,
            stream_options={"include_usage": True},
        )
        tokens, usage, finish = 0, 0, ""
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.logprobs:
                    assert choice.logprobs.content is not None
                    tokens += len(choice.logprobs.content)
                finish = choice.finish_reason or finish
        return tokens, usage, finish

    return list(await asyncio.gather(*(one(i) for i in range(16))))
