"""The issue's targets, each checked against the measured figures: PASS or FAIL, with both."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.overhead import OverheadResult
from benchmarks.plan import BASE, MIX8, PERSONA
from benchmarks.servers import LORAGATE, TUTORIAL, VLLM
from benchmarks.stats import ColdStart, LevelResult

COMPARED_CONCURRENCY = 16  # the tutorial and the persona mix are compared here
MIN_RATIO_TO_VLLM = 0.95
MAX_TTFT_RATIO_TO_VLLM = 1.1
MIN_RATIO_TO_TUTORIAL = 15.0
MIN_MIX8_RATIO = 0.8
MAX_COLD_EXTRA_MS = 250.0
MIN_INSTANT_RPS = 500.0
MAX_INSTANT_P50_MS = 2.0


@dataclass(frozen=True)
class Check:
    target: str
    passed: bool
    measured: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.target}: {self.measured}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _find(
    levels: list[LevelResult], server: str, workload: str, concurrency: int
) -> LevelResult | None:
    for level in levels:
        if (level.server, level.workload, level.concurrency) == (server, workload, concurrency):
            return level
    return None


def _missing(target: str, what: str) -> Check:
    return Check(target, False, f"not measured ({what})")


def against_vllm(levels: list[LevelResult], concurrencies: tuple[int, ...]) -> list[Check]:
    checks = []
    for c in concurrencies:
        ours, theirs = _find(levels, LORAGATE, BASE, c), _find(levels, VLLM, BASE, c)
        name = f"base model, concurrency {c}: loragate output tokens/s >= 0.95 x vLLM's"
        ttft_name = f"base model, concurrency {c}: loragate TTFT p50 <= 1.1 x vLLM's"
        if ours is None or theirs is None:
            checks += [_missing(name, "a server's run"), _missing(ttft_name, "a server's run")]
            continue
        ratio = ours.output_tokens_per_s / theirs.output_tokens_per_s
        checks.append(
            Check(
                name,
                ratio >= MIN_RATIO_TO_VLLM and ours.errors == 0,
                f"{ours.output_tokens_per_s:.1f} vs {theirs.output_tokens_per_s:.1f} "
                f"tok/s = {ratio:.3f} x",
            )
        )
        ttft = ours.ttft_p50_ms / theirs.ttft_p50_ms
        checks.append(
            Check(
                ttft_name,
                ttft <= MAX_TTFT_RATIO_TO_VLLM,
                f"{ours.ttft_p50_ms:.1f} vs {theirs.ttft_p50_ms:.1f} ms = {ttft:.3f} x",
            )
        )
    return checks


def against_tutorial(levels: list[LevelResult]) -> Check:
    c = COMPARED_CONCURRENCY
    name = f"concurrency {c}: loragate output tokens/s >= 15 x the tutorial server's"
    ours, theirs = _find(levels, LORAGATE, BASE, c), _find(levels, TUTORIAL, BASE, c)
    if ours is None or theirs is None:
        return _missing(name, "a server's run")
    ratio = ours.output_tokens_per_s / theirs.output_tokens_per_s
    return Check(
        name,
        ratio >= MIN_RATIO_TO_TUTORIAL,
        f"{ours.output_tokens_per_s:.1f} vs {theirs.output_tokens_per_s:.2f} tok/s = {ratio:.1f} x",
    )


def persona_mix(levels: list[LevelResult]) -> Check:
    c = COMPARED_CONCURRENCY
    name = f"concurrency {c}: 8 personas mixed >= 0.8 x one persona's output tokens/s (loragate)"
    mixed, single = _find(levels, LORAGATE, MIX8, c), _find(levels, LORAGATE, PERSONA, c)
    if mixed is None or single is None:
        return _missing(name, "a workload")
    ratio = mixed.output_tokens_per_s / single.output_tokens_per_s
    return Check(
        name,
        ratio >= MIN_MIX8_RATIO and mixed.errors == 0,
        f"{mixed.output_tokens_per_s:.1f} vs {single.output_tokens_per_s:.1f} tok/s "
        f"= {ratio:.3f} x",
    )


def cold_start(cold: list[ColdStart]) -> Check:
    name = "a cold persona's first-request TTFT <= a warm persona's + 250 ms (loragate, p50)"
    ours = next((c for c in cold if c.server == LORAGATE), None)
    if ours is None or math.isnan(ours.cold_p50_ms):
        return _missing(name, "cold-start trials")
    extra = ours.cold_p50_ms - ours.warm_p50_ms
    return Check(
        name,
        extra <= MAX_COLD_EXTRA_MS and ours.errors == 0,
        f"cold {ours.cold_p50_ms:.1f} ms, warm {ours.warm_p50_ms:.1f} ms (+{extra:.1f} ms)",
    )


def instant(overhead: list[OverheadResult]) -> list[Check]:
    """The targets hold without keys, and with a thousand keys defined (one sent)."""
    checks = []
    for keys in sorted({o.keys for o in overhead} | {0}):
        checks += _instant([o for o in overhead if o.keys == keys], keys)
    return checks


def _instant(overhead: list[OverheadResult], keys: int) -> list[Check]:
    whole = {o.concurrency: o for o in overhead if not o.stream}
    defined = f", {keys} keys defined" if keys else ""
    rps_name = f"instant engine{defined}: >= 500 non-streamed requests/s"
    p50_name = f"instant engine{defined}: <= 2 ms added latency p50, non-streamed, concurrency 1"
    if not whole or 1 not in whole:
        return [_missing(rps_name, "wrk runs"), _missing(p50_name, "wrk runs")]
    best = max(whole.values(), key=lambda o: o.requests_per_s)
    one = whole[1]
    return [
        Check(
            rps_name,
            best.requests_per_s >= MIN_INSTANT_RPS and best.errors == 0,
            f"{best.requests_per_s:.0f} requests/s at concurrency {best.concurrency}",
        ),
        Check(p50_name, one.latency_p50_ms <= MAX_INSTANT_P50_MS, f"{one.latency_p50_ms:.2f} ms"),
    ]


def evaluate(
    levels: list[LevelResult],
    cold: list[ColdStart],
    overhead: list[OverheadResult],
    concurrencies: tuple[int, ...],
) -> list[Check]:
    return [
        *against_vllm(levels, concurrencies),
        against_tutorial(levels),
        persona_mix(levels),
        cold_start(cold),
        *instant(overhead),
    ]
