"""The in-process limiter on a clock the test moves: windows, reservations, the parallel cap."""

from __future__ import annotations

import asyncio

import pytest

from loragate.tenants.errors import RateLimitedError
from loragate.tenants.keys import Limits
from loragate.tenants.limiter import InProcessLimiter, reset_text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> InProcessLimiter:
    return InProcessLimiter(clock=clock)


async def test_requests_per_minute_slide_with_the_window(
    limiter: InProcessLimiter, clock: Clock
) -> None:
    limits = Limits(rpm=3)
    remaining = []
    for _ in range(3):
        admitted = await limiter.admit("k", limits, 0)
        remaining.append(admitted.headers["x-ratelimit-remaining-requests"])
        admitted.settle(0)
        clock.now += 10
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", limits, 0)
    # The first request leaves the minute 60 s after it came, 30 s from now.
    assert refused.value.retry_after == pytest.approx(30)
    assert refused.value.rate_limit_headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.rate_limit_headers["x-ratelimit-reset-requests"] == "30s"
    assert "requests per minute (3)" in refused.value.message
    clock.now += 30
    (await limiter.admit("k", limits, 0)).settle(0)
    await limiter.admit("other", limits, 0)  # each subject has its own window


async def test_tokens_are_reserved_up_front_and_settled_with_what_was_used(
    limiter: InProcessLimiter, clock: Clock
) -> None:
    limits = Limits(tpm=100)
    first = await limiter.admit("k", limits, 60)
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", limits, 60)  # 60 reserved + 60 > 100
    assert refused.value.retry_after == pytest.approx(1)  # only a reservation stands in the way
    first.settle(10)  # it used 10: 50 reserved tokens come back
    clock.now += 5
    second = await limiter.admit("k", limits, 60)
    assert second.headers["x-ratelimit-remaining-tokens"] == "30"
    second.settle(80)
    clock.now += 10
    with pytest.raises(RateLimitedError) as spent:
        await limiter.admit("k", limits, 20)  # 90 spent in the minute
    # 10 leave at 60 s after the first settled (45 s from now): then 80 + 20 fits.
    assert spent.value.retry_after == pytest.approx(45)
    assert spent.value.rate_limit_headers["x-ratelimit-limit-tokens"] == "100"
    clock.now += 45
    await limiter.admit("k", limits, 20)


async def test_a_request_larger_than_the_budget_passes_once_nothing_else_counts(
    limiter: InProcessLimiter, clock: Clock
) -> None:
    limits = Limits(tpm=10)
    (await limiter.admit("k", limits, 50)).settle(50)
    with pytest.raises(RateLimitedError):
        await limiter.admit("k", limits, 50)
    clock.now += 60
    await limiter.admit("k", limits, 50)


async def test_over_the_parallel_cap_a_request_waits_and_beyond_its_queue_it_is_refused(
    limiter: InProcessLimiter,
) -> None:
    limits = Limits(max_parallel=1)
    first = await limiter.admit("k", limits, 0)
    second = asyncio.create_task(limiter.admit("k", limits, 0))
    await asyncio.sleep(0.01)
    assert not second.done()  # waiting for the slot
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", limits, 0)  # one waits already: no queue beyond the cap
    assert "requests in flight (1)" in refused.value.message
    first.settle(0)
    admitted = await asyncio.wait_for(second, 1)
    third = asyncio.create_task(limiter.admit("k", limits, 0))
    await asyncio.sleep(0.01)
    assert not third.done()
    admitted.settle(0)
    (await asyncio.wait_for(third, 1)).settle(0)


async def test_a_waiter_that_gives_up_leaves_the_queue(limiter: InProcessLimiter) -> None:
    limits = Limits(max_parallel=1)
    first = await limiter.admit("k", limits, 0)
    waiting = asyncio.create_task(limiter.admit("k", limits, 0))
    await asyncio.sleep(0.01)
    waiting.cancel()  # its client left
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queued = asyncio.create_task(limiter.admit("k", limits, 0))  # its place in the queue is free
    await asyncio.sleep(0.01)
    first.settle(0)
    (await asyncio.wait_for(queued, 1)).settle(0)


async def test_settling_twice_counts_once(limiter: InProcessLimiter) -> None:
    limits = Limits(max_parallel=1, tpm=100)
    admitted = await limiter.admit("k", limits, 10)
    admitted.settle(5)
    admitted.settle(5)
    again = await asyncio.wait_for(limiter.admit("k", limits, 0), 1)
    assert again.headers["x-ratelimit-remaining-tokens"] == "95"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.02, "20ms"), (0.0, "0ms"), (1.0, "1s"), (59.2, "1m0s"), (360, "6m0s")]
)
def test_reset_times_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert reset_text(seconds) == text
