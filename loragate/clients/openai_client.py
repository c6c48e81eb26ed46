"""Configured OpenAI SDK clients for a loragate gateway, and the personas it serves.

The base URL and key come from arguments, else LORAGATE_BASE_URL / LORAGATE_API_KEY (the same
variable `loragate serve` reads its key from), else a local gateway on :8000 without a key.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import openai
from openai.types import Model
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loragate.wire import PersonaInfo

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# The SDK refuses to start without a key; a gateway started without --api-key ignores it.
NO_KEY = "EMPTY"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAGATE_", extra="ignore")

    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="The gateway's OpenAI API base URL; a bare http://host:port gets /v1 added.",
    )
    api_key: str | None = Field(
        default=None, description="The gateway's --api-key, when it was started with one."
    )

    @field_validator("base_url")
    @classmethod
    def _api_root(cls, url: str) -> str:
        url = url.rstrip("/")
        return url + "/v1" if urlsplit(url).path == "" else url

    def key(self) -> str:
        return self.api_key or NO_KEY


def gateway_settings(base_url: str | None = None, api_key: str | None = None) -> GatewaySettings:
    """Arguments win; unset ones fall through to the environment, then the defaults."""
    given = {k: v for k, v in {"base_url": base_url, "api_key": api_key}.items() if v is not None}
    return GatewaySettings(**given)


def gateway_client(
    base_url: str | None = None, api_key: str | None = None, **options: Any
) -> openai.OpenAI:
    """An `openai.OpenAI` for the gateway; `options` go to the SDK (timeout, max_retries...)."""
    settings = gateway_settings(base_url, api_key)
    return openai.OpenAI(base_url=settings.base_url, api_key=settings.key(), **options)


def async_gateway_client(
    base_url: str | None = None, api_key: str | None = None, **options: Any
) -> openai.AsyncOpenAI:
    settings = gateway_settings(base_url, api_key)
    return openai.AsyncOpenAI(base_url=settings.base_url, api_key=settings.key(), **options)


class _PersonaList(BaseModel):
    data: list[PersonaInfo]


def _parent(card: Model) -> str | None:
    parent = (card.model_extra or {}).get("parent")
    return parent if isinstance(parent, str) else None


def personas_from_models(cards: list[Model]) -> list[PersonaInfo]:
    """Adapters listed by /v1/models (cards with a parent): what vLLM's own server offers."""
    return [
        PersonaInfo(
            name=card.id,
            base_model=_parent(card),
            adapter_path=(card.model_extra or {}).get("root"),
        )
        for card in cards
        if _parent(card) is not None
    ]


def base_model_name(cards: list[Model]) -> str:
    """The served base model: the one card without a parent."""
    for card in cards:
        if _parent(card) is None:
            return card.id
    raise LookupError("the gateway lists no base model in /v1/models")


def list_personas(client: openai.OpenAI) -> list[PersonaInfo]:
    """GET /v1/personas; a server without it (vLLM's own) gets its adapters from /v1/models."""
    try:
        body = client.get("/personas", cast_to=object)
    except openai.NotFoundError:
        return personas_from_models(client.models.list().data)
    return _PersonaList.model_validate(body).data


async def alist_personas(client: openai.AsyncOpenAI) -> list[PersonaInfo]:
    try:
        body = await client.get("/personas", cast_to=object)
    except openai.NotFoundError:
        return personas_from_models((await client.models.list()).data)
    return _PersonaList.model_validate(body).data


def served_base_model(client: openai.OpenAI) -> str:
    return base_model_name(client.models.list().data)
