"""HTTP's errors: the gateway's own, one table for the layers' domain errors, one handler set.

Every error response is OpenAI's envelope, with the status codes openai-python maps to its
exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 503
InternalServerError...); Anthropic's Messages route shows the same errors in Anthropic's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from loragate.adapters.errors import (
    AdapterNotFoundError,
    AdapterStillLoadedError,
    AdapterValidationError,
    InvalidPersonaNameError,
    PathNotAllowedError,
    PersonaExistsError,
    PersonaNotFoundError,
    PersonaStoreError,
    PersonaUnavailableError,
    UnknownModelError,
)
from loragate.domain_errors import DomainError
from loragate.engine.protocol import (
    EngineDeadError,
    EngineOverloadedError,
    EngineRequestError,
    EngineUnavailableError,
)
from loragate.tenants.errors import (
    InvalidKeyError,
    KeyExistsError,
    KeyNotFoundError,
    KeyStoreError,
    ModelNotAllowedError,
    RateLimitedError,
)
from loragate.tenants.keyring import UnauthenticatedError
from loragate.validation_errors import first_problem

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None
    retry_after: float | None = None  # seconds: the Retry-After header of a 429 or 503
    extra_headers: Mapping[str, str] = {}  # e.g. a refused key's x-ratelimit-*

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str] | None:
        if self.retry_after is None:
            return dict(self.extra_headers) or None
        # retry-after-ms first: openai-python's and anthropic-sdk's retries read it to the ms.
        return {
            **self.extra_headers,
            "retry-after-ms": str(max(1, math.ceil(self.retry_after * 1000))),
            "Retry-After": str(max(1, math.ceil(self.retry_after))),
        }

    def response(self, body: dict[str, Any] | None = None) -> JSONResponse:
        """This error as a response: OpenAI's envelope unless another `body` is given."""
        content = self.envelope() if body is None else body
        return JSONResponse(content, status_code=self.status, headers=self.headers())


class BadRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContextLengthError(BadRequestError):
    code = "context_length_exceeded"


class NotFoundError(GatewayError):
    status = 404
    type = "not_found_error"


class ClientClosedRequestError(GatewayError):
    """Nobody reads this response; the status is nginx's 499 for access logs."""

    status = 499
    type = "client_closed_request"


class ServerStoppingError(GatewayError):
    """The server drains before it stops: a load balancer should send the request elsewhere."""

    status = 503
    type = "service_unavailable_error"
    code = "server_shutting_down"
    retry_after = 5.0


class RequestTimeoutError(GatewayError):
    status = 504
    type = "timeout_error"
    code = "request_timeout"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


@dataclass(frozen=True)
class HttpShape:
    """How one domain error is shown: status, OpenAI's `type`, `code`, and a lead-in."""

    status: int
    type: str
    code: str | None
    prefix: str = ""


_INVALID = "invalid_request_error"

# Each domain error of the layers below, as HTTP shows it; a subclass takes its nearest entry.
DOMAIN_ERRORS: Mapping[type[Exception], HttpShape] = {
    InvalidPersonaNameError: HttpShape(400, _INVALID, "invalid_persona_name"),
    PersonaExistsError: HttpShape(400, _INVALID, None),
    PathNotAllowedError: HttpShape(400, _INVALID, "adapter_path_not_allowed"),
    AdapterNotFoundError: HttpShape(400, _INVALID, "adapter_not_found"),
    AdapterValidationError: HttpShape(400, _INVALID, "invalid_adapter"),
    PersonaUnavailableError: HttpShape(400, _INVALID, "persona_unavailable"),
    # OpenAI's answer to an unknown model: a 404 of type invalid_request_error.
    UnknownModelError: HttpShape(404, _INVALID, "model_not_found"),
    PersonaNotFoundError: HttpShape(404, "not_found_error", "persona_not_found"),
    AdapterStillLoadedError: HttpShape(500, "internal_error", "adapter_still_loaded"),
    # The persona database refused a change (locked, damaged): the server's failure, retried.
    PersonaStoreError: HttpShape(503, "service_unavailable_error", "persona_store_unavailable"),
    EngineRequestError: HttpShape(400, _INVALID, "invalid_value"),
    EngineDeadError: HttpShape(
        503, "service_unavailable_error", "engine_unavailable", "The engine is not available: "
    ),
    EngineUnavailableError: HttpShape(503, "service_unavailable_error", "engine_unavailable"),
    EngineOverloadedError: HttpShape(429, "rate_limit_error", "server_overloaded"),
    UnauthenticatedError: HttpShape(401, "authentication_error", "invalid_api_key"),
    # openai-python raises PermissionDeniedError for a 403, anthropic-sdk too.
    ModelNotAllowedError: HttpShape(403, "permission_error", "model_not_allowed"),
    RateLimitedError: HttpShape(429, "rate_limit_error", "rate_limit_exceeded"),
    InvalidKeyError: HttpShape(400, _INVALID, "invalid_key"),
    KeyExistsError: HttpShape(400, _INVALID, "key_exists"),
    KeyNotFoundError: HttpShape(404, "not_found_error", "key_not_found"),
    KeyStoreError: HttpShape(503, "service_unavailable_error", "key_store_unavailable"),
}


def as_gateway_error(exc: BaseException) -> GatewayError | None:
    """`exc` as the gateway shows it, or None for an error nobody expected (a 500)."""
    if isinstance(exc, GatewayError):
        return exc
    shape = next((DOMAIN_ERRORS[c] for c in type(exc).__mro__ if c in DOMAIN_ERRORS), None)
    if shape is None:
        return None
    error = GatewayError(
        shape.prefix + (exc.message if isinstance(exc, DomainError) else str(exc)),
        param=getattr(exc, "param", None),
    )
    error.status, error.type, error.code = shape.status, shape.type, shape.code
    error.retry_after = getattr(exc, "retry_after", None)
    error.extra_headers = getattr(exc, "rate_limit_headers", {})
    return error


def error_envelope(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


# For the OpenAPI schema. Not openai-python's ErrorObject: that declares fields never sent here,
# and makes `param` and `code` optional, which are always sent.
class ErrorEnvelope(BaseModel):
    """OpenAI's error envelope, the body of every error response."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorEnvelope(BaseModel):
    """Anthropic's error envelope, the body of an error of /v1/messages."""

    type: Literal["error"]
    error: AnthropicErrorDetail


def _validation_message(errors: Any) -> tuple[str, str | None]:
    problem = first_problem(errors, from_request=True)
    # A check of the whole body (an unsupported field) names its field in the error's context.
    named = problem.context.get("param")
    param = problem.dotted() or named
    if problem.kind == "extra_forbidden":  # OpenAI's words for an unknown field
        return f"Unrecognized request argument supplied: {param}", param
    if problem.kind == "json_invalid":
        return f"Malformed JSON body: {problem.context.get('error', problem.message)}", None
    if named:
        return problem.message, param
    return problem.sentence(), param


async def _gateway_error(_: Request, exc: Exception) -> JSONResponse:
    error = as_gateway_error(exc)
    assert error is not None
    return error.response()


def validation_error(exc: RequestValidationError) -> BadRequestError:
    message, param = _validation_message(exc.errors())
    return BadRequestError(message, param=param, code="invalid_value")


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(validation_error(exc).envelope(), status_code=400)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    body = error_envelope(str(exc.detail), type_)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _method_not_allowed(request: Request, _: Exception) -> JSONResponse:
    # Starlette's Allow names only the first matching route's methods, and FastAPI makes a route
    # per method: GET, PUT and DELETE /v1/personas/{name} are three.
    allowed = ", ".join(sorted(_methods_on(request)))
    message = f"Method {request.method} is not allowed here; allowed: {allowed}"
    body = error_envelope(message, "invalid_request_error")
    return JSONResponse(body, status_code=405, headers={"Allow": allowed})


def _methods_on(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        on_path = isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE
        if on_path and route.methods:
            methods |= route.methods
    return methods


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_envelope("Internal server error", "internal_error"), status_code=500)


# Anthropic's envelope, for /v1/messages: the same errors (the table above), as Anthropic's API
# shows them. It names an error's type by its status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # the engine is not available: Anthropic's "try again later"
    504: "timeout_error",
}


def served_error(exc: Exception) -> GatewayError:
    """Any exception as an error response shows it; an unexpected one is logged, a 500."""
    if isinstance(exc, RequestValidationError):
        return validation_error(exc)
    if isinstance(exc, StarletteHTTPException):  # FastAPI's own: a body it cannot decode
        http = GatewayError(str(exc.detail))
        http.status, http.type = exc.status_code, "invalid_request_error"
        return http
    error = as_gateway_error(exc)
    if error is None:
        logger.exception("unhandled error", exc_info=exc)
        return GatewayError("Internal server error")
    return error


def anthropic_envelope(error: GatewayError) -> dict[str, Any]:
    fallback = "api_error" if error.status >= 500 else "invalid_request_error"
    kind = _ANTHROPIC_TYPES.get(error.status, fallback)
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def anthropic_error_response(exc: Exception) -> JSONResponse:
    error = served_error(exc)
    return error.response(anthropic_envelope(error))


def install_error_handlers(app: FastAPI) -> None:
    handled: list[type[Exception]] = [GatewayError, *DOMAIN_ERRORS]
    for error_class in handled:
        app.add_exception_handler(error_class, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_exception_handler(Exception, _unexpected_error)
