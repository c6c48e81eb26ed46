"""The integration layer: one real gateway (vLLM + the embedded model) for the whole session.

Tests that need their own server flags start another with `running_gateway`; keep those few,
since each start costs about 30 s of CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.gateway import Gateway, running_gateway

BASE_MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of everything the session gateway may load adapters from."""
    root = tmp_path_factory.mktemp("adapters")
    (root / "personas").mkdir()
    return root


@pytest.fixture(scope="session")
def gateway(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("logs") / "gateway.log"
    args = [
        "--personas-dir", str(workspace / "personas"),
        "--adapter-root", str(workspace),
    ]  # fmt: skip
    with running_gateway(log, args) as gw:
        yield gw


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=300)
