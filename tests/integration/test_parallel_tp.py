"""Tensor parallelism on the CPU: two workers split a Llama-3.1-shaped model."""

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

pytestmark = pytest.mark.integration
__all__ = ["adapter_root", "tiny_model"]  # fixtures


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, adapter_root: Path
) -> Iterator[Gateway]:
    yield from serve_tiny(tmp_path_factory, tiny_model, adapter_root, "--tensor-parallel-size", "2")


def test_two_workers_serve_the_base_model_and_a_persona(
    gateway: Gateway, adapter_root: Path
) -> None:
    base, persona = check_serves_base_and_persona(gateway, adapter_root)
    mixed = asyncio.run(greedy_together(gateway, [MODEL, PERSONA] * 3))
    assert mixed == [base, persona] * 3  # one batch, each row its own adapter (or none)
