"""What a request's key may do with the model it names: use it at all (403 otherwise, naming
the models it may use), and within the key's limits (429 with Retry-After beyond them)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from starlette.requests import Request

from loragate.adapters.registry import PersonaRegistry
from loragate.adapters.targets import ModelTarget
from loragate.adapters.untrusted import excerpt
from loragate.server.auth import request_key
from loragate.server.request_record import current_record
from loragate.server.state import app_state
from loragate.tenants.errors import ModelNotAllowedError
from loragate.tenants.keys import ApiKey, Limits


def visible_models(key: ApiKey, catalog: PersonaRegistry) -> list[str]:
    """The model names `key` may use, of those the catalog serves."""
    return [n for n in catalog.names() if may_use(key, catalog, n)]


def may_use(key: ApiKey, catalog: PersonaRegistry, model: str) -> bool:
    return key.may_use(model, is_base=model == catalog.base_name)


def check_access(request: Request, model: str | None) -> ApiKey:
    """The request's key, if it may use `model` (None: the base model)."""
    key = request_key(request)
    catalog = app_state(request).catalog
    if not may_use(key, catalog, model or catalog.base_name):
        # The name as the client sent it, cut as the 404 of an unknown model cuts it.
        named = excerpt(model or catalog.base_name)
        raise ModelNotAllowedError(named, visible_models(key, catalog))
    return key


async def admit(request: Request, key: ApiKey, stack: AsyncExitStack, reserve: int) -> None:
    """Within the key's limits, or RateLimitedError; the admission is settled when `stack`
    closes, with the tokens the request's record counted."""
    await _admit(request, f"key {key.name}", key.limits, stack, reserve)


async def admit_to_persona(request: Request, target: ModelTarget, stack: AsyncExitStack) -> None:
    """Within the persona's own cap of requests in flight (persona.toml's max_parallel)."""
    if target.max_parallel is not None:
        limits = Limits(max_parallel=target.max_parallel)
        await _admit(request, f"persona {target.name}", limits, stack, 0)


async def _admit(
    request: Request, subject: str, limits: Limits, stack: AsyncExitStack, reserve: int
) -> None:
    if limits.rpm is None and limits.tpm is None and limits.max_parallel is None:
        return
    admission = await app_state(request).limiter.admit(subject, limits, reserve)
    record = current_record()
    if record is None:
        stack.callback(admission.settle, reserve)
        return
    record.response_headers.update(admission.headers)
    stack.callback(lambda: admission.settle(record.prompt_tokens + record.completion_tokens))
