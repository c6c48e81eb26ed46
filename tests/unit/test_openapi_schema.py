"""The OpenAPI schema's own shape: OpenAI's error envelope everywhere, no FastAPI 422.

Schemathesis drives every operation against it in test_schemathesis.py (slow).
"""

from __future__ import annotations

from tests.unit.conftest import fake_openapi

OPENAPI = fake_openapi()
# Anthropic's Messages API answers in Anthropic's envelope, but for the 413 of a body refused
# before any route runs.
ANTHROPIC_ROUTES = {"/v1/messages"}
# A load balancer's probe: its 503 says which state the server is in, the error beside it.
HEALTH = ("/health", "503")


def test_the_schema_declares_openai_errors_and_no_422() -> None:
    for path, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert {"413", "500"} <= set(responses), (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    envelope = response["content"]["application/json"]["schema"]
                    anthropic = path in ANTHROPIC_ROUTES and status != "413"
                    name = "AnthropicErrorEnvelope" if anthropic else "ErrorEnvelope"
                    name = "Health" if (path, status) == HEALTH else name
                    assert envelope == {"$ref": f"#/components/schemas/{name}"}, (path, status)
    assert "HTTPValidationError" not in OPENAPI["components"]["schemas"]
    error = OPENAPI["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    health = OPENAPI["components"]["schemas"]["Health"]["properties"]
    assert health["status"]["enum"] == ["ok", "recovering", "failed", "draining"]


def test_put_declares_201_for_a_new_persona() -> None:
    responses = OPENAPI["paths"]["/v1/personas/{name}"]["put"]["responses"]
    assert {"200", "201", "400", "401", "404"} <= set(responses)
