"""The pure half of scripts/soak.py: what a reply counts as, the chaos timeline, the verdict.

No I/O here, so that tests/unit/test_soak_script.py checks every rule without a server.

A request is *ok* when it got a full answer (a 200 JSON completion whose choices all have a
finish_reason; a stream whose choices end with a finish_reason, then `[DONE]`), an *error* when
it got a clear one (status >= 400 with OpenAI's envelope; an error event followed by `[DONE]`),
and *lost* otherwise: a timeout, a connection cut, a stream that stops without `[DONE]`, a 5xx
without an envelope, a 200 that is not a completion.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Category = Literal["ok", "error", "lost"]
Action = Literal["burst", "swap", "readd", "kill"]
DONE = "[DONE]"
HEALTHY = "ok"


@dataclass(frozen=True)
class Outcome:
    category: Category
    kind: str  # "ok", "http 429 rate_limit_exceeded", "stream error engine_dead", "lost: timeout"


OK = Outcome("ok", "ok")


def lost(why: str) -> Outcome:
    return Outcome("lost", f"lost: {why}")


def parse_json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError alike
        return None


def envelope_code(body: Any) -> str | None:
    """The code (else the type) of OpenAI's `{"error": {"message", "type", "code"}}`, or None
    when `body` is not such an envelope."""
    if not isinstance(body, dict) or not isinstance(error := body.get("error"), dict):
        return None
    if not isinstance(error.get("message"), str):
        return None
    code = error.get("code") or error.get("type")
    return str(code) if code else "unknown"


PROMPTS = (
    "Write a short poem about cats.",
    "What is the capital of France?",
    "Tell me a story about a lighthouse.",
    "List three uses of a paperclip.",
)


def plan_call(
    rng: random.Random, base: str, personas: Sequence[str], max_tokens: int
) -> tuple[str, dict[str, Any]]:
    """The next traffic request (path, body): half on the base model, half spread over the
    personas; three in four chat completions, the rest completions; half of each streamed."""
    model = rng.choice(personas) if personas and rng.random() < 0.5 else base
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": rng.randint(max(1, max_tokens // 4), max_tokens),
        "temperature": 0.7,
        "stream": rng.random() < 0.5,
    }
    prompt = rng.choice(PROMPTS)
    if rng.random() < 0.75:
        return "/v1/chat/completions", body | {"messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", body | {"prompt": prompt}


def classify_response(status: int, body: bytes) -> Outcome:
    """A non-streamed reply: `status` and the whole body."""
    parsed = parse_json(body)
    if status >= 400:
        code = envelope_code(parsed)
        return Outcome("error", f"http {status} {code}") if code else lost(f"http {status} bare")
    if status != 200:
        return lost(f"http {status}")
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list) or not choices:
        return lost("200 without choices")
    if not all(isinstance(c, dict) and c.get("finish_reason") for c in choices):
        return lost("200 without finish_reason")
    return OK


def sse_payloads(lines: Iterable[str]) -> list[str]:
    """The data of each server-sent event, from the body's lines (one-line data fields, as
    OpenAI's servers and loragate send)."""
    return [line[5:].strip() for line in lines if line.startswith("data:")]


def classify_stream(payloads: Sequence[str]) -> Outcome:
    """A 200 stream, by its events' data (`sse_payloads`); a stream refused before its first
    event is a `classify_response`."""
    finished: set[int] = set()
    started: set[int] = set()
    error: str | None = None
    for i, payload in enumerate(payloads):
        if payload == DONE:
            if i != len(payloads) - 1:
                return lost("events after [DONE]")
            if error is not None:
                return Outcome("error", f"stream error {error}")
            if not started:
                return lost("[DONE] without content")
            if started - finished:
                return lost("[DONE] without finish_reason")
            return OK
        event = parse_json(payload)
        if error is not None:
            return lost("events after an error event")
        if (code := envelope_code(event)) is not None:
            error = code
            continue
        choices = event.get("choices") if isinstance(event, dict) else None
        if not isinstance(choices, list):
            return lost("an event that is no chunk")
        for choice in choices:
            index = choice.get("index", 0) if isinstance(choice, dict) else 0
            started.add(index)
            if isinstance(choice, dict) and choice.get("finish_reason"):
                finished.add(index)
    return lost("error event without [DONE]" if error else "stream without [DONE]")


def classify_transport(exc: BaseException) -> Outcome:
    """What the client saw instead of a reply: always lost."""
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return lost("timeout")
    return lost(f"connection ({type(exc).__name__})")


class Tally:
    """Outcomes counted by phase (traffic, burst) and kind."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, Outcome]] = Counter()
        self.ok_seconds: list[float] = []  # of the traffic's full answers

    def record(self, phase: str, outcome: Outcome, seconds: float = 0.0) -> None:
        self.counts[(phase, outcome)] += 1
        if phase == "traffic" and outcome == OK:
            self.ok_seconds.append(seconds)

    def latency(self) -> str:
        if not self.ok_seconds:
            return "no full answer"
        ranked = sorted(self.ok_seconds)
        p50, p95 = (ranked[min(len(ranked) - 1, int(q * len(ranked)))] for q in (0.5, 0.95))
        return f"p50 {p50:.1f} s, p95 {p95:.1f} s, max {ranked[-1]:.1f} s"

    def total(self, category: Category | None = None, phase: str | None = None) -> int:
        return sum(
            n
            for (p, outcome), n in self.counts.items()
            if (category is None or outcome.category == category) and (phase in (None, p))
        )

    def kinds(self) -> list[Outcome]:
        order: dict[Category, int] = {"ok": 0, "error": 1, "lost": 2}
        found = {outcome for _, outcome in self.counts}
        return sorted(found, key=lambda o: (order[o.category], o.kind))

    def rows(self, phases: Sequence[str]) -> list[list[str]]:
        rows = [
            [o.kind, *(str(self.counts[(p, o)]) for p in phases), str(self._all(o))]
            for o in self.kinds()
        ]
        rows.append(["total", *(str(self.total(phase=p)) for p in phases), str(self.total())])
        return rows

    def _all(self, outcome: Outcome) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)


@dataclass(frozen=True)
class ChaosEvent:
    at: float  # seconds after the traffic started
    action: Action


def chaos_schedule(
    duration: float, warmup: float, churn_interval: float, *, kill: bool, burst: bool
) -> list[ChaosEvent]:
    """When each act of chaos happens, all after the warm-up: the burst early, the kill at a
    third of the chaos window (the new engine then has time to warm up again before the end
    sample), persona swaps and delete-and-re-adds alternately every `churn_interval`, at least
    one of each, none in the last tenth."""
    window = duration - warmup
    if window <= 0 or churn_interval <= 0:
        raise ValueError("the duration must exceed the warm-up, and the churn interval be > 0")
    events: list[ChaosEvent] = []
    if burst:
        events.append(ChaosEvent(warmup + 0.1 * window, "burst"))
    if kill:
        events.append(ChaosEvent(warmup + 0.3 * window, "kill"))
    churn: list[Action] = ["swap", "readd"]
    at, n = warmup + churn_interval / 2, 0
    while at < warmup + 0.9 * window:
        events.append(ChaosEvent(at, churn[n % 2]))
        at, n = at + churn_interval, n + 1
    if n < 1:
        events.append(ChaosEvent(warmup + 0.2 * window, "swap"))
    if n < 2:
        events.append(ChaosEvent(warmup + 0.5 * window, "readd"))
    return sorted(events, key=lambda e: e.at)


RSS_HEADERS = [
    "process",
    "start MiB",
    "before kill MiB",
    "after recovery MiB",
    "end MiB",
    "growth",
    "since recovery",
]
HealthSample = tuple[float, str]  # (seconds, /health's status or "unreachable" / "http N")


def recovery_after(samples: Sequence[HealthSample], since: float) -> float | None:
    """Seconds from `since` (the kill) until /health said ok again after having said anything
    else; None when it never went unhealthy after `since`, or never came back."""
    unhealthy_seen = False
    for at, status in samples:
        if at < since:
            continue
        if status != HEALTHY:
            unhealthy_seen = True
        elif unhealthy_seen:
            return at - since
    return None


def outages(samples: Sequence[HealthSample]) -> list[tuple[float, float | None]]:
    """Each span of non-ok /health answers: (start, end), end None if it lasted to the last
    sample."""
    spans: list[tuple[float, float | None]] = []
    start: float | None = None
    for at, status in samples:
        if status != HEALTHY and start is None:
            start = at
        elif status == HEALTHY and start is not None:
            spans.append((start, at))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans


def growth_pct(start: int, end: int) -> float:
    return 100.0 * (end - start) / start if start else 0.0


@dataclass(frozen=True)
class Rss:
    name: str
    start: int  # bytes, after the warm-up
    end: int
    before_kill: int | None = None
    after_recovery: int | None = None  # a warm-up after /health was ok again

    @property
    def growth(self) -> float:
        return growth_pct(self.start, self.end)

    def row(self) -> list[str]:
        before = "-" if self.before_kill is None else mib(self.before_kill)
        after, since = "-", "-"
        if self.after_recovery is not None:
            after = mib(self.after_recovery)
            since = f"{growth_pct(self.after_recovery, self.end):+.1f} %"
        growth = f"{self.growth:+.1f} %"
        return [self.name, mib(self.start), before, after, mib(self.end), growth, since]


@dataclass
class Results:
    tally: Tally
    chaos: list[tuple[float, str, str]]  # (seconds, action, what came of it)
    health: list[HealthSample]
    kill_at: float | None  # seconds; None: no engine core was killed
    rss: list[Rss]  # the gateway's, then its engine processes'
    elapsed: float
    ended_at: float  # seconds, the end of an outage still open
    concurrency: int
    warmup: float
    max_growth_pct: float
    kill_asked: bool

    def recovery(self) -> float | None:
        return None if self.kill_at is None else recovery_after(self.health, self.kill_at)

    def longest_outage(self) -> float:
        spans = outages(self.health)
        return max(((end or self.ended_at) - start for start, end in spans), default=0.0)

    def failures(self) -> list[str]:
        """Why the run failed; empty when it passed."""
        found = []
        if n := self.tally.total("lost"):
            found.append(f"{n} request(s) lost")
        found += [
            f"{r.name} RSS grew {r.growth:.1f} % (over {self.max_growth_pct:g} %)"
            for r in self.rss
            if r.start and r.growth > self.max_growth_pct
        ]
        if self.kill_asked and self.kill_at is None:
            found.append("the engine core was not killed (none found)")
        if self.kill_at is not None and self.recovery() is None:
            found.append("the engine did not come back after the kill (/health never ok again)")
        if not self.tally.total("ok"):
            found.append("no request succeeded")
        return found

    def render(self) -> str:
        phases = ["traffic", "burst"]
        recovery, spans = self.recovery(), outages(self.health)
        states = sorted({status for _, status in self.health} - {HEALTHY})
        chaos = [[f"{at:.1f}", action, result] for at, action, result in sorted(self.chaos)]
        rss = [r.row() for r in self.rss]
        out = [
            f"## Requests by outcome ({self.elapsed:.0f} s, concurrency {self.concurrency})",
            table(["outcome", *phases, "all"], self.tally.rows(phases)),
            f"requests lost: {self.tally.total('lost')}; full answers took "
            f"{self.tally.latency()}; {self.tally.total() / self.elapsed:.1f} requests/s",
            "## Chaos",
            table(["at (s)", "action", "result"], chaos or [["-", "none", "-"]]),
            "## Recovery",
        ]
        if self.kill_at is not None:
            shown = "never" if recovery is None else f"{recovery:.1f} s"
            out.append(f"engine core killed at {self.kill_at:.1f} s: /health ok after {shown}")
        out += [
            f"longest non-ok /health span: {self.longest_outage():.1f} s "
            f"({len(spans)} span(s); states seen: {', '.join(states) or 'none'})",
            f"## RSS (after the {self.warmup:g} s warm-up, and at the end)",
            table(RSS_HEADERS, rss),
        ]
        failures = self.failures()
        out.append("PASS" if not failures else "FAIL: " + "; ".join(failures))
        return "\n\n".join(out)

    def as_json(self) -> dict[str, Any]:
        return {
            "outcomes": [
                {"phase": p, "category": o.category, "kind": o.kind, "count": n}
                for (p, o), n in self.tally.counts.items()
            ],
            "lost": self.tally.total("lost"),
            "chaos": self.chaos,
            "recovery_s": self.recovery(),
            "longest_unhealthy_s": self.longest_outage(),
            "rss": [asdict(r) | {"growth_pct": r.growth} for r in self.rss],
            "failures": self.failures(),
        }


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, numbers right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i and _numeric(c) else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.lstrip("+-").replace(".", "", 1).replace(" %", "").isdigit()


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"
