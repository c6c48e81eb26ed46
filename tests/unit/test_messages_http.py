"""Anthropic's Messages API, POST /v1/messages, over the fake engine, through the official
anthropic SDK: replies and their event stream, sampling fields, stop reasons, and errors in
Anthropic's envelope (the OpenAI routes keep OpenAI's)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncGenerator, Iterator
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest
from anthropic.types import MessageParam, TextBlock
from fastapi.testclient import TestClient

from loragate.engine.fake import Die, FakeEngine, Hold
from loragate.engine.types import AdapterRef, GenerationUpdate, SamplingOptions
from loragate.server.app import create_app
from tests.unit.conftest import BASE, LiveFake, fake_state_factory, server_settings, wait_for

USER: list[MessageParam] = [{"role": "user", "content": "hi"}]


def sdk_for(client: TestClient, api_key: str = "x") -> anthropic.Anthropic:
    # The SDK appends /v1/messages to the origin.
    return anthropic.Anthropic(
        base_url="http://testserver", api_key=api_key, http_client=client, max_retries=0
    )


@pytest.fixture
def claude(client: TestClient) -> anthropic.Anthropic:
    return sdk_for(client)


def post(client: TestClient, **fields: Any) -> Any:
    body = {"model": BASE, "max_tokens": 16, "messages": USER, **fields}
    return client.post("/v1/messages", json=body)


def test_a_text_reply_is_anthropics_message(claude: anthropic.Anthropic, fake: FakeEngine) -> None:
    reply = claude.messages.create(model=BASE, max_tokens=16, messages=USER)
    assert (reply.type, reply.role, reply.model) == ("message", "assistant", BASE)
    assert reply.id.startswith("msg_")
    assert [(b.type, b.text) for b in reply.content if isinstance(b, TextBlock)] == [
        ("text", "Hello world")
    ]
    assert (reply.stop_reason, reply.stop_sequence) == ("end_turn", None)
    ((prompt, options, adapter),) = fake.requests
    assert fake.tokenizer.decode(prompt) == "<user>hi\n<assistant>"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (len(prompt), 2)
    assert options.max_tokens == 16 and adapter is None


def test_the_wire_body_has_anthropics_fields(client: TestClient) -> None:
    response = post(client)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "type", "role", "model", "content", "stop_reason",
                         "stop_sequence", "usage"}  # fmt: skip
    assert body["content"] == [{"type": "text", "text": "Hello world"}]
    assert set(body["usage"]) == {"input_tokens", "output_tokens"}


def test_system_and_blocks_render_as_chat_messages(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    history: list[MessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
        {"role": "user", "content": "d"},
    ]
    claude.messages.create(
        model=BASE, max_tokens=4, messages=history, system=[{"type": "text", "text": "Be brief."}]
    )
    prompt = fake.tokenizer.decode(fake.requests[0][0])
    assert prompt == "<system>Be brief.\n<user>ab\n<assistant>c\n<user>d\n<assistant>"


def test_a_system_turn_in_the_messages_is_a_system_message(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    claude.messages.create(
        model=BASE, max_tokens=4, messages=[{"role": "system", "content": "Be brief."}, *USER]
    )
    assert fake.tokenizer.decode(fake.requests[0][0]) == "<system>Be brief.\n<user>hi\n<assistant>"


def test_sampling_fields_reach_the_engine(claude: anthropic.Anthropic, fake: FakeEngine) -> None:
    claude.messages.create(
        model=BASE,
        max_tokens=7,
        messages=USER,
        stop_sequences=["x", "y"],
        metadata={"user_id": "u1"},  # ignored
        # Anthropic's API has dropped these; vLLM and llama.cpp's servers take them.
        extra_body={"temperature": 0.3, "top_p": 0.5, "top_k": 5},
    )
    options = fake.requests[0][1]
    assert (options.max_tokens, options.temperature, options.top_p, options.top_k) == (
        7, 0.3, 0.5, 5
    )  # fmt: skip
    assert options.stop == ("x", "y") and options.n == 1


def test_max_tokens_is_the_stop_reason_of_a_cut_reply(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(["one", " two", " three"])
    reply = claude.messages.create(model=BASE, max_tokens=2, messages=USER)
    assert reply.stop_reason == "max_tokens"
    assert reply.usage.output_tokens == 2


class StopStringEngine(FakeEngine):
    """Ends a reply at the first of the request's stop strings, and says which, as vLLM does."""

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[GenerationUpdate, None]:
        async for update in super().generate(prompt_token_ids, options, request_id, adapter):
            for delta in update.choices:
                hit = next((s for s in options.stop if s in delta.text), None)
                if hit is not None:
                    delta.text = delta.text[: delta.text.index(hit)]
                    delta.finish_reason, delta.stop_sequence = "stop", hit
                    yield update
                    return
            yield update


def test_a_stop_sequence_is_named() -> None:
    stopping = StopStringEngine()
    with TestClient(create_app(server_settings(), fake_state_factory(stopping))) as client:
        claude = sdk_for(client)
        stopping.enqueue(["It is ", "sunny. END more"])
        reply = claude.messages.create(
            model=BASE, max_tokens=16, messages=USER, stop_sequences=["END"]
        )
        assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "END")
        assert isinstance(reply.content[0], TextBlock) and reply.content[0].text == "It is sunny. "
        stopping.enqueue(["It is ", "sunny. END more"])
        stream = claude.messages.create(
            model=BASE, max_tokens=16, messages=USER, stop_sequences=["END"], stream=True
        )
        (final,) = [e for e in stream if e.type == "message_delta"]
        assert (final.delta.stop_reason, final.delta.stop_sequence) == ("stop_sequence", "END")


def test_the_stream_is_anthropics_event_sequence(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(["Hel", "lo"])
    events = list(claude.messages.create(model=BASE, max_tokens=16, messages=USER, stream=True))
    assert [e.type for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.content == []
    assert start.message.usage.input_tokens == len(fake.requests[0][0])
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 2
    texts = [e.delta.text for e in events if e.type == "content_block_delta"
             and e.delta.type == "text_delta"]  # fmt: skip
    assert texts == ["Hel", "lo"]


def test_each_sse_event_has_its_event_line(client: TestClient) -> None:
    response = post(client, stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in response.text.split("\n\n") if f]
    for frame in frames:
        event_line, data_line = frame.split("\n")
        kind = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == kind
    assert "[DONE]" not in response.text


def test_the_sdks_stream_helper_assembles_the_final_message(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(["Hel", "lo"])
    with claude.messages.stream(model=BASE, max_tokens=16, messages=USER) as stream:
        assert "".join(stream.text_stream) == "Hello"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 2


def test_a_failure_mid_stream_is_an_error_event_the_sdk_raises_on(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(["Hel", Die()])
    with pytest.raises(anthropic.APIStatusError) as raised:
        for _ in claude.messages.create(model=BASE, max_tokens=16, messages=USER, stream=True):
            pass
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "overloaded_error"


def anthropic_error(response: Any, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"foo": 1}, "foo"),
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
         "messages.0.content.0.type"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         "messages.0.content.0.type"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"messages": [*USER, {"role": "assistant", "content": "The answer is"}]},
         "messages.1.role"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
         "messages.0.content.0.type"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "system", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}, *USER]},
         "messages.0.content.0.type"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "tools.0.input_schema"),
        ({"stream": "yes"}, "stream"),
    ],
)  # fmt: skip
def test_invalid_and_unsupported_fields_are_400s_naming_them(
    client: TestClient, fake: FakeEngine, fields: dict[str, Any], param: str
) -> None:
    message = anthropic_error(post(client, **fields), 400, "invalid_request_error")
    assert param in message
    assert fake.requests == []


def test_the_sdk_raises_its_bad_request_error(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(
            model=BASE, max_tokens=16, messages=USER, extra_body={"temperature": 3.0}
        )
    assert "temperature" in raised.value.message


def test_a_prompt_over_the_context_is_a_400(client: TestClient) -> None:
    message = anthropic_error(post(client, max_tokens=100_000), 400, "invalid_request_error")
    assert "maximum context length" in message


def test_an_unknown_model_is_a_404_listing_the_valid_names(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        claude.messages.create(model="claude-nope", max_tokens=16, messages=USER)
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "not_found_error"
    assert "claude-nope" in body["error"]["message"] and BASE in body["error"]["message"]


def test_a_dead_engine_is_a_503(client: TestClient, fake: FakeEngine) -> None:
    fake.dead = True
    anthropic_error(post(client), 503, "overloaded_error")


def test_the_openai_routes_keep_openais_envelope(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "nope", "messages": USER})
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture
def keyed(fake: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(server_settings(api_key="sekrit"), fake_state_factory(fake))) as c:
        yield c


def test_a_key_is_needed_when_one_is_set(keyed: TestClient) -> None:
    with pytest.raises(anthropic.AuthenticationError) as raised:
        sdk_for(keyed, api_key="wrong").messages.create(model=BASE, max_tokens=4, messages=USER)
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "authentication_error"
    anthropic_error(keyed.post("/v1/messages", json={}), 401, "authentication_error")


def test_x_api_key_and_anthropic_version_are_accepted(keyed: TestClient) -> None:
    # The SDK sends the key as x-api-key and the anthropic-version header on every request.
    reply = sdk_for(keyed, api_key="sekrit").messages.create(
        model=BASE, max_tokens=4, messages=USER
    )
    assert reply.stop_reason == "end_turn"
    headers = {"authorization": "Bearer sekrit", "anthropic-version": "2023-06-01"}
    body = {"model": BASE, "max_tokens": 4, "messages": USER}
    assert keyed.post("/v1/messages", json=body, headers=headers).status_code == 200
    # The OpenAI routes take the Anthropic clients' header too.
    assert keyed.get("/v1/models", headers={"x-api-key": "sekrit"}).status_code == 200
    assert keyed.get("/v1/models", headers={"x-api-key": "wrong"}).status_code == 401


def test_a_client_leaving_a_stream_aborts_its_engine_request(live_fake: LiveFake) -> None:
    fake, hold = live_fake.fake, Hold()
    fake.enqueue(["Hel", hold, "lo"])
    with anthropic.Anthropic(base_url=live_fake.origin, api_key="x", max_retries=0) as claude:
        stream = claude.messages.create(model=BASE, max_tokens=16, messages=USER, stream=True)
        start = next(stream)
        assert start.type == "message_start"
        wait_for(hold.reached.is_set)
        assert fake.running == {start.message.id}
        stream.close()
        wait_for(lambda: start.message.id in fake.aborted)
    assert fake.running == set() and not hold.released.is_set()


def test_a_client_leaving_before_a_whole_reply_aborts_its_engine_request(
    live_fake: LiveFake,
) -> None:
    fake, hold = live_fake.fake, Hold()
    fake.enqueue([hold, "late"])
    body = json.dumps({"model": BASE, "max_tokens": 8, "messages": USER}).encode()
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    origin = urlsplit(live_fake.origin)
    with socket.create_connection((origin.hostname, origin.port)) as connection:
        connection.sendall(head.encode() + body)
        wait_for(hold.reached.is_set)
        assert len(fake.running) == 1
    wait_for(lambda: len(fake.aborted) == 1)
    assert fake.running == set() and not hold.released.is_set()


def test_an_undecodable_body_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/v1/messages", content=b'{"a\xff": 1}', headers={"content-type": "application/json"}
    )
    anthropic_error(response, 400, "invalid_request_error")


def test_an_unexpected_failure_is_an_api_error(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("loragate.server.routers.messages.chat_request", broken)
    message = anthropic_error(post(client), 500, "api_error")
    assert "a bug" not in message
