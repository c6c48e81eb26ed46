"""Request fields at their edges, in the fast layer: bounded, refused by name, never a 500.

Each of these was a defect found by third-party suites (issue 10): a seed past int64 was a
500, `tools` and vLLM's extras were silently dropped, `logprobs=0` named no token, a 50 MB
prompt was tokenized before its length was checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from loragate.engine.fake import Die, FakeEngine
from loragate.server.app import create_app
from tests.unit.conftest import BASE, fake_state_factory, server_settings

CHAT: dict[str, Any] = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
TEXT: dict[str, Any] = {"model": BASE, "prompt": "hi"}
JSON = {"content-type": "application/json"}


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"n": 1000}, "n"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"max_completion_tokens": 10**30}, "max_completion_tokens"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"x": 1}}, "logit_bias.x.[key]"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"top_k": 2**31}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"repetition_penalty": 1000}, "repetition_penalty"),
        ({"repetition_penalty": 0.001}, "repetition_penalty"),
        ({"min_tokens": 2**31}, "min_tokens"),
        ({"stop": [str(i) for i in range(65)]}, "stop"),
    ],
)
def test_out_of_range_fields_are_400_naming_the_param(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    error = error_of(client.post("/v1/chat/completions", json={**CHAT, **fields}))
    assert error["param"] is not None and error["param"].startswith(param.split(".[")[0])


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client: TestClient, literal: str) -> None:
    body = json.dumps(CHAT)[:-1] + f', "repetition_penalty": {literal}}}'
    response = client.post("/v1/chat/completions", content=body, headers=JSON)
    assert error_of(response)["param"] == "repetition_penalty"


def test_token_ids_are_bounded_by_the_vocabulary(client: TestClient, fake: FakeEngine) -> None:
    error = error_of(client.post("/v1/completions", json={**TEXT, "prompt": [fake.vocab_size]}))
    assert error["param"] == "prompt" and "out of vocabulary" in error["message"]
    assert error_of(client.post("/v1/completions", json={**TEXT, "prompt": [-1]}))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"use_beam_search": True}, "use_beam_search"),
        ({"prompt_logprobs": 1}, "prompt_logprobs"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"skip_special_tokens": False}, "skip_special_tokens"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"response_format": {"type": "structural_tag"}}, "response_format.type"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ],
)
def test_fields_not_served_are_400_naming_them(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    error = error_of(client.post("/v1/chat/completions", json={**CHAT, **fields}))
    assert (error["param"] or "").startswith(param), error
    assert param.split(".")[0] in error["message"] or "Invalid value" in error["message"]


def test_tools_for_a_template_without_them_are_a_bad_request(sdk: openai.OpenAI) -> None:
    # The fake engine's tokenizer has no chat template that could render tools.
    with pytest.raises(openai.BadRequestError, match="Tools cannot be offered to this model"):
        sdk.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )


def test_fields_openai_ignores_are_ignored_here_too(client: TestClient) -> None:
    fields = {"metadata": {"k": "v"}, "store": False, "service_tier": "auto", "tools": []}
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, **fields, "parallel_tool_calls": False, "tool_choice": "none"},
    )
    assert response.status_code == 200, response.text


def test_structured_outputs_and_logit_bias_reach_the_engine(
    client: TestClient, fake: FakeEngine
) -> None:
    for constraint, field, value in (
        ({"regex": "[ab]+"}, "regex", "[ab]+"),
        ({"choice": ["yes", "no"]}, "choice", ("yes", "no")),
        ({"grammar": 'root ::= "a"'}, "grammar", 'root ::= "a"'),
        ({"json": {"type": "object"}}, "json_schema", {"type": "object"}),
    ):
        body = {**CHAT, "structured_outputs": constraint, "logit_bias": {"7": -100}}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        options = fake.requests[-1][1]
        assert getattr(options, field) == value
        assert options.logit_bias == {7: -100.0}


def test_lone_surrogates_are_400_not_500(client: TestClient) -> None:
    surrogate = '"\\ud800"'
    for path, body in (
        ("/v1/chat/completions", f'{{"model": "{BASE}", "messages": [{{"role": "user", '
         f'"content": {surrogate}}}]}}'),
        ("/v1/completions", f'{{"model": "{BASE}", "prompt": {surrogate}}}'),
        ("/", f'{{"prompt": {surrogate}}}'),
    ):  # fmt: skip
        response = client.post(path, content=body, headers=JSON)
        assert "surrogate" in error_of(response)["message"], path
        assert "x-request-id" in response.headers


def test_completion_logprobs_zero_still_name_the_chosen_token(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    fake.enqueue(["Hel", "lo"])
    reply = sdk.completions.create(model=BASE, prompt="hi", logprobs=0)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs == [{"Hel": -0.5}, {"lo": -0.5}]


def test_prompts_times_n_is_bounded(client: TestClient) -> None:
    body = {**TEXT, "prompt": ["a"] * 300, "n": 16}
    error = error_of(client.post("/v1/completions", json=body))
    assert "4800 sequences" in error["message"] and error["param"] == "n"


def test_a_prompt_too_long_for_any_tokenization_is_refused_before_tokenizing(
    client: TestClient, fake: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: object, **__: object) -> list[int]:
        raise AssertionError("tokenized")

    monkeypatch.setattr(type(fake.tokenizer), "encode", never)
    long_text = "x" * (fake.max_model_len * fake.max_token_chars + 1)
    for path, body in (
        ("/v1/completions", {**TEXT, "prompt": long_text}),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": long_text}]}),
        ("/", {"prompt": long_text}),
    ):
        error = error_of(client.post(path, json=body))
        assert error["code"] == "context_length_exceeded", path


@pytest.fixture
def small_body_client(fake: FakeEngine) -> Iterator[TestClient]:
    settings = server_settings(max_request_body_bytes=4096)
    with TestClient(create_app(settings, fake_state_factory(fake))) as test_client:
        yield test_client


def test_a_body_over_the_limit_is_413_in_the_envelope(small_body_client: TestClient) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    for path in ("/v1/chat/completions", "/v1/completions", "/"):
        response = small_body_client.post(path, json=big)
        assert error_of(response, 413)["code"] == "request_too_large"
        assert "x-request-id" in response.headers

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        yield b"x" * 5000
        yield b'"}'

    assert small_body_client.post("/", content=chunked()).status_code == 413
    assert small_body_client.post("/v1/chat/completions", json=CHAT).status_code == 200


def _events(response: Any) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_the_role_chunk_waits_for_the_first_output(client: TestClient, fake: FakeEngine) -> None:
    fake.enqueue([Die()])  # the engine fails before any output: no role chunk was promised
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        events = _events(response)
    assert len(events) == 2 and "error" in json.loads(events[0]) and events[1] == "[DONE]"
    fake.dead = False
    fake.enqueue(["Hel", "lo"])
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        first = json.loads(_events(response)[0])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_continuous_usage_stats_put_usage_on_every_chunk(
    client: TestClient, fake: FakeEngine
) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", TEXT)):
        fake.enqueue(["a", "b", "c"])
        body = {**base, "stream": True, "stream_options": options}
        with client.stream("POST", path, json=body) as response:
            chunks = [json.loads(e) for e in _events(response)[:-1]]
        counts = [c["usage"]["completion_tokens"] for c in chunks]
        assert counts == sorted(counts) and counts[-1] == 3, (path, counts)
        assert all(c["usage"]["prompt_tokens"] > 0 for c in chunks)
