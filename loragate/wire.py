"""Wire shapes the gateway and its clients share: a persona's description, the error envelope.

Pydantic only: the clients import this without torch or vLLM.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PersonaState = Literal["registered", "loading", "loaded", "failed", "retired"]


class PersonaInfo(BaseModel):
    """A persona as GET/PUT /v1/personas describe it.

    The gateway sends every field (its response schema requires them all); the defaults let a
    client describe an adapter that another server (vLLM's own) lists only in /v1/models.
    """

    model_config = ConfigDict(extra="ignore", json_schema_serialization_defaults_required=True)

    name: str
    version: str | None = None
    state: PersonaState | None = None
    error: str | None = None
    description: str = ""
    base_model: str | None = None
    system_prompt: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    adapter_path: str | None = None
    rank: int | None = None
    size_bytes: int | None = None
    load_time_s: float | None = None
    requests_served: int = 0
    last_used: float | None = None
    in_flight: int = 0
    # Beyond the agreed fields: the engine's id of this version (as in GET /v1/engine/status),
    # and what validation found unusual but not wrong.
    adapter_id: int | None = None
    warnings: list[str] = Field(default_factory=list)


def error_message(body: object) -> str | None:
    """The message of OpenAI's error envelope, `{"error": {"message": ...}}`, or of the inner
    object alone (openai-python's `APIStatusError.body`); None when `body` is neither."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    return message if isinstance(message, str) else None


def error_message_in(text: str) -> str | None:
    """`error_message` of a response body's text, which may not be JSON at all."""
    try:
        return error_message(json.loads(text))
    except (ValueError, RecursionError):
        return None
