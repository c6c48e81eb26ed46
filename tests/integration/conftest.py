"""The integration layer: one real gateway (vLLM + the embedded model) for the whole session.

Tests that need their own server flags start another with `running_gateway`; keep those few,
since each start costs about 30 s of CPU.

With LORAGATE_MODEL set (scripts/gpu_check.sh sets Llama-3.1-8B-Instruct's directory), every
gateway serves that model instead, as `loragate serve` reads it, and the tests follow: the base
model's name below and the adapters' shape (lora_factory.py) are that model's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.gateway import Gateway, running_gateway

_MODEL = os.environ.get("LORAGATE_MODEL")
# Named as `loragate serve` names it: LORAGATE_SERVED_MODEL_NAME, else the directory's name.
BASE_MODEL = os.environ.get("LORAGATE_SERVED_MODEL_NAME") or (
    Path(_MODEL.rstrip("/")).name if _MODEL else "SmolLM2-135M-Instruct"
)


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
