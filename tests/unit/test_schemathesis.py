"""Schemathesis over the OpenAPI schema, on the fake engine: every operation, every check.

Bounded to a few seconds per operation: derandomized (the same cases on every run, so CI does
not flake), a small max_examples for the fuzzing phase, no deadline (the first request of a run
pays for the app's start-up). Schemathesis' coverage and examples phases run too. Slow as a
whole (over a thousand requests; collecting its cases alone takes seconds): `make unit` skips it,
and the schema's own shape is checked in test_openapi_schema.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance

from loragate.server.app import create_app
from tests.unit.conftest import SCHEMATHESIS_TALLY, fake_openapi
from tests.unit.personas_support import (
    CountingEngine,
    make_settings,
    persona_state_factory,
    write_bundle,
    write_model_dir,
)

pytestmark = pytest.mark.slow

# The 400s that schema-valid data may get: limits known only at run time (the context length,
# the vocabulary, what lies on disk under the adapter roots). Any other is a schema gap.
RUN_TIME_LIMITS = {
    "context_length_exceeded",
    "token_out_of_vocabulary",
    "adapter_path_not_allowed",
    "invalid_adapter",
    "tools_not_supported",  # the fake engine's template renders no tools
}

# Rules between fields that the JSON schema does not state, each a 400 `invalid_value` naming
# the rule: top_logprobs needs logprobs, structured_outputs takes exactly one constraint,
# response_format json_schema needs its json_schema, stream_options needs stream, no tool calls
# in messages, and the fields refused until they are served (tools, functions, audio...).
# The same in /v1/responses (a named tool among the tools...) and /tokenize (prompt or messages).
GENERATION = [
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /",
    "POST /v1/responses",
    "POST /tokenize",
]
CROSS_FIELD_400S = {"invalid_value"}
# Anthropic's envelope has no code: on its Messages route such a rule or limit (a named tool among
# the tools, a last turn of the user's, the context length...) is an `invalid_request_error`.
ANTHROPIC_GENERATION = ["POST /v1/messages"]

# Loaded at import, as `parametrize` needs; the app under test is the fixture's (its schema is
# the same). schemathesis.pytest.from_fixture would spare this, but fails on pytest 9.2
# ('Function' object has no attribute '_nodeid').
CONFIG = {"continue-on-failure": True}
schema = schemathesis.openapi.from_dict(
    fake_openapi(), config=schemathesis.Config.from_dict(CONFIG)
)


def accepted_unless_over_a_limit(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    if response.status_code == 400:
        code = _error_code(response)
        gap = case.operation.label in GENERATION and code in CROSS_FIELD_400S
        anthropic = case.operation.label in ANTHROPIC_GENERATION
        if (
            code in RUN_TIME_LIMITS
            or gap
            or (anthropic and _anthropic_type(response) == "invalid_request_error")
        ):
            return None
    return positive_data_acceptance(ctx, response, case)


def _error_code(response: schemathesis.Response) -> object:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _anthropic_type(response: schemathesis.Response) -> object:
    try:
        return response.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    root = tmp / "adapters"
    write_bundle(root / "zhenhuan")
    yield create_app(
        make_settings(root, personas_dir=[root], state_dir=tmp / "state"),
        persona_state_factory(CountingEngine(load_delay=0), write_model_dir(tmp / "model")),
    )
    shutdown_lifespans()


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Counter[str]:
    """Requests made per operation, summed up at the end of the run (conftest.py)."""
    counts: Counter[str] = Counter()
    paths = schema.raw_schema["paths"].items()
    operations = [f"{method.upper()} {path}" for path, methods in paths for method in methods]
    request.config.stash[SCHEMATHESIS_TALLY] = (operations, counts)
    return counts


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api(case: schemathesis.Case[Any], app: FastAPI, tally: Counter[str]) -> None:
    tally[case.operation.label] += 1
    case.call_and_validate(
        app=app,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[accepted_unless_over_a_limit],
    )
