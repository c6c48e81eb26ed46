"""A scriptable engine for fast tests of the HTTP layer and for measuring the gateway's overhead.

It is never a stand-in for the model: it answers what it is told to answer, instantly.

    fake = FakeEngine()
    fake.enqueue(["Hel", "lo"])     # the next request streams "Hel", "lo", then stops
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from loragate.engine.protocol import EngineDeadError, EngineRequestError, RequestAbortedError
from loragate.engine.types import (
    AdapterRef,
    ChoiceDelta,
    GenerationUpdate,
    SamplingOptions,
    TokenLogprob,
)


class CharTokenizer:
    """One token per character; a readable chat template."""

    eos_token_id: int | None = 0

    def apply_chat_template(self, conversation: Any, /, **kwargs: Any) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in conversation)
        return text + ("<assistant>" if kwargs.get("add_generation_prompt") else "")

    def encode(self, text: str, /, **_: Any) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], /, **_: Any) -> str:
        return "".join(chr(t) for t in token_ids)


class Hold:
    """A script step that waits until released: models a slow engine."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.released = asyncio.Event()


class Die:
    """A script step that kills the engine."""


Step = str | Hold | Die


@dataclass
class FakeEngine:
    max_model_len: int = 4096
    max_lora_rank: int = 16
    max_num_seqs: int = 64
    default_reply: tuple[str, ...] = ("Hello", " world")
    script: deque[list[Step]] = field(default_factory=deque)
    requests: list[tuple[list[int], SamplingOptions, AdapterRef | None]] = field(
        default_factory=list
    )
    running: set[str] = field(default_factory=set)
    aborted: list[str] = field(default_factory=list)
    # A held request's way out: abort() or shutdown() sets its event (see Hold).
    _ends: dict[str, tuple[asyncio.Event, type[EngineDeadError]]] = field(default_factory=dict)
    adapters: dict[int, AdapterRef] = field(default_factory=dict)
    dead: bool = False
    # A tiny Llama's dimensions, for adapter shape checks.
    hf_config: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "num_hidden_layers": 1,
            "head_dim": 4,
        }
    )

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer()

    @property
    def vocab_size(self) -> int:
        return 0x110000  # one token per Unicode code point

    @property
    def max_token_chars(self) -> int:
        return 1

    def enqueue(self, *replies: Sequence[Step]) -> None:
        for reply in replies:
            self.script.append(list(reply))

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[GenerationUpdate, None]:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        self.requests.append((prompt_token_ids, options, adapter))
        steps: list[Step] = self.script.popleft() if self.script else list(self.default_reply)
        self.running.add(request_id)
        ended = asyncio.Event()
        self._ends[request_id] = (ended, RequestAbortedError)
        try:
            async for update in self._play(prompt_token_ids, options, steps, ended):
                yield update
                if ended.is_set():
                    break
            if ended.is_set():
                raise self._ends[request_id][1](f"fake engine ended request {request_id}")
            self.running.discard(request_id)
        finally:
            self._ends.pop(request_id, None)
            if request_id in self.running:
                self.running.discard(request_id)
                self.aborted.append(request_id)

    async def _play(
        self, prompt: list[int], options: SamplingOptions, steps: list[Step], ended: asyncio.Event
    ) -> AsyncGenerator[GenerationUpdate, None]:
        emitted = 0
        for step in steps:
            if isinstance(step, Hold):
                step.reached.set()
                await _first_of(step.released, ended)
                if ended.is_set():
                    return
                continue
            if isinstance(step, Die):
                self.kill()
                raise EngineDeadError("fake engine died")
            emitted += 1
            done = emitted >= options.max_tokens
            yield self._update(prompt, options, step, "length" if done else None)
            if done:
                return
        yield self._update(prompt, options, "", "stop", finished=True)

    def _update(
        self,
        prompt: list[int],
        options: SamplingOptions,
        text: str,
        finish: Any,
        finished: bool = False,
    ) -> GenerationUpdate:
        token_ids = [1] if text else []
        logprobs = None
        if options.logprobs is not None:
            top = tuple((text, -0.5) for _ in range(options.logprobs))
            logprobs = [TokenLogprob(text, 1, -0.5, top)] if text else []
        choices = [
            ChoiceDelta(
                index=i, text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish
            )
            for i in range(options.n)
        ]
        # No queue: a fake request runs the moment it arrives.
        return GenerationUpdate(
            prompt, choices, finished=finished or finish is not None, queue_time_s=0.0
        )

    async def abort(self, request_id: str) -> None:
        if request_id in self._ends:
            self._ends[request_id][0].set()
            return  # its stream ends, and records the abort
        self.running.discard(request_id)
        self.aborted.append(request_id)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self.adapters[adapter.int_id] = adapter

    async def remove_adapter(self, int_id: int) -> None:
        self.adapters.pop(int_id, None)

    async def loaded_adapter_ids(self) -> set[int]:
        return set(self.adapters)

    async def adapter_ids_by_replica(self) -> list[set[int]]:
        return [set(self.adapters)]

    def num_unfinished_requests(self) -> int:
        return len(self.running)

    def check_options(self, options: SamplingOptions) -> None:
        if options.n > 1 and options.temperature == 0:
            raise EngineRequestError("n must be 1 when using greedy sampling", "n")

    def generation_defaults(self) -> dict[str, float]:
        return {}

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    async def shutdown(self) -> None:
        self.kill()

    def kill(self) -> None:
        """Dead from now on; every held request ends with EngineDeadError, as vLLM's streams
        do when its engine core dies."""
        self.dead = True
        for request_id, (ended, _) in list(self._ends.items()):
            self._ends[request_id] = (ended, EngineDeadError)
            ended.set()


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
