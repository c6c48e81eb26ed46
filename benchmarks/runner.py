"""One run: each server started in turn on the same model, the same requests driven at each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.adapters import ensure_adapters
from benchmarks.drive import MAX_ATTEMPTS, Context, Level, Runs, cold_trials, drive_levels
from benchmarks.overhead import measure_overhead
from benchmarks.plan import BASE, Plan
from benchmarks.plots import write_plots
from benchmarks.report import BenchResults, write
from benchmarks.servers import (
    LORAGATE,
    TUTORIAL,
    VLLM,
    ServerSpec,
    loragate_spec,
    running,
    tutorial_spec,
    vllm_spec,
)
from benchmarks.stats import summarise
from benchmarks.targets import evaluate
from benchmarks.workload import chat_body, cold_persona_names, persona_names
from loragate.default_model import DEFAULT_MODEL_NAME, ensure_default_model

ALL_SERVERS = (LORAGATE, VLLM, TUTORIAL, "instant")


@dataclass(frozen=True)
class Stage:
    """One server start and the levels run against it."""

    server: str
    levels: tuple[Level, ...]
    cold_trials: bool = False


def stages(plan: Plan, servers: Sequence[str]) -> list[Stage]:
    """loragate, then vLLM, each through every workload; the extra base-model passes are run
    ABBA (vLLM again, then loragate again), so that a drift of the machine during the run
    weighs on both servers alike."""

    def levels(workloads: Sequence[str], run_pass: int) -> tuple[Level, ...]:
        return tuple(
            Level(w, c, plan.requests_at(c, w), run_pass)
            for w in workloads
            for c in plan.concurrencies
        )

    extra_base = tuple(lv for p in range(1, plan.base_passes) for lv in levels((BASE,), p))
    found = []
    if LORAGATE in servers:
        found.append(Stage(LORAGATE, levels(plan.workloads, 0), cold_trials=True))
    if VLLM in servers:
        found.append(Stage(VLLM, levels(plan.workloads, 0) + extra_base))
    if LORAGATE in servers and extra_base:
        found.append(Stage(LORAGATE, extra_base))
    if TUTORIAL in servers:
        tutorial = tuple(Level(BASE, c, n) for c, n in plan.tutorial_requests.items())
        found.append(Stage(TUTORIAL, tutorial))
    return found


def _spec(ctx: Context, name: str) -> ServerSpec:
    if name == LORAGATE:
        return loragate_spec({**ctx.personas, **ctx.cold_personas})
    if name == VLLM:
        return vllm_spec(ctx.model_dir, DEFAULT_MODEL_NAME, ctx.personas)
    return tutorial_spec(ctx.model_dir)


def _run_stage(ctx: Context, stage: Stage, runs: Runs, results: BenchResults) -> None:
    print(f"== {stage.server}: starting")
    with running(_spec(ctx, stage.server), ctx.work_dir / "logs") as server:
        results.meta["startup_s"].setdefault(stage.server, []).append(round(server.startup_s, 1))
        print(f"== {stage.server}: healthy after {server.startup_s:.0f} s")
        asyncio.run(drive_levels(ctx, server, stage.levels, runs))
        if stage.cold_trials and ctx.cold_personas:
            results.cold.append(asyncio.run(cold_trials(ctx, server)))


def _context(plan: Plan, work_dir: Path, quiet: bool) -> Context:
    from transformers import AutoTokenizer

    model_dir = ensure_default_model()
    personas = ensure_adapters(persona_names(plan.personas_needed), seed_base=1000)
    cold = ensure_adapters(cold_persona_names(plan.cold_trials), seed_base=2000)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return Context(plan, model_dir, tokenizer, personas, cold, work_dir, quiet)


def run(
    plan: Plan, out_dir: Path, work_dir: Path, servers: Sequence[str], command: str, quiet: bool
) -> bool:
    """Run, report, and return whether every target passed.

    `quiet`: wait for other processes to be quiet before each level and wrk run, and run a level
    again (up to drive.MAX_ATTEMPTS times) when they used the CPU while it ran.
    """
    started = time.monotonic()
    meta: dict[str, Any] = {
        "command": command,
        "plan": asdict(plan),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_start": machine.load_average(),
        "others_at_start": machine.others_now(),
        "startup_s": {},
        "disturbed_cores": machine.DISTURBED_CORES,
        "max_attempts": MAX_ATTEMPTS,
        **machine.describe(),
    }
    ctx = _context(plan, work_dir, quiet)
    meta["model"] = f"{DEFAULT_MODEL_NAME} ({ctx.model_dir})"
    meta["prompt_tokens"] = _prompt_tokens(ctx)
    results = BenchResults(meta)
    runs: Runs = {}
    for stage in stages(plan, servers):
        _run_stage(ctx, stage, runs, results)
    results.levels = [summarise(*key, passes) for key, passes in runs.items()]
    meta["disturbed_levels"] = [
        f"{r.server} {r.workload} c={r.concurrency} ({r.others_cores_max:.2f} cores)"
        for r in results.levels
        if r.others_cores_max > machine.DISTURBED_CORES
    ]
    meta["rerun_levels"] = [
        f"{r.server} {r.workload} c={r.concurrency}"
        for r in results.levels
        if r.attempts > r.passes
    ]
    if "instant" in servers:
        print("== instant engine: wrk")
        prompt = ctx.prompts("overhead", 1, 1)[0]
        results.overhead = measure_overhead(
            plan, ctx.model_dir, DEFAULT_MODEL_NAME, prompt, work_dir, quiet
        )
    results.checks = evaluate(results.levels, results.cold, results.overhead, plan.concurrencies)
    meta["load_end"] = machine.load_average()
    meta["duration_min"] = (time.monotonic() - started) / 60
    report = write(
        results, out_dir, write_plots(results.levels, plan.workloads, results.overhead, out_dir)
    )
    print("\n".join(["", "Targets:", *(c.line() for c in results.checks)]))
    print(f"\nReport: {report} ({meta['duration_min']:.1f} min)")
    return all(c.passed for c in results.checks)


def _prompt_tokens(ctx: Context) -> int:
    from loragate.prompting import render_prompt_ids

    body = chat_body(DEFAULT_MODEL_NAME, ctx.prompts(BASE, 1, 1)[0], 1, False)
    return len(render_prompt_ids(ctx.tokenizer, body["messages"]))
