"""The engine, kept alive: restarted in place when it dies, bounded in what it takes in.

`SupervisedEngine` is the engine protocol over whichever engine currently runs. It watches that
engine (its health, and a watchdog on its progress); when it dies, the requests in flight end
with EngineDeadError, new ones get EngineUnavailableError (a 503 with Retry-After) while a new
engine starts, and the listeners (the persona registry) are told, so that what the old engine
held is loaded again. After `max_engine_restarts` deaths within `engine_restart_window`, or at
the first with `on_engine_death = "exit"`, it gives up: `failed` is set and the server exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import gc
import logging
import math
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from loragate.engine.protocol import (
    ChatTokenizer,
    Engine,
    EngineDeadError,
    EngineOverloadedError,
    EngineUnavailableError,
    RequestAbortedError,
)
from loragate.engine.types import AdapterRef, GenerationUpdate, SamplingOptions
from loragate.settings import EngineSettings

logger = logging.getLogger(__name__)

EngineState = Literal["ok", "recovering", "failed"]
RestartListener = Callable[[], Awaitable[None]]

HEALTH_INTERVAL_S = 1.0
ABORT_TIMEOUT_S = 5.0
RESTART_BACKOFF_S = 1.0  # after a failed start, doubled at each
# Retry-After of a refusal because the queue is full: a place frees as soon as one request ends.
OVERLOADED_RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class Supervision:
    on_death: Literal["restart", "exit"] = "restart"
    max_restarts: int = 3
    window_s: float = 600.0
    watchdog_s: float = 120.0  # 0: off
    max_waiting: int | None = None  # None: max_num_seqs

    @classmethod
    def of(cls, settings: EngineSettings) -> Supervision:
        return cls(
            on_death=settings.on_engine_death,
            max_restarts=settings.max_engine_restarts,
            window_s=settings.engine_restart_window,
            watchdog_s=settings.engine_watchdog_timeout,
            max_waiting=settings.max_waiting_requests,
        )


class SupervisedEngine:
    """The engine protocol over a restartable engine. `start()` builds one (blocking: a restart
    runs it in a thread, so the server keeps answering while an engine starts)."""

    def __init__(
        self,
        start: Callable[[], Engine],
        supervision: Supervision,
        first: Engine,
        starter: ThreadPoolExecutor,
    ):
        self._start = start
        self._starter = starter
        self._supervision = supervision
        self._engine = first
        self._started_in_s = 30.0  # until one restart has been timed
        self.state: EngineState = "ok"
        self.failure = ""  # why, once failed
        self.failed = asyncio.Event()
        self.restarts = 0
        self._deaths: deque[float] = deque()
        self._listeners: list[RestartListener] = []
        self._active: dict[str, int] = {}  # request id -> its sequences
        self._taken = 0  # their sum
        self._interrupted: str | None = None
        self._last_progress = time.monotonic()
        self._recovery: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._restarting = True

    @classmethod
    async def started(
        cls, start: Callable[[], Engine], supervision: Supervision
    ) -> SupervisedEngine:
        started = time.monotonic()
        # Every engine is built in this thread, not in the event loop's, which must keep
        # answering during a restart. One long-lived thread: the engine core's death signal
        # (loragate.engine.tether) follows the thread that spawned it, so that thread must
        # outlive the engine; and a restarted engine reuses the malloc arena the dead one freed
        # (one built in a thread other than the first's took a new arena: +5 MiB per restart).
        starter = ThreadPoolExecutor(1, thread_name_prefix="loragate-engine-start")
        first = await asyncio.get_running_loop().run_in_executor(starter, start)
        engine = cls(start, supervision, first, starter)
        engine._started_in_s = time.monotonic() - started
        engine._watch = asyncio.create_task(engine._watch_health())
        return engine

    def on_restart(self, listener: RestartListener) -> None:
        """`listener()` runs once a new engine is up, before requests reach it."""
        self._listeners.append(listener)

    # -- The engine protocol, over the current engine ------------------------------------------

    @property
    def tokenizer(self) -> ChatTokenizer:
        return self._engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    @property
    def max_lora_rank(self) -> int:
        return self._engine.max_lora_rank

    @property
    def max_num_seqs(self) -> int:
        return self._engine.max_num_seqs

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    @property
    def hf_config(self) -> Mapping[str, Any]:
        return self._engine.hf_config

    @property
    def max_token_chars(self) -> int:
        return self._engine.max_token_chars

    @property
    def max_in_flight(self) -> int:
        """Sequences taken in at once: the engine's batch and its waiting room."""
        waiting = self._supervision.max_waiting
        return self.max_num_seqs + (self.max_num_seqs if waiting is None else waiting)

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[GenerationUpdate, None]:
        self._admit(options.n)
        if not self._taken:  # the watchdog counts from the first request in flight
            self._last_progress = time.monotonic()
        engine = self._engine
        self._active[request_id] = options.n
        self._taken += options.n
        try:
            # Closed with this generator (a client that leaves): its `finally` aborts the request.
            async with aclosing(
                engine.generate(prompt_token_ids, options, request_id, adapter)
            ) as updates:
                async for update in updates:
                    self._last_progress = time.monotonic()
                    yield update
        except RequestAbortedError as exc:
            if self._interrupted is not None:
                raise EngineUnavailableError(self._interrupted, self._retry_after()) from exc
            if engine is not self._engine or self.state != "ok":  # taken back from a hung one
                raise EngineDeadError("the engine stopped responding during the request") from exc
            raise
        except EngineDeadError:
            self._died(engine, "a request found the engine dead")
            raise
        finally:
            if self._active.pop(request_id, None) is not None:
                self._taken -= options.n

    def check_options(self, options: SamplingOptions) -> None:
        # Before any stream starts: while the engine restarts, or when its queue is full, a
        # request gets its 503 or 429 as a status, not as an error event after a 200.
        self._admit(options.n)
        self._engine.check_options(options)

    def generation_defaults(self) -> dict[str, float]:
        return self._engine.generation_defaults()

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self._refuse_unless_ok()
        await self._engine.add_adapter(adapter)

    async def remove_adapter(self, int_id: int) -> None:
        if self.state == "ok":  # a dead engine holds nothing any more
            await self._engine.remove_adapter(int_id)

    async def loaded_adapter_ids(self) -> set[int]:
        return set().union(*await self.adapter_ids_by_replica())

    async def adapter_ids_by_replica(self) -> list[set[int]]:
        if self.state != "ok":
            return [set()]
        return await self._engine.adapter_ids_by_replica()

    def num_unfinished_requests(self) -> int:
        return self._engine.num_unfinished_requests() if self.state == "ok" else 0

    async def check_health(self) -> None:
        self._refuse_unless_ok()
        try:
            await self._engine.check_health()
        except EngineDeadError:
            self._died(self._engine, "the health check found the engine dead")
            raise

    async def shutdown(self) -> None:
        self._restarting = False
        for task in (self._watch, self._recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._engine.shutdown()
        self._starter.shutdown(wait=False)

    def stop_restarting(self) -> None:
        """The server is stopping: a death from now on is final, and no reason to exit 1."""
        self._restarting = False

    # -- Interruption, for a server that stops ---------------------------------------------------

    async def interrupt(self, reason: str) -> None:
        """End every request in flight with EngineUnavailableError(reason), refuse new ones."""
        self._interrupted = reason
        await asyncio.gather(*(self._engine.abort(rid) for rid in list(self._active)))

    # -- Supervision ---------------------------------------------------------------------------

    def _admit(self, sequences: int) -> None:
        if self._interrupted is not None:
            raise EngineUnavailableError(self._interrupted, self._retry_after())
        self._refuse_unless_ok()
        taken = self._taken  # an int, not the dict: check_options runs in another thread
        if taken and taken + sequences > self.max_in_flight:
            raise EngineOverloadedError(
                f"The server is at capacity: {taken} sequences are running or waiting, of "
                f"{self.max_in_flight} (max_num_seqs {self.max_num_seqs} plus "
                "--max-waiting-requests). Retry later.",
                OVERLOADED_RETRY_AFTER_S,
            )

    def _refuse_unless_ok(self) -> None:
        if self.state == "recovering":
            raise EngineUnavailableError(
                "The engine is restarting after a failure; retry shortly.", self._retry_after()
            )
        if self.state == "failed":
            raise EngineDeadError(self.failure)

    def _retry_after(self) -> float:
        return max(1.0, math.ceil(self._started_in_s))

    def _died(self, engine: Engine, why: str) -> None:
        """Start recovering from `engine`'s death, once (later reports of it are the same)."""
        if engine is not self._engine or self.state != "ok":
            return
        logger.error("engine died (%s)", why)
        if not self._restarting:
            self.state, self.failure = "failed", f"The engine stopped ({why})."
            return
        self.state = "recovering"
        # A context of its own: not the log lines' request id of the request that found it dead.
        self._recovery = asyncio.create_task(self._recover(engine), context=contextvars.Context())

    async def _recover(self, dead: Engine) -> None:
        # A hung engine's streams would wait for ever: aborted, each ends (EngineDeadError).
        aborts = asyncio.gather(*(dead.abort(rid) for rid in list(self._active)))
        await _quietly(asyncio.wait_for(aborts, ABORT_TIMEOUT_S), "aborting the requests")
        await _quietly(dead.shutdown(), "shutting the dead engine down")
        failed_starts = 0
        while not self._give_up():
            started = time.monotonic()
            try:
                loop = asyncio.get_running_loop()
                engine = await loop.run_in_executor(self._starter, self._start)
            except Exception:
                logger.exception("the engine failed to start again")
                failed_starts += 1
                await asyncio.sleep(min(RESTART_BACKOFF_S * 2**failed_starts, 30.0))
                continue
            self._started_in_s = time.monotonic() - started
            self._engine, self._active, self._taken = engine, {}, 0
            self.restarts += 1
            for listener in self._listeners:
                await _quietly(listener(), "restoring state in the new engine")
            self.state = "ok"
            self._last_progress = time.monotonic()
            del dead
            release_memory()
            logger.info("engine restarted in %.1f s (restart %d)", self._started_in_s,
                        self.restarts)  # fmt: skip
            return

    def _give_up(self) -> bool:
        """Count one more death; True (and failed) when it is one too many."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - self._supervision.window_s:
            self._deaths.popleft()
        if self._supervision.on_death == "exit":
            why = "the engine died (--on-engine-death exit)"
        elif len(self._deaths) > self._supervision.max_restarts:
            why = (
                f"the engine died {len(self._deaths)} times within "
                f"{self._supervision.window_s:g} s (--max-engine-restarts "
                f"{self._supervision.max_restarts})"
            )
        else:
            return False
        logger.critical("giving up: %s", why)
        self.state, self.failure = "failed", f"The engine is dead: {why}."
        self.failed.set()
        return True

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            if self.state == "ok":
                await self._check_health(self._engine)

    async def _check_health(self, engine: Engine) -> None:
        # A frame of its own: a local of the watcher's loop would keep a dead engine alive
        # through its sleeps, until the next check after the restart.
        try:
            await engine.check_health()
        except EngineDeadError:
            self._died(engine, "the health check found it dead")
            return
        if self._hung():
            self._died(engine, f"no token for {self._supervision.watchdog_s:g} s with "
                               f"{len(self._active)} requests in flight")  # fmt: skip

    def _hung(self) -> bool:
        watchdog = self._supervision.watchdog_s
        stalled = time.monotonic() - self._last_progress
        return bool(watchdog and self._active and stalled > watchdog)


def release_memory() -> None:
    """Give the dead engine's memory back to the system: its objects (the tokenizer, the
    processors, vLLM's client) are freed only with their reference cycles, and glibc keeps
    freed heap pages for the process until asked to return them."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


async def _quietly(work: Awaitable[object], what: str) -> None:
    try:
        await work
    except Exception:
        logger.exception("%s failed", what)
