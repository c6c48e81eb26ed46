"""Bearer-key checks as FastAPI dependencies: the API key, and the admin key for personas."""

from __future__ import annotations

import hmac

from fastapi import Request

from loragate.server.errors import AuthenticationError
from loragate.server.state import settings


def presented_key(request: Request) -> str | None:
    """The bearer token, or the `x-api-key` header that Anthropic's clients send."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key")


def _check(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        return
    given = presented_key(request)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise AuthenticationError(
            f"Incorrect or missing {what}: send 'Authorization: Bearer <key>' or "
            "'x-api-key: <key>'."
        )


async def require_api_key(request: Request) -> None:
    _check(request, settings(request).api_key, "API key")


async def require_admin_key(request: Request) -> None:
    s = settings(request)
    # With an admin key, persona changes need it; without one, the API key (if any) suffices.
    _check(request, s.admin_key or s.api_key, "admin key" if s.admin_key else "API key")
