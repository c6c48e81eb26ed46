"""From request records to the figures of one level (server x workload x concurrency)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.loadgen import LevelRun


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LevelResult:
    server: str
    workload: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    latency_p50_ms: float
    mean_output_tokens: float
    mean_prompt_tokens: float
    passes: int = 1  # runs pooled into these figures (see Plan.base_passes)
    load_1min_max: float = math.nan  # the highest load average seen at the end of a pass
    others_cores_max: float = 0.0  # the most CPU others used during a pass (5-s windows)
    attempts: int = 1  # runs made, counting those discarded because others disturbed them
    first_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        # JSON has no NaN: a figure that could not be measured (no requests) is null.
        return {
            key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in asdict(self).items()
        }


def summarise(
    server: str, workload: str, concurrency: int, runs: Sequence[LevelRun]
) -> LevelResult:
    """Pooled over the runs (passes) of one level: their requests together, their time summed."""
    run = LevelRun([r for one in runs for r in one.records], sum(one.wall_s for one in runs))
    good = [r for r in run.records if r.ok]
    bad = [r for r in run.records if not r.ok]
    ttfts = [r.ttft * 1000 for r in good if r.ttft is not None]
    itls = [gap * 1000 for r in good for gap in r.itl]
    tokens = sum(r.output_tokens for r in good)
    return LevelResult(
        server=server,
        workload=workload,
        concurrency=concurrency,
        requests=len(run.records),
        errors=len(bad),
        wall_s=run.wall_s,
        requests_per_s=len(good) / run.wall_s,
        output_tokens_per_s=tokens / run.wall_s,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        itl_p50_ms=percentile(itls, 50),
        itl_p95_ms=percentile(itls, 95),
        latency_p50_ms=percentile([r.latency * 1000 for r in good], 50),
        mean_output_tokens=tokens / len(good) if good else 0.0,
        mean_prompt_tokens=sum(r.prompt_tokens for r in good) / len(good) if good else 0.0,
        passes=len(runs),
        others_cores_max=max(x.others_cores for x in runs),
        attempts=sum(x.attempt for x in runs),
        load_1min_max=max(
            (x.load_1min for x in runs if not math.isnan(x.load_1min)), default=math.nan
        ),
        first_error=bad[0].error if bad else None,
    )


@dataclass(frozen=True)
class ColdStart:
    """A persona's first request (adapter not in the engine) against its second (warm)."""

    server: str
    cold_ttft_ms: list[float]
    warm_ttft_ms: list[float]
    errors: int

    @property
    def cold_p50_ms(self) -> float:
        return percentile(self.cold_ttft_ms, 50)

    @property
    def warm_p50_ms(self) -> float:
        return percentile(self.warm_ttft_ms, 50)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(cold_p50_ms=self.cold_p50_ms, warm_p50_ms=self.warm_p50_ms)
        return data
