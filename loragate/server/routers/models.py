from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import loragate
from loragate.adapters.errors import UnknownModelError
from loragate.engine.protocol import Engine, EngineDeadError, EngineUnavailableError
from loragate.server.auth import request_key, require_api_key
from loragate.server.errors import ErrorDetail, ServerStoppingError, as_gateway_error
from loragate.server.lifecycle import STOPPING, lifecycle_of
from loragate.server.openapi import Responses, errors
from loragate.server.state import engine, registry
from loragate.server.tenancy import check_access, may_use, visible_models

router = APIRouter()


async def _live(running: Engine) -> Engine:
    await running.check_health()  # a dead engine: EngineDeadError, a 503
    return running


@router.get("/v1/models", dependencies=[Depends(require_api_key)], responses=errors(401))
async def list_models(request: Request) -> dict[str, Any]:
    key, catalog = request_key(request), registry(request)
    cards = [card for card in catalog.model_cards() if may_use(key, catalog, card.id)]
    return {"object": "list", "data": [card.model_dump(mode="json") for card in cards]}


@router.get(
    "/v1/models/{model}", dependencies=[Depends(require_api_key)], responses=errors(401, 403, 404)
)
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    """One model's card, as `client.models.retrieve` reads it."""
    key, catalog = check_access(request, model), registry(request)
    cards = {card.id: card for card in catalog.model_cards()}
    if model not in cards:
        raise UnknownModelError(model, visible_models(key, catalog))
    return cards[model].model_dump(mode="json")


class Health(BaseModel):
    """ok; recovering (the engine restarts), failed (it will not), draining (the server stops)."""

    status: Literal["ok", "recovering", "failed", "draining"]
    error: ErrorDetail | None = None


_UNHEALTHY: Responses = {503: {"model": Health, "description": "Not serving: `status` says why."}}


@router.get("/health", response_model=Health, responses=_UNHEALTHY)
async def health(request: Request) -> JSONResponse:
    if lifecycle_of(request.scope).draining:
        return _unhealthy("draining", ServerStoppingError(STOPPING))
    try:
        await engine(request).check_health()
    except EngineUnavailableError as exc:
        return _unhealthy("recovering", exc)
    except EngineDeadError as exc:
        return _unhealthy("failed", exc)
    return JSONResponse({"status": "ok"})


def _unhealthy(status: str, exc: Exception) -> JSONResponse:
    error = as_gateway_error(exc)
    assert error is not None
    body = {"status": status, "error": error.envelope()["error"]}
    return error.response(body)


@router.get(
    "/v1/engine/status", dependencies=[Depends(require_api_key)], responses=errors(401, 503)
)
async def engine_status(request: Request) -> dict[str, Any]:
    """What the engine holds right now: for operators, and for tests that check cleanup."""
    # As /health: a dead engine is a 503, not counters of requests it will never finish.
    running = await _live(engine(request))
    replicas = await running.adapter_ids_by_replica()
    return {
        "unfinished_requests": running.num_unfinished_requests(),
        "loaded_adapter_ids": sorted(set().union(*replicas)),
        "replicas": [{"loaded_adapter_ids": sorted(ids)} for ids in replicas],
    }


@router.get("/version", dependencies=[Depends(require_api_key)], responses=errors(401))
async def version() -> dict[str, str]:
    return {"version": loragate.__version__}
