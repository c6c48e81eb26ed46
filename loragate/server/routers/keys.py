"""The key API (admin keys only): make, list and revoke keys; read the usage of every key."""

from __future__ import annotations

import asyncio
import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from loragate.server.auth import require_admin_key
from loragate.server.openapi import errors
from loragate.server.state import app_state
from loragate.tenants.errors import InvalidKeyError, KeyExistsError
from loragate.tenants.keys import NAME_PATTERN, ApiKey, KeyDefinition, unix_time

router = APIRouter(dependencies=[Depends(require_admin_key)])
KeyName = Annotated[str, Path(pattern=NAME_PATTERN, description="The key's name.")]


@router.post("/v1/keys", status_code=201, responses=errors(400, 401))
async def create_key(body: KeyDefinition, request: Request) -> JSONResponse:
    """The new key and its secret: the only time the secret is shown."""
    keyring = app_state(request).keyring
    found = keyring.find(body.name)
    if found is not None and found.source != "store":
        raise KeyExistsError(f"The key '{body.name}' is {_defined_by(found)}.", param="name")
    key, secret = await asyncio.to_thread(keyring.store.create, body.key())
    keyring.refresh()
    return JSONResponse({**key.public(), "secret": secret}, status_code=201)


@router.get("/v1/keys", responses=errors(401))
async def list_keys(request: Request) -> dict[str, Any]:
    keys = app_state(request).keyring.keys()
    return {"object": "list", "data": [key.public() for key in keys]}


@router.delete("/v1/keys/{name}", responses=errors(400, 401, 404))
async def revoke_key(name: KeyName, request: Request) -> dict[str, Any]:
    keyring = app_state(request).keyring
    found = keyring.find(name)
    if found is not None and found.source != "store":
        raise InvalidKeyError(f"The key '{name}' is {_defined_by(found)}: change it there.")
    key = await asyncio.to_thread(keyring.store.revoke, name)
    keyring.refresh()
    return key.public()


@router.get("/v1/usage", responses=errors(400, 401))
async def usage(
    request: Request,
    since: Annotated[
        datetime.date | None, Query(description="The first day (UTC) counted, YYYY-MM-DD.")
    ] = None,
    key: Annotated[str | None, Query(description="Only this key's usage.")] = None,
) -> dict[str, Any]:
    """Requests and tokens by key, model and day."""
    log = app_state(request).usage
    await asyncio.to_thread(log.flush)  # what finished a moment ago is counted too
    start = None if since is None else unix_time(since)
    totals = await asyncio.to_thread(log.totals, start, key)
    return {"object": "list", "data": [total.public() for total in totals]}


def _defined_by(key: ApiKey) -> str:
    return "defined by --keys-file" if key.source == "file" else "a built-in key of the flags"
