"""Rate limits per key: requests and tokens per minute over a sliding minute, and requests in
flight. Behind an interface, so that a shared store (Redis) can hold them across processes;
`InProcessLimiter` holds them in this one, for both of its ports.

A request reserves its `max_tokens` up front; when it ends, the reservation is settled with the
tokens the engine really counted (prompt plus completion). A request over the parallel cap waits
for a slot, behind at most as many others as the cap; beyond that it is refused like the rest.
Every admission carries OpenAI's x-ratelimit-* headers, refusals included.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from loragate.tenants.errors import RateLimitedError
from loragate.tenants.keys import Limits

WINDOW_S = 60.0


class Admission(Protocol):
    headers: dict[str, str]  # x-ratelimit-*, for the response

    def settle(self, tokens: int) -> None:
        """The request ended having used `tokens`: release its slot, replace its reservation."""


class Limiter(Protocol):
    async def admit(self, subject: str, limits: Limits, reserve_tokens: int) -> Admission:
        """Admit one request of `subject` (a key's name, or a persona's), or RateLimitedError."""


def reset_text(seconds: float) -> str:
    """OpenAI's form of x-ratelimit-reset-*: "20ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


@dataclass
class _Spend:
    at: float
    tokens: int


@dataclass
class _Subject:
    """One key's (or persona's) last minute, and its requests in flight."""

    requests: deque[float] = field(default_factory=deque)
    spent: deque[_Spend] = field(default_factory=deque)
    spent_total: int = 0  # the sum over `spent`, kept: a busy key's minute holds thousands
    reserved: int = 0  # tokens of requests in flight, not yet settled
    running: int = 0
    waiting: int = 0
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)

    def forget_before(self, moment: float) -> None:
        while self.requests and self.requests[0] <= moment:
            self.requests.popleft()
        while self.spent and self.spent[0].at <= moment:
            self.spent_total -= self.spent.popleft().tokens

    def spend(self, at: float, tokens: int) -> None:
        self.spent.append(_Spend(at, tokens))
        self.spent_total += tokens

    def tokens_used(self) -> int:
        return self.reserved + self.spent_total


@dataclass
class _Admitted:
    subject: _Subject
    reserved: int
    clock: Callable[[], float]
    headers: dict[str, str]
    settled: bool = False

    def settle(self, tokens: int) -> None:
        if self.settled:
            return
        self.settled = True
        self.subject.reserved -= self.reserved
        self.subject.running -= 1
        if tokens > 0:
            self.subject.spend(self.clock(), tokens)
        self.subject.slot_freed.set()


class InProcessLimiter:
    """For one event loop (the gateway's, shared by its two ports)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._subjects: dict[str, _Subject] = {}

    async def admit(self, subject: str, limits: Limits, reserve_tokens: int) -> Admission:
        state = self._subjects.setdefault(subject, _Subject())
        now = self._clock()
        state.forget_before(now - WINDOW_S)
        self._check_rate(subject, state, limits, reserve_tokens, now)
        await self._wait_for_slot(subject, state, limits)
        state.requests.append(self._clock())
        state.reserved += reserve_tokens
        state.running += 1
        headers = self._headers(state, limits, self._clock())
        return _Admitted(state, reserve_tokens, self._clock, headers)

    def _check_rate(
        self, subject: str, state: _Subject, limits: Limits, reserve: int, now: float
    ) -> None:
        if limits.rpm is not None and len(state.requests) >= limits.rpm:
            wait = state.requests[0] + WINDOW_S - now
            self._refuse(f"requests per minute ({limits.rpm})", subject, state, limits, wait)
        if limits.tpm is not None:
            used = state.tokens_used()
            # A request alone may exceed the whole budget: it is admitted once nothing else counts.
            if used > 0 and used + reserve > limits.tpm:
                wait = _until_fits(state, limits.tpm - reserve, now)
                self._refuse(f"tokens per minute ({limits.tpm})", subject, state, limits, wait)

    async def _wait_for_slot(self, subject: str, state: _Subject, limits: Limits) -> None:
        cap = limits.max_parallel
        if cap is None or state.running < cap:
            return
        if state.waiting >= cap:
            self._refuse(f"requests in flight ({cap})", subject, state, limits, 1.0)
        state.waiting += 1
        try:
            while state.running >= cap:
                state.slot_freed.clear()
                await state.slot_freed.wait()
        finally:
            state.waiting -= 1

    def _refuse(
        self, limit: str, subject: str, state: _Subject, limits: Limits, wait: float
    ) -> None:
        wait = max(wait, 0.001)
        headers = self._headers(state, limits, self._clock())
        raise RateLimitedError(
            f"Rate limit reached for {subject} on {limit}. Retry after {math.ceil(wait)} s.",
            retry_after=wait,
            headers=headers,
        )

    def _headers(self, state: _Subject, limits: Limits, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        if limits.rpm is not None:
            oldest = state.requests[0] if state.requests else now
            headers |= {
                "x-ratelimit-limit-requests": str(limits.rpm),
                "x-ratelimit-remaining-requests": str(max(0, limits.rpm - len(state.requests))),
                "x-ratelimit-reset-requests": reset_text(oldest + WINDOW_S - now),
            }
        if limits.tpm is not None:
            oldest = state.spent[0].at if state.spent else now
            headers |= {
                "x-ratelimit-limit-tokens": str(limits.tpm),
                "x-ratelimit-remaining-tokens": str(max(0, limits.tpm - state.tokens_used())),
                "x-ratelimit-reset-tokens": reset_text(oldest + WINDOW_S - now),
            }
        return headers


def _until_fits(state: _Subject, budget: int, now: float) -> float:
    """Seconds until the minute's tokens leave room for `budget`: spends leave the window oldest
    first; the reservations of requests in flight only when they end (then: retry in 1 s)."""
    used = state.tokens_used()
    for spend in state.spent:
        used -= spend.tokens
        if used <= budget or used == 0:
            return spend.at + WINDOW_S - now
    return 1.0
