"""Bearer-key checks as FastAPI dependencies: any usable key for the API, an administering key
for the persona and key APIs. The key found is the request's for the rest of it (access,
limits, usage)."""

from __future__ import annotations

from fastapi import Request

from loragate.server.request_record import current_record
from loragate.server.state import app_state
from loragate.tenants.keys import ApiKey


def presented_key(request: Request) -> str | None:
    """The bearer token, or the `x-api-key` header that Anthropic's clients send."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key")


def _authenticate(request: Request, *, admin: bool) -> ApiKey:
    key = app_state(request).keyring.authenticate(presented_key(request), admin=admin)
    request.state.api_key = key
    record = current_record()
    if record is not None:
        record.key_name = key.name
    return key


def request_key(request: Request) -> ApiKey:
    """The key the route's dependency authenticated."""
    key = getattr(request.state, "api_key", None)
    assert isinstance(key, ApiKey), "the route has no key dependency"
    return key


async def require_api_key(request: Request) -> None:
    _authenticate(request, admin=False)


async def require_admin_key(request: Request) -> None:
    _authenticate(request, admin=True)
