"""The tutorial's `POST /` on the legacy port, with its own clients' quirks."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.integration.gateway import Gateway

TIME_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def post(gateway: Gateway, body: object) -> httpx.Response:
    return httpx.post(gateway.legacy_url, json=body, timeout=300)


def test_tutorial_requests_client_with_its_content_type_typo(gateway: Gateway) -> None:
    # The tutorial's get_completion() sends "application/jons" and a json.dumps body.
    response = httpx.post(
        gateway.legacy_url,
        headers={"Content-Type": "application/jons"},
        content=json.dumps({"prompt": "你好"}),
        timeout=300,
    )
    body = response.json()
    assert response.status_code == 200
    assert list(body) == ["response", "status", "time"]
    assert body["status"] == 200 and body["response"]
    assert TIME_FORMAT.match(body["time"])


def test_optional_fields_shape_the_reply(gateway: Gateway) -> None:
    body = {
        "prompt": "What is the capital of France?",
        "system": "You answer in one word.",
        "history": [["Hi", "Hello!"]],
        "max_new_tokens": 12,
        "temperature": 0,
        "top_p": 1.0,
    }
    reply = post(gateway, body).json()["response"]
    assert "Paris" in reply


def test_max_new_tokens_bounds_the_reply(gateway: Gateway) -> None:
    long = post(gateway, {"prompt": "Write a long story.", "max_new_tokens": 4}).json()
    assert 0 < len(long["response"].split()) <= 4


def test_base_model_by_name(gateway: Gateway) -> None:
    from tests.integration.conftest import BASE_MODEL

    assert (
        post(gateway, {"prompt": "Hi", "model": BASE_MODEL, "max_new_tokens": 4}).status_code == 200
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"prompt": 5}, 400),
        ({"prompt": "x", "max_new_tokens": 0}, 400),
        ({"prompt": "x", "temperature": 9}, 400),
        ({"prompt": "x", "model": "no-such-persona"}, 404),
        ([1, 2], 400),
    ],
)
def test_bad_input_gets_json_error_with_status(gateway: Gateway, body: object, status: int) -> None:
    response = post(gateway, body)
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_malformed_json_is_400(gateway: Gateway) -> None:
    response = httpx.post(gateway.legacy_url, content=b"{prompt", timeout=30)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]
