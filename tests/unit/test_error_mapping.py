"""The one table from domain errors to HTTP: every domain error is in it, shown as OpenAI's."""

from __future__ import annotations

from loragate.adapters.errors import PersonaError, PersonaNotFoundError, UnknownModelError
from loragate.engine.protocol import EngineDeadError, EngineRequestError
from loragate.server.errors import DOMAIN_ERRORS, as_gateway_error


def _subclasses(cls: type[Exception]) -> set[type[Exception]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_public_persona_error_has_its_own_entry() -> None:
    public = {c for c in _subclasses(PersonaError) if not c.__name__.startswith("_")}
    assert public - set(DOMAIN_ERRORS) == set()


def test_an_unknown_model_is_openais_404() -> None:
    shown = as_gateway_error(UnknownModelError("nope", ["base", "zhenhuan"]))
    assert shown is not None
    assert (shown.status, shown.type, shown.code, shown.param) == (
        404, "invalid_request_error", "model_not_found", "model"
    )  # fmt: skip
    assert shown.message == "The model 'nope' does not exist. Valid models: base, zhenhuan"


def test_the_persona_api_404_lists_the_personas() -> None:
    shown = as_gateway_error(PersonaNotFoundError("x", ["b", "a"]))
    assert shown is not None and (shown.status, shown.code) == (404, "persona_not_found")
    assert shown.message.endswith("Valid personas: a, b")


def test_engine_errors() -> None:
    dead = as_gateway_error(EngineDeadError("EngineCore died"))
    assert dead is not None and (dead.status, dead.code) == (503, "engine_unavailable")
    assert dead.message == "The engine is not available: EngineCore died"
    refused = as_gateway_error(EngineRequestError("n must be 1", "n"))
    assert refused is not None and (refused.status, refused.param) == (400, "n")


def test_anything_else_is_not_mapped() -> None:
    assert as_gateway_error(RuntimeError("bug")) is None
