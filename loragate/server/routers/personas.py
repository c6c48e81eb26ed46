"""The persona API, and vLLM's own load/unload routes for clients written against vLLM."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from loragate.adapters.persona import PERSONA_NAME
from loragate.server.auth import request_key, require_admin_key, require_api_key
from loragate.server.errors import NotFoundError
from loragate.server.openapi import Responses, errors
from loragate.server.state import registry
from loragate.server.tenancy import check_access, may_use
from loragate.wire import PersonaInfo

# Reading needs the API key (if any); changing needs the admin key (or, without one, the API key).
router = APIRouter()
read = [Depends(require_api_key)]
admin = [Depends(require_admin_key)]
# Each may be a 404 too, on a server without a persona registry (state.registry).
NAMED = errors(401, 404)
WITH_BODY = errors(400, 401, 404)
PUT_RESPONSES: Responses = {
    200: {"model": PersonaInfo, "description": "The new version replaced the current one."},
    201: {"model": PersonaInfo, "description": "A new persona."},
    **WITH_BODY,
}
# The registry's own rule, stated in the schema but checked by the registry, whose 400 explains
# it better than a pattern mismatch would.
_NAME_SCHEMA: JsonDict = {"pattern": PERSONA_NAME.pattern}
Name = Annotated[str, Path(json_schema_extra=_NAME_SCHEMA)]


class PutPersonaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="A persona bundle or bare peft adapter directory.")


class LoadLoraAdapterBody(BaseModel):
    """vLLM's LoadLoRAAdapterRequest."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1, json_schema_extra=_NAME_SCHEMA)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoraAdapterBody(BaseModel):
    """vLLM's UnloadLoRAAdapterRequest."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1, json_schema_extra=_NAME_SCHEMA)
    lora_int_id: int | None = None


@router.get("/v1/personas", dependencies=read, responses=NAMED)
async def list_personas(request: Request) -> dict[str, Any]:
    key, catalog = request_key(request), registry(request)
    data = [
        p.info().model_dump(mode="json")
        for p in catalog.personas()
        if may_use(key, catalog, p.name)
    ]
    return {"object": "list", "data": data}


@router.get("/v1/personas/{name}", dependencies=read, responses=errors(401, 403, 404))
async def get_persona(name: Name, request: Request) -> dict[str, Any]:
    check_access(request, name)
    return registry(request).get(name).info().model_dump(mode="json")


@router.put("/v1/personas/{name}", dependencies=admin, responses=PUT_RESPONSES)
async def put_persona(name: Name, body: PutPersonaBody, request: Request) -> JSONResponse:
    persona, created = await registry(request).put(name, body.path, source="api", load=True)
    return JSONResponse(persona.info().model_dump(mode="json"), status_code=201 if created else 200)


@router.delete("/v1/personas/{name}", dependencies=admin, responses=NAMED)
async def delete_persona(name: Name, request: Request) -> dict[str, Any]:
    await registry(request).delete(name)
    return {"name": name, "deleted": True}


@router.post(
    "/v1/load_lora_adapter",
    dependencies=admin,
    responses=WITH_BODY,
    response_class=PlainTextResponse,
)
async def load_lora_adapter(body: LoadLoraAdapterBody, request: Request) -> PlainTextResponse:
    await registry(request).put(
        body.lora_name, body.lora_path, source="api", load=True, replace=body.load_inplace
    )
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post(
    "/v1/unload_lora_adapter",
    dependencies=admin,
    responses=WITH_BODY,
    response_class=PlainTextResponse,
)
async def unload_lora_adapter(body: UnloadLoraAdapterBody, request: Request) -> PlainTextResponse:
    found = registry(request)
    if found.find(body.lora_name) is None:
        raise NotFoundError(
            f"The lora adapter '{body.lora_name}' cannot be found.", param="lora_name"
        )
    await found.delete(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
