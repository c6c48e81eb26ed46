"""Personas for the client and browser tests: a real peft adapter in a bundle, PUT on a gateway."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from loragate.adapters.manifest import PersonaManifest, SamplingDefaultsSpec, write_manifest
from tests.integration.gateway import Gateway
from tests.integration.lora_factory import make_lora_adapter


def make_bundle(root: Path, name: str, *, seed: int, description: str, **manifest: Any) -> Path:
    """A persona bundle whose adapter nudges the base model's text (std 0.02: still readable)."""
    bundle = root / name
    make_lora_adapter(bundle / "adapter", seed=seed, std=0.02)
    defaults = SamplingDefaultsSpec(**manifest.pop("defaults", {}))
    write_manifest(
        bundle, PersonaManifest(name=name, description=description, defaults=defaults, **manifest)
    )
    return bundle


def put_persona(gateway: Gateway, name: str, bundle: Path) -> dict[str, Any]:
    response = httpx.put(
        f"{gateway.base_url}/personas/{name}", json={"path": str(bundle)}, timeout=300
    )
    assert response.status_code in (200, 201), response.text
    info: dict[str, Any] = response.json()
    return info


def delete_persona(gateway: Gateway, name: str) -> None:
    response = httpx.delete(f"{gateway.base_url}/personas/{name}", timeout=300)
    assert response.status_code in (200, 404), response.text


def persona_info(gateway: Gateway, name: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway.base_url}/personas/{name}", timeout=30)
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


@contextmanager
def registered_persona(gateway: Gateway, root: Path, name: str, **bundle: Any) -> Iterator[str]:
    """A persona on the gateway for the duration; removed afterwards."""
    put_persona(gateway, name, make_bundle(root, name, **bundle))
    try:
        yield name
    finally:
        delete_persona(gateway, name)
