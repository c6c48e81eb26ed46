"""The supervised engine over fake engines: death, restart, giving up, the watchdog, the bound
on what it takes in, and the interruption of a stopping server."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from loragate.engine import supervisor
from loragate.engine.fake import FakeEngine, Hold
from loragate.engine.protocol import (
    EngineDeadError,
    EngineOverloadedError,
    EngineUnavailableError,
)
from loragate.engine.supervisor import SupervisedEngine, Supervision
from loragate.engine.types import SamplingOptions

OPTIONS = SamplingOptions(max_tokens=16)
TWO_RESTARTS = Supervision(max_restarts=2)


class Starts:
    """The engine factory: a new FakeEngine per start, each kept; `fail` starts raise first."""

    def __init__(self, fail: int = 0, max_num_seqs: int = 64):
        self.engines: list[FakeEngine] = []
        self.fail = fail
        self.max_num_seqs = max_num_seqs

    def __call__(self) -> FakeEngine:
        if self.engines and self.fail:
            self.fail -= 1
            raise RuntimeError("out of memory")
        self.engines.append(FakeEngine(max_num_seqs=self.max_num_seqs))
        return self.engines[-1]


@pytest.fixture(autouse=True)
def fast_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "HEALTH_INTERVAL_S", 0.02)
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.001)


async def collect(engine: SupervisedEngine, request_id: str) -> str:
    text = ""
    async for update in engine.generate([1, 2], OPTIONS, request_id):
        text += "".join(choice.text for choice in update.choices)
    return text


async def until(check: object, timeout: float = 5.0) -> None:
    assert callable(check)
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


@asynccontextmanager
async def supervised(
    starts: Starts, supervision: Supervision = TWO_RESTARTS
) -> AsyncIterator[SupervisedEngine]:
    engine = await SupervisedEngine.started(starts, supervision)
    try:
        yield engine
    finally:
        await engine.shutdown()


def held_restarts(engine: SupervisedEngine) -> asyncio.Event:
    """A restart stays `recovering` (its state being restored) until the event is set."""
    gate = asyncio.Event()

    async def slow_reload() -> None:
        await gate.wait()

    engine.on_restart(slow_reload)
    return gate


async def test_a_death_ends_the_requests_in_flight_and_a_new_engine_takes_over() -> None:
    starts = Starts()
    async with supervised(starts) as engine:
        reloaded: list[str] = []

        async def reload() -> None:
            assert engine.state == "recovering"  # before requests reach the new engine
            reloaded.append("personas")

        engine.on_restart(reload)
        first = starts.engines[0]
        hold = Hold()
        first.enqueue(["Hel", hold, "lo"])
        held = asyncio.create_task(collect(engine, "held"))
        await hold.reached.wait()
        first.kill()
        with pytest.raises(EngineDeadError):
            await held
        await until(lambda: engine.state == "ok")
        assert len(starts.engines) == 2 and engine.restarts == 1 and reloaded == ["personas"]
        assert await collect(engine, "after") == "Hello world"
        assert starts.engines[1].requests  # served by the new engine


async def test_while_it_restarts_requests_and_health_say_retry_after() -> None:
    starts = Starts()
    async with supervised(starts) as engine:
        gate = held_restarts(engine)
        starts.engines[0].kill()
        await until(lambda: engine.state == "recovering")
        with pytest.raises(EngineUnavailableError) as refused:
            await collect(engine, "during")
        assert refused.value.retry_after >= 1
        with pytest.raises(EngineUnavailableError):
            await engine.check_health()
        gate.set()
        await until(lambda: engine.state == "ok")
        await engine.check_health()


async def test_the_dead_engine_is_freed_once_the_new_one_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts = Starts()
    async with supervised(starts) as engine:
        gate = held_restarts(engine)
        starts.engines[0].kill()
        dead = weakref.ref(starts.engines.pop())
        await until(lambda: engine.state == "recovering")  # found by the health check
        monkeypatch.setattr(supervisor, "HEALTH_INTERVAL_S", 3600.0)
        await asyncio.sleep(0.1)  # the watcher's next sleep is the long one
        gate.set()
        await until(lambda: engine.state == "ok")
        gc.collect()
        assert dead() is None


async def test_too_many_deaths_within_the_window_fail_for_good() -> None:
    starts = Starts()
    async with supervised(starts) as engine:
        for restarts in (1, 2):
            starts.engines[-1].kill()
            await until(lambda r=restarts: engine.restarts == r and engine.state == "ok")
        starts.engines[-1].kill()
        await asyncio.wait_for(engine.failed.wait(), 5)
        assert engine.state == "failed" and "3 times within 600 s" in engine.failure
        with pytest.raises(EngineDeadError, match="--max-engine-restarts 2"):
            await collect(engine, "late")


async def test_failed_starts_count_as_deaths() -> None:
    starts = Starts(fail=5)
    engine = await SupervisedEngine.started(starts, Supervision(max_restarts=3))
    starts.engines[0].kill()
    await asyncio.wait_for(engine.failed.wait(), 5)
    assert len(starts.engines) == 1 and starts.fail == 2  # three tries, then it gave up
    await engine.shutdown()


async def test_on_engine_death_exit_gives_up_at_the_first() -> None:
    starts = Starts()
    engine = await SupervisedEngine.started(starts, Supervision(on_death="exit"))
    await engine.check_health()
    starts.engines[0].kill()
    await asyncio.wait_for(engine.failed.wait(), 5)
    assert len(starts.engines) == 1 and "--on-engine-death exit" in engine.failure
    await engine.shutdown()


async def test_a_step_hung_past_the_watchdog_is_a_death() -> None:
    starts = Starts()
    engine = await SupervisedEngine.started(starts, Supervision(watchdog_s=0.1))
    hold = Hold()
    starts.engines[0].enqueue([hold])
    held = asyncio.create_task(collect(engine, "hung"))
    await hold.reached.wait()
    with pytest.raises(EngineDeadError):  # taken back from the hung engine
        await asyncio.wait_for(held, 5)
    await until(lambda: engine.restarts == 1 and engine.state == "ok")
    await engine.shutdown()


async def test_beyond_the_batch_and_its_waiting_room_requests_are_refused() -> None:
    starts = Starts(max_num_seqs=2)
    engine = await SupervisedEngine.started(starts, Supervision(max_waiting=1))
    assert engine.max_in_flight == 3
    holds = [Hold() for _ in range(3)]
    starts.engines[0].enqueue(*([hold] for hold in holds))
    tasks = [asyncio.create_task(collect(engine, f"r{i}")) for i in range(3)]
    await asyncio.gather(*(hold.reached.wait() for hold in holds))
    with pytest.raises(EngineOverloadedError, match="3 sequences") as refused:
        await collect(engine, "one too many")
    assert refused.value.retry_after == supervisor.OVERLOADED_RETRY_AFTER_S
    holds[0].released.set()
    await tasks[0]
    assert await collect(engine, "room again") == "Hello world"
    for hold in holds[1:]:
        hold.released.set()
    await asyncio.gather(*tasks)
    await engine.shutdown()


async def test_an_interrupt_ends_the_requests_in_flight_and_refuses_new_ones() -> None:
    starts = Starts()
    async with supervised(starts) as engine:
        hold = Hold()
        starts.engines[0].enqueue(["Hel", hold])
        held = asyncio.create_task(collect(engine, "held"))
        await hold.reached.wait()
        await engine.interrupt("The server is shutting down.")
        with pytest.raises(EngineUnavailableError, match="shutting down"):
            await held
        with pytest.raises(EngineUnavailableError, match="shutting down"):
            await collect(engine, "new")
        assert starts.engines[0].aborted == ["held"] and engine.state == "ok"


async def test_once_the_server_stops_a_death_is_final_without_exiting_1() -> None:
    starts = Starts()
    async with supervised(starts) as engine:
        engine.stop_restarting()
        starts.engines[0].kill()
        await until(lambda: engine.state == "failed")
        await asyncio.sleep(0.05)
        assert len(starts.engines) == 1 and not engine.failed.is_set()
