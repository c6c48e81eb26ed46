"""The OpenAPI schema's own shape: OpenAI's error envelope everywhere, no FastAPI 422.

Schemathesis drives every operation against it in test_schemathesis.py (slow).
"""

from __future__ import annotations

from tests.unit.conftest import fake_openapi

OPENAPI = fake_openapi()


def test_the_schema_declares_openai_errors_and_no_422() -> None:
    for path, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert {"413", "500"} <= set(responses), (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    envelope = response["content"]["application/json"]["schema"]
                    assert envelope == {"$ref": "#/components/schemas/ErrorEnvelope"}
    assert "HTTPValidationError" not in OPENAPI["components"]["schemas"]
    error = OPENAPI["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}


def test_put_declares_201_for_a_new_persona() -> None:
    responses = OPENAPI["paths"]["/v1/personas/{name}"]["put"]["responses"]
    assert {"200", "201", "400", "401", "404"} <= set(responses)
