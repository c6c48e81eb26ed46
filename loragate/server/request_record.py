"""What one HTTP request did, gathered while it runs and read once it ends: by the metrics, the
access log and the trace. The telemetry middleware opens it; the lease names the model, the
generation loop adds tokens and timings, the streaming layer notes a departed client."""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "client_error", "server_error", "aborted"]
# The persona label of a request whose model was not found: label values stay bounded.
UNKNOWN_MODEL = "unknown"


@dataclass
class RequestRecord:
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    started_ns: int = field(default_factory=time.time_ns)  # the same moment, on the wall clock
    route: str | None = None  # the matched route's template; None when nothing matched
    status: int | None = None
    body_bytes: int = 0
    model: str | None = None  # the base model's name, a persona's, or UNKNOWN_MODEL
    version: str = ""  # the persona's version ("" for the base model)
    streamed: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_started_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    queue_time_s: float | None = None
    inter_token_s: list[float] = field(default_factory=list)
    engine_error_status: int | None = None  # an error after the response started (a stream's)
    disconnected: bool = False
    finished_at: float | None = None
    key_name: str | None = None  # the API key's name, once authenticated (never its secret)
    # Sent with the response's head: the x-ratelimit-* of the key's limits.
    response_headers: dict[str, str] = field(default_factory=dict)

    def finish(self) -> None:
        self.finished_at = time.perf_counter()

    def elapsed_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        return end - self.started

    def served(self, model: str, version: str | None) -> None:
        self.model, self.version = model, version or ""

    def engine_started(self) -> None:
        if self.engine_started_at is None:
            self.engine_started_at = time.perf_counter()

    def wall_ns(self, moment: float | None) -> int:
        """A perf_counter() moment of this request on the wall clock (now for None)."""
        if moment is None:
            return time.time_ns()
        return self.started_ns + int((moment - self.started) * 1e9)

    def tokens_arrived(self, new_tokens: int, queue_time_s: float | None) -> None:
        now = time.perf_counter()
        if self.queue_time_s is None:
            self.queue_time_s = queue_time_s
        if new_tokens <= 0:
            return
        if self.first_token_at is None:
            self.first_token_at = now
        elif self.last_token_at is not None:
            self.inter_token_s.append(now - self.last_token_at)
        self.last_token_at = now
        self.completion_tokens += new_tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    def outcome(self) -> Outcome:
        if self.disconnected or self.status == 499:
            return "aborted"
        status = self.engine_error_status or self.status or 500
        if status >= 500:
            return "server_error"
        return "client_error" if status >= 400 else "ok"


_current: ContextVar[RequestRecord | None] = ContextVar("request_record", default=None)


def current_record() -> RequestRecord | None:
    return _current.get()


def open_record(record: RequestRecord) -> Token[RequestRecord | None]:
    return _current.set(record)


def close_record(token: Token[RequestRecord | None]) -> None:
    _current.reset(token)
