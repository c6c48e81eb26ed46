"""Several devices, proven on the CPU: what the tensor- and data-parallel tests share.

The model is tests/llama31.py's tiny one: Llama-3.1-8B-Instruct's vocabulary, tokenizer, rope and
prompt format in two small layers of random weights (4 attention heads, 2 KV heads, so that two
tensor-parallel workers split both). A persona made for it is loaded at run time. loragate binds
each CPU worker to its own core by itself (vLLM's default binding needs a NUMA node per worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests import llama31
from tests.integration.gateway import Gateway, running_gateway
from tests.integration.lora_factory import make_lora_adapter
from tests.integration.persona_support import PersonaApi

MODEL = "llama-3.1-tiny"
PERSONA = "tiny-persona"
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama31.write_model_dir(tmp_path_factory.mktemp("models") / MODEL, tiny=True)


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("tiny-adapters")
    make_lora_adapter(root / PERSONA, seed=7, std=0.5, base=tiny_model)
    return root


def serve_tiny(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, root: Path, *flags: str
) -> Iterator[Gateway]:
    """The tiny model served with `flags`, adapters allowed from `root`."""
    log = tmp_path_factory.mktemp("logs") / f"parallel{'-'.join(flags)}.log"
    args = ["--model", str(tiny_model), "--served-model-name", MODEL, "--adapter-root", str(root)]
    with running_gateway(log, [*args, *flags]) as gateway:
        yield gateway


def greedy(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        temperature=0,
        max_tokens=8,
    )
    return reply.choices[0].message.content or ""


async def greedy_together(gateway: Gateway, models: list[str]) -> list[str]:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="x", timeout=300) as client:

        async def one(model: str) -> str:
            reply = await client.chat.completions.create(
                model=model,
                messages=QUESTION,
                temperature=0,
                max_tokens=8,
            )
            return reply.choices[0].message.content or ""

        return list(await asyncio.gather(*(one(model) for model in models)))


def check_serves_base_and_persona(gateway: Gateway, root: Path) -> tuple[str, str]:
    """The base model answers; the persona, loaded now, answers otherwise; both repeatably."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=300)
    cards = {card.id: card for card in client.models.list()}
    assert cards[MODEL].max_model_len == 131072  # type: ignore[attr-defined]  # the model's own
    base = greedy(client, MODEL)
    with PersonaApi(gateway) as api:
        api.put_ok(PERSONA, root / PERSONA)
    persona = greedy(client, PERSONA)
    assert base and persona and persona != base
    assert (greedy(client, MODEL), greedy(client, PERSONA)) == (base, persona)
    return base, persona
