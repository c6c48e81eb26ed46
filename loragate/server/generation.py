"""Running one prepared request through the engine: whole, or as a stream of updates."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from openai.types.completion_usage import CompletionUsage

from loragate.engine.protocol import Engine
from loragate.engine.types import (
    AdapterRef,
    FinishReason,
    GenerationUpdate,
    SamplingOptions,
    TokenLogprob,
)
from loragate.server.errors import RequestTimeoutError, as_gateway_error
from loragate.server.lifecycle import request_deadline
from loragate.server.request_record import RequestRecord, current_record

logger = logging.getLogger(__name__)


def usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@dataclass(frozen=True)
class UsageMode:
    """`stream_options`: usage in a last chunk, and (vLLM's) usage so far on every chunk."""

    include: bool = False
    continuous: bool = False


NO_USAGE = UsageMode()


@dataclass(frozen=True)
class Prepared:
    """A request ready for the engine."""

    prompt_token_ids: list[int]
    options: SamplingOptions
    adapter: AdapterRef | None


def prepare(
    engine: Engine,
    prompt_token_ids: list[int],
    options: SamplingOptions,
    adapter: AdapterRef | None,
) -> Prepared:
    """Check the options with the engine now, so a refusal is a 400 before any stream starts."""
    engine.check_options(options)
    return Prepared(prompt_token_ids, options, adapter)


@dataclass
class ChoiceResult:
    text: str = ""
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None


@dataclass
class GenerationResult:
    prompt_tokens: int
    choices: list[ChoiceResult]
    prompt_logprobs: list[TokenLogprob | None] | None = None
    completion_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.completion_tokens = sum(c.completion_tokens for c in self.choices)


async def stream_updates(
    engine: Engine, prepared: Prepared, request_id: str
) -> AsyncIterator[GenerationUpdate]:
    """The engine's updates; the engine request is freed however the caller stops reading, or
    when the request's deadline (--request-timeout) passes. Counted in the request's record."""
    record = current_record()
    # Closed with this generator, at once: its `finally` aborts the engine request.
    async with aclosing(_timed_updates(engine, prepared, request_id)) as updates:
        if record is None:
            async for update in updates:
                yield update
            return
        record.prompt_tokens += len(prepared.prompt_token_ids)
        record.engine_started()
        try:
            async for update in updates:
                record.tokens_arrived(_new_tokens(update), update.queue_time_s)
                yield update
        except Exception as exc:
            _note_failure(record, exc)
            raise


def _new_tokens(update: GenerationUpdate) -> int:
    return sum(len(choice.token_ids) for choice in update.choices)


def _note_failure(record: RequestRecord, exc: Exception) -> None:
    error = as_gateway_error(exc)
    record.engine_error_status = 500 if error is None else error.status


async def _timed_updates(
    engine: Engine, prepared: Prepared, request_id: str
) -> AsyncGenerator[GenerationUpdate, None]:
    deadline = request_deadline()
    async with aclosing(
        engine.generate(prepared.prompt_token_ids, prepared.options, request_id, prepared.adapter)
    ) as updates:
        if deadline is None:
            async for update in updates:
                yield update
            return
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # around the wait only, not the yield
                    update = await anext(updates)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestTimeoutError(
                    "The request took longer than the server's --request-timeout."
                ) from None
            yield update


async def generate_all(
    engine: Engine,
    prepared: Prepared,
    request_id: str,
    done: Callable[[list[ChoiceResult]], bool] | None = None,
) -> GenerationResult:
    """The whole output; `done` may end it early (the engine request is then aborted)."""
    choices = [ChoiceResult() for _ in range(prepared.options.n)]
    want_logprobs = prepared.options.logprobs is not None
    prompt_tokens = len(prepared.prompt_token_ids)
    prompt_logprobs = None
    async for update in stream_updates(engine, prepared, request_id):
        if update.prompt_logprobs is not None:
            prompt_logprobs = update.prompt_logprobs
        for delta in update.choices:
            choice = choices[delta.index]
            choice.text += delta.text
            choice.completion_tokens += len(delta.token_ids)
            if want_logprobs:
                choice.logprobs = (choice.logprobs or []) + (delta.logprobs or [])
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason
                choice.stop_sequence = delta.stop_sequence
        if done is not None and done(choices):
            break
    return GenerationResult(prompt_tokens, choices, prompt_logprobs)


async def merge(
    streams: list[AsyncIterator[tuple[int, GenerationUpdate]]],
) -> AsyncIterator[tuple[int, GenerationUpdate]]:
    """Interleave several update streams as their items arrive (multi-prompt completions)."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue[tuple[int, GenerationUpdate] | BaseException | None] = asyncio.Queue()

    async def pump(stream: AsyncIterator[tuple[int, GenerationUpdate]]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(None)
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            got = await queue.get()
            if got is None:
                remaining -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
