"""A client that hangs up mid-reply frees its engine request at once, streamed or not.

Over a real socket (uvicorn, as `loragate serve` runs the app): the fake engine is held
mid-generation, so nothing is written after the client leaves and only the server's listening
for `http.disconnect` (EventStreamResponse for a stream, until_disconnect for a whole reply) can
notice it.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from loragate.engine.fake import Hold
from tests.unit.conftest import BASE, LiveFake, wait_for

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


# Under uvicorn's 2.3 Starlette listens for the disconnect too; from 2.4 on only our response does.
@pytest.mark.parametrize("live_fake", ["2.3", "2.4"], indirect=True, ids=lambda v: f"asgi-{v}")
def test_a_client_leaving_a_stream_aborts_its_engine_request(live_fake: LiveFake) -> None:
    fake, hold = live_fake.fake, Hold()
    fake.enqueue(["Hel", hold, "lo"])
    with openai.OpenAI(base_url=f"{live_fake.origin}/v1", api_key="x", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model=BASE, messages=USER, stream=True)
        _role, first = next(stream), next(stream)
        assert first.choices[0].delta.content == "Hel"
        wait_for(hold.reached.is_set)  # the engine is mid-reply and the server writes nothing
        assert fake.running == {first.id}
        stream.close()
        wait_for(lambda: first.id in fake.aborted)
    assert fake.aborted == [first.id] and fake.running == set()
    assert not hold.released.is_set()


def test_a_client_leaving_before_a_whole_reply_aborts_its_engine_request(
    live_fake: LiveFake,
) -> None:
    fake, hold = live_fake.fake, Hold()
    fake.enqueue([hold, "late"])
    body = json.dumps({"model": BASE, "messages": USER}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    origin = urlsplit(live_fake.origin)
    assert origin.hostname is not None and origin.port is not None
    with socket.create_connection((origin.hostname, origin.port), timeout=5) as connection:
        connection.sendall(head.encode() + body)
        wait_for(hold.reached.is_set)
        (request_id,) = fake.running
    wait_for(lambda: request_id in fake.aborted)
    assert fake.aborted == [request_id] and fake.running == set()
    assert not hold.released.is_set()
