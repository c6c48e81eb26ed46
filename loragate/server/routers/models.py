from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

import loragate
from loragate.server.auth import require_api_key
from loragate.server.engine.protocol import EngineDeadError
from loragate.server.errors import EngineUnavailableError
from loragate.server.state import catalog, engine

router = APIRouter()


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def list_models(request: Request) -> dict[str, Any]:
    cards = catalog(request).model_cards()
    return {"object": "list", "data": [card.model_dump(mode="json") for card in cards]}


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    try:
        await engine(request).check_health()
    except EngineDeadError as exc:
        raise EngineUnavailableError(f"The engine is not available: {exc}") from exc
    return JSONResponse({"status": "ok"})


@router.get("/v1/engine/status", dependencies=[Depends(require_api_key)])
async def engine_status(request: Request) -> dict[str, Any]:
    """What the engine holds right now: for operators, and for tests that check cleanup."""
    running = engine(request)
    return {
        "unfinished_requests": running.num_unfinished_requests(),
        "loaded_adapter_ids": sorted(await running.loaded_adapter_ids()),
    }


@router.get("/version", dependencies=[Depends(require_api_key)])
async def version() -> dict[str, str]:
    return {"version": loragate.__version__}
