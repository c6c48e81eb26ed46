from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

import loragate
from loragate.engine.protocol import Engine
from loragate.server.auth import require_api_key
from loragate.server.openapi import errors
from loragate.server.state import engine, registry

router = APIRouter()


async def _live(running: Engine) -> Engine:
    await running.check_health()  # a dead engine: EngineDeadError, a 503
    return running


@router.get("/v1/models", dependencies=[Depends(require_api_key)], responses=errors(401))
async def list_models(request: Request) -> dict[str, Any]:
    cards = registry(request).model_cards()
    return {"object": "list", "data": [card.model_dump(mode="json") for card in cards]}


@router.get("/health", responses=errors(503))
async def health(request: Request) -> JSONResponse:
    await _live(engine(request))
    return JSONResponse({"status": "ok"})


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
