"""The server's life: serving, then draining on SIGTERM, then stopped; and the gate every request
passes, which counts what is in flight, refuses new work while draining, and sets its deadline.

Draining: new requests get 503 with Retry-After (and /health a 503, so that a load balancer stops
sending any), the requests in flight have `drain_timeout` seconds to finish, then the rest are
ended with an error (an error event and [DONE] in a stream), and the server stops, exit code 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from loragate.server.errors import ServerStoppingError, anthropic_envelope
from loragate.server.limits import send_error

logger = logging.getLogger(__name__)

# The routes a load balancer or a monitor polls: never refused, never counted as work.
PROBES = frozenset({"/health", "/metrics"})
ANTHROPIC_ROUTES = frozenset({"/v1/messages"})
STOPPING = "The server is shutting down; send the request to another replica or retry later."
# Left to the requests that were ended, to send their error before the server closes them.
ENDING_GRACE_S = 5.0

_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)


def request_deadline() -> float | None:
    """When the current request must be done (loop.time()), under --request-timeout."""
    return _deadline.get()


class Lifecycle:
    def __init__(self, drain_timeout: float, request_timeout: float | None = None):
        self.drain_timeout = drain_timeout
        self.request_timeout = request_timeout
        self.draining = False
        self.exit_code = 0
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop: Callable[[], None] = lambda: None
        self._interrupt: Callable[[str], Awaitable[None]] | None = None
        self._on_drain: list[Callable[[], None]] = []

    def serve_with(self, stop: Callable[[], None]) -> None:
        """`stop()` ends the server that runs the app (set by that server)."""
        self._stop = stop

    def interrupt_with(self, interrupt: Callable[[str], Awaitable[None]]) -> None:
        """`interrupt(reason)` ends the engine requests in flight (set by the lifespan)."""
        self._interrupt = interrupt

    def on_drain(self, hook: Callable[[], None]) -> None:
        """`hook()` runs when the drain starts (the engine stops restarting itself)."""
        self._on_drain.append(hook)

    def exit(self, code: int) -> None:
        """Stop the server now, the process to exit with `code` (the engine failed for good)."""
        self.exit_code = code
        self._stop()

    async def drain(self) -> None:
        """Refuse new requests, give the ones in flight `drain_timeout` s, end the rest, stop."""
        if self.draining:
            return
        self.draining = True
        for hook in self._on_drain:
            hook()
        started = time.monotonic()
        logger.info("draining: %d request(s) in flight, %g s to finish",
                    self.in_flight, self.drain_timeout)  # fmt: skip
        if not await self._idle_within(self.drain_timeout) and self._interrupt is not None:
            logger.warning("drain timeout: ending %d request(s) in flight", self.in_flight)
            await self._interrupt(STOPPING)
            await self._idle_within(ENDING_GRACE_S)
        logger.info("drained in %.1f s; stopping", time.monotonic() - started)
        self._stop()

    async def _idle_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()


def lifecycle_of(scope: Scope) -> Lifecycle:
    lifecycle = scope["app"].state.lifecycle
    assert isinstance(lifecycle, Lifecycle)
    return lifecycle


class TrafficGate:
    """Every request but the probes: counted while in flight, refused once draining, and given
    its deadline."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle):
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        lifecycle = self.lifecycle
        if lifecycle.draining:
            await _refuse(scope, send)
            return
        token = None
        if lifecycle.request_timeout is not None:
            deadline = asyncio.get_running_loop().time() + lifecycle.request_timeout
            token = _deadline.set(deadline)
        lifecycle.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            lifecycle.leave()
            if token is not None:
                _deadline.reset(token)


async def _refuse(scope: Scope, send: Send) -> None:
    error = ServerStoppingError(STOPPING)
    body = anthropic_envelope(error) if scope["path"] in ANTHROPIC_ROUTES else error.envelope()
    await send_error(send, error.status, body, error.headers())
