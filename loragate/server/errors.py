"""One exception hierarchy and one handler set, rendering OpenAI's error envelope.

The status codes are the ones openai-python maps to its exception classes
(400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 503 InternalServerError...).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.type, param=self.param, code=self.code)


class BadRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContextLengthError(BadRequestError):
    code = "context_length_exceeded"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(GatewayError):
    status = 404
    type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, name: str, valid: Sequence[str]):
        listed = ", ".join(sorted(valid)) or "(none)"
        super().__init__(
            f"The model '{name}' does not exist. Valid models: {listed}", param="model"
        )
        self.valid = list(valid)


class ConflictError(GatewayError):
    status = 409
    type = "conflict_error"


class ClientClosedRequestError(GatewayError):
    """Nobody reads this response; the status is nginx's 499 for access logs."""

    status = 499
    type = "client_closed_request"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class EngineUnavailableError(GatewayError):
    status = 503
    type = "service_unavailable_error"
    code = "engine_unavailable"


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


def _param_of(loc: Sequence[int | str]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def _validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    first = errors[0]
    # A check of the whole body (an unsupported field) names its field in the error's context.
    param = _param_of(first.get("loc", ())) or first.get("ctx", {}).get("param")
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":  # OpenAI's words for an unknown field
        return f"Unrecognized request argument supplied: {param}", param
    if first.get("type") == "json_invalid":
        return f"Malformed JSON body: {first.get('ctx', {}).get('error', msg)}", None
    if first.get("ctx", {}).get("param"):
        return msg, param
    return (f"Invalid value for '{param}': {msg}" if param else msg), param


async def _gateway_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return JSONResponse(exc.envelope(), status_code=exc.status)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc.errors())
    body = error_envelope(message, BadRequestError.type, param=param, code="invalid_value")
    return JSONResponse(body, status_code=400)


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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_exception_handler(Exception, _unexpected_error)
