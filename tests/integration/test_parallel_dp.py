"""Data parallelism on the CPU: two engine replicas of a Llama-3.1-shaped model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gateway import Gateway
from tests.integration.parallel_support import (
    MODEL,
    PERSONA,
    adapter_root,
    check_serves_base_and_persona,
    greedy_together,
    serve_tiny,
    tiny_model,
)
from tests.integration.persona_support import PersonaApi

pytestmark = pytest.mark.integration
__all__ = ["adapter_root", "tiny_model"]  # fixtures


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, adapter_root: Path
) -> Iterator[Gateway]:
    yield from serve_tiny(tmp_path_factory, tiny_model, adapter_root, "--data-parallel-size", "2")


def test_a_persona_loaded_at_run_time_serves_on_both_replicas(
    gateway: Gateway, adapter_root: Path
) -> None:
    base, persona = check_serves_base_and_persona(gateway, adapter_root)
    with PersonaApi(gateway) as api:
        status = api.http.get("/v1/engine/status").json()
        adapter_id = api.get(PERSONA).json()["adapter_id"]
    # vLLM's data-parallel client sent the load to every replica.
    assert [r["loaded_adapter_ids"] for r in status["replicas"]] == [[adapter_id]] * 2
    # Concurrent requests are spread over both replicas: each answers as the persona.
    together = asyncio.run(greedy_together(gateway, [PERSONA] * 4 + [MODEL] * 4))
    assert together == [persona] * 4 + [base] * 4
