"""The tutorial's `get_completion(prompt)` against `POST /` on :6006, with an optional persona.

Needs `requests` (the `clients` extra), as the tutorial's own client does. The URL comes from
the argument, else LORAGATE_LEGACY_URL, else http://127.0.0.1:6006.
"""

from __future__ import annotations

import os
from typing import Any

import requests

from loragate.wire import error_message_in

DEFAULT_LEGACY_URL = "http://127.0.0.1:6006"


class LegacyRequestError(RuntimeError):
    """The gateway refused the request; `message` is the one from its OpenAI error envelope."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def get_completion(
    prompt: str,
    persona: str | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    history: list[dict[str, str]] | None = None,
    system: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    timeout: float = 600.0,
) -> str:
    """The reply to `prompt`, from the persona when one is named (else the base model)."""
    fields: dict[str, Any] = {
        "prompt": prompt,
        "persona": persona,
        "history": history,
        "system": system,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
    }
    headers = {"Content-Type": "application/json"}
    key = api_key or os.environ.get("LORAGATE_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    response = requests.post(
        url or os.environ.get("LORAGATE_LEGACY_URL", DEFAULT_LEGACY_URL),
        headers=headers,
        json={k: v for k, v in fields.items() if v is not None},
        timeout=timeout,
    )
    if not response.ok:
        message = error_message_in(response.text) or response.text or response.reason
        raise LegacyRequestError(response.status_code, message)
    return str(response.json()["response"])


def main() -> None:
    """The tutorial's own demo: `python -m loragate.clients.legacy`."""
    print(get_completion(prompt="你好"))


if __name__ == "__main__":
    main()
