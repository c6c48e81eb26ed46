"""Persona isolation on the real engine (issue 7): a request gets exactly the adapter it asked for.

vLLM 0.32's CPU LoRA ops apply the adapter in the *last* slot to base-model tokens that share a
batch with a persona; the CPU LoRA patch (a vLLM plugin, loaded in the engine's processes)
fixes that. The engine here has two adapter slots and both adapters loaded, so the last slot is
always occupied, as it is in a busy gateway. Without the plugin (`VLLM_PLUGINS=` naming other
plugins only) these tests fail.

The adapters have B drawn with std 1.0 on all seven projections: their replies are gibberish,
unmistakable beside the base model's. Each reply in a concurrent batch is compared with the same
request run alone, on its first tokens: greedy decoding drifts slightly with batch shape late
in a reply, never in the first few tokens.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
import pytest_asyncio

from loragate.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from loragate.engine.types import AdapterRef, SamplingOptions
from loragate.engine.vllm_engine import VllmEngine
from loragate.prompting import render_prompt_ids
from loragate.settings import EngineSettings
from tests.integration.lora_factory import make_lora_adapter

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    # The engine is built in this process; importing vLLM imports torch's inductor, which warns.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

COMPARED_TOKENS = 8
PROMPTS = (
    "Write one sentence about the sea.",
    "Name three colours.",
    "What is the capital of France?",
    "Give me one tip for sleeping well.",
)
GREEDY = SamplingOptions(max_tokens=COMPARED_TOKENS, temperature=0.0)


@dataclass(frozen=True)
class Adapters:
    a: AdapterRef
    b: AdapterRef


@dataclass(frozen=True)
class Request:
    prompt: str
    adapter: AdapterRef | None

    @property
    def target(self) -> str:
        return "base model" if self.adapter is None else self.adapter.name


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    root = tmp_path_factory.mktemp("isolation")
    a = make_lora_adapter(root / "a", seed=1, std=1.0)
    b = make_lora_adapter(root / "b", seed=2, std=1.0)
    return Adapters(AdapterRef("gibberish-a", 1, str(a)), AdapterRef("gibberish-b", 2, str(b)))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(adapters: Adapters) -> AsyncIterator[VllmEngine]:
    settings = EngineSettings(
        # In bfloat16 a batch's shape can flip a near-tie within a few greedy tokens (it did on a
        # CPU without AVX-512 BF16): float32 leaves the adapter as the only difference.
        dtype="float32",
        max_loras=2,
        kv_cache_memory_fraction=float(os.environ.get("LORAGATE_TEST_KV_FRACTION", "0.2")),
    )
    engine = VllmEngine.start(settings, str(ensure_default_model()), DEFAULT_MODEL_NAME)
    try:
        # Each add takes the first free slot: B slot 0, A slot 1, the slot the bug leaks.
        await engine.add_adapter(adapters.b)
        await engine.add_adapter(adapters.a)
        yield engine
    finally:
        await engine.shutdown()


async def _reply(engine: VllmEngine, request: Request) -> list[int]:
    ids = render_prompt_ids(engine.tokenizer, [{"role": "user", "content": request.prompt}])
    tokens: list[int] = []
    async for update in engine.generate(ids, GREEDY, uuid.uuid4().hex, request.adapter):
        tokens.extend(update.choices[0].token_ids)
    return tokens[:COMPARED_TOKENS]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def solo(engine: VllmEngine, adapters: Adapters) -> dict[Request, list[int]]:
    """Every (prompt, target) run alone: the reply each request must get in any batch."""
    replies: dict[Request, list[int]] = {}
    for prompt in PROMPTS:
        for adapter in (None, adapters.a, adapters.b):
            request = Request(prompt, adapter)
            replies[request] = await _reply(engine, request)
        base, a, b = (replies[Request(prompt, t)] for t in (None, adapters.a, adapters.b))
        # Otherwise a leaked adapter would go unnoticed and the tests could not fail.
        assert len({tuple(base), tuple(a), tuple(b)}) == 3, f"adapters indistinct on {prompt!r}"
    return replies


async def _check_batch(
    engine: VllmEngine, solo: dict[Request, list[int]], batch: Sequence[Request]
) -> None:
    replies = await asyncio.gather(*(_reply(engine, request) for request in batch))
    wrong = [
        f"{request.target} on {request.prompt!r} got the reply of "
        f"{_whose(solo, request.prompt, got)}: {got} against {solo[request]}"
        for request, got in zip(batch, replies, strict=True)
        if got != solo[request]
    ]
    assert not wrong, f"{len(wrong)} of {len(batch)} requests:\n" + "\n".join(wrong)


def _whose(solo: dict[Request, list[int]], prompt: str, reply: list[int]) -> str:
    owners = [r.target for r, tokens in solo.items() if r.prompt == prompt and tokens == reply]
    return " / ".join(owners) or "nobody (a mixture)"


async def test_base_requests_batched_beside_an_adapter_get_no_adapter(
    engine: VllmEngine, solo: dict[Request, list[int]], adapters: Adapters
) -> None:
    batch = [Request(p, t) for p in PROMPTS for t in (None, adapters.a)]
    await _check_batch(engine, solo, batch)


async def test_two_adapters_and_the_base_model_in_one_batch_each_get_their_own(
    engine: VllmEngine, solo: dict[Request, list[int]], adapters: Adapters
) -> None:
    batch = [Request(p, t) for p in PROMPTS for t in (adapters.a, None, adapters.b)]
    await _check_batch(engine, solo, batch)
