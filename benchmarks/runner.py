"""One run: each server started in turn on the same model, the same requests driven at each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import machine
from benchmarks.adapters import ensure_adapters
from benchmarks.loadgen import client_session, run_level, send
from benchmarks.overhead import measure_overhead
from benchmarks.plan import BASE, Plan
from benchmarks.plots import write_plots
from benchmarks.report import BenchResults, write
from benchmarks.servers import (
    LORAGATE,
    TUTORIAL,
    VLLM,
    RunningServer,
    ServerSpec,
    loragate_spec,
    running,
    tutorial_spec,
    vllm_spec,
)
from benchmarks.stats import ColdStart, LevelResult, summarise
from benchmarks.targets import evaluate
from benchmarks.workload import (
    chat_body,
    cold_persona_names,
    level_bodies,
    make_prompts,
    persona_names,
    workload_models,
)
from loragate.default_model import DEFAULT_MODEL_NAME, ensure_default_model

WARMUP_TOKENS = 8
ALL_SERVERS = (LORAGATE, VLLM, TUTORIAL, "instant")


@dataclass
class Context:
    plan: Plan
    model_dir: Path
    tokenizer: Any
    personas: dict[str, Path]
    cold_personas: dict[str, Path]
    work_dir: Path

    def prompts(self, workload: str, concurrency: int, count: int) -> list[str]:
        # Distinct prompts per level (no prompt is served from another level's prefix cache),
        # and the same ones for every server: the seed depends on the level alone.
        seed = sum(map(ord, workload)) * 1000 + concurrency
        return make_prompts(self.tokenizer, count, self.plan.input_tokens, seed)


def _url(server: RunningServer) -> str:
    return f"{server.url}/v1/chat/completions"


async def _warm_up(
    session: aiohttp.ClientSession, url: str, models: Sequence[str], stream: bool
) -> None:
    """First requests pay for lazy initialisation and adapter loads: keep them out of levels."""
    for model in models:
        record = await send(session, url, chat_body(model, "Hello!", WARMUP_TOKENS, stream))
        if not record.ok:
            raise RuntimeError(f"warm-up request to {model} failed: {record.error}")
    # Then a batch of them together: the first batched steps (and LoRA ones) pay once too.
    burst = [
        chat_body(models[i % len(models)], f"Say {i}.", WARMUP_TOKENS, stream) for i in range(16)
    ]
    await run_level(session, url, burst, 16)


async def _levels(
    ctx: Context, server: RunningServer, workloads: Sequence[str], requests: dict[int, int]
) -> list[LevelResult]:
    # The tutorial's design cannot stream, and its client opened a connection per request.
    stream = keep_alive = server.spec.name != TUTORIAL
    results = []
    async with client_session(keep_alive) as session:
        models = sorted({m for w in workloads for m in workload_models(w, DEFAULT_MODEL_NAME)})
        await _warm_up(session, _url(server), [DEFAULT_MODEL_NAME, *models], stream)
        for workload in workloads:
            for concurrency, count in requests.items():
                prompts = ctx.prompts(workload, concurrency, count)
                bodies = level_bodies(
                    workload_models(workload, DEFAULT_MODEL_NAME),
                    prompts,
                    ctx.plan.output_tokens,
                    stream,
                )
                run = await run_level(session, _url(server), bodies, concurrency)
                result = summarise(server.spec.name, workload, concurrency, run)
                print(f"  {result.server} {workload} c={concurrency}: {_brief(result)}")
                results.append(result)
    return results


def _brief(r: LevelResult) -> str:
    return (
        f"{r.requests} req in {r.wall_s:.1f} s, {r.output_tokens_per_s:.1f} tok/s, "
        f"TTFT p50 {r.ttft_p50_ms:.0f} ms p95 {r.ttft_p95_ms:.0f} ms, "
        f"ITL p50 {r.itl_p50_ms:.1f} ms, errors {r.errors}"
        + (f" (first: {r.first_error})" if r.first_error else "")
    )


async def _cold_trials(ctx: Context, server: RunningServer) -> ColdStart:
    """Each cold persona's first request (adapter not in the engine), then its second."""
    cold: list[float] = []
    warm: list[float] = []
    errors = 0
    prompt = ctx.prompts("cold", 1, 1)[0]
    async with client_session() as session:
        for name in ctx.cold_personas:
            for into in (cold, warm):
                body = chat_body(name, prompt, WARMUP_TOKENS, True)
                record = await send(session, _url(server), body)
                if record.ok and record.ttft is not None:
                    into.append(record.ttft * 1000)
                else:
                    errors += 1
    result = ColdStart(server.spec.name, cold, warm, errors)
    print(
        f"  {server.spec.name} cold persona TTFT p50 {result.cold_p50_ms:.1f} ms, "
        f"warm {result.warm_p50_ms:.1f} ms, errors {errors}"
    )
    return result


def _spec(ctx: Context, name: str) -> ServerSpec:
    if name == LORAGATE:
        return loragate_spec({**ctx.personas, **ctx.cold_personas})
    if name == VLLM:
        return vllm_spec(ctx.model_dir, DEFAULT_MODEL_NAME, ctx.personas)
    return tutorial_spec(ctx.model_dir)


def _serve_and_measure(ctx: Context, name: str, results: BenchResults) -> None:
    print(f"== {name}: starting")
    with running(_spec(ctx, name), ctx.work_dir / "logs") as server:
        results.meta["startup_s"][name] = round(server.startup_s, 1)
        print(f"== {name}: healthy after {server.startup_s:.0f} s")
        if name == TUTORIAL:
            plan_requests = ctx.plan.tutorial_requests
            workloads: Sequence[str] = (BASE,)
        else:
            plan_requests = {c: ctx.plan.requests_at(c) for c in ctx.plan.concurrencies}
            workloads = ctx.plan.workloads
        results.levels += asyncio.run(_levels(ctx, server, workloads, plan_requests))
        if name == LORAGATE and ctx.cold_personas:
            results.cold.append(asyncio.run(_cold_trials(ctx, server)))


def _context(plan: Plan, work_dir: Path) -> Context:
    from transformers import AutoTokenizer

    model_dir = ensure_default_model()
    personas = ensure_adapters(persona_names(plan.personas_needed), seed_base=1000)
    cold = ensure_adapters(cold_persona_names(plan.cold_trials), seed_base=2000)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return Context(plan, model_dir, tokenizer, personas, cold, work_dir)


def run(plan: Plan, out_dir: Path, work_dir: Path, servers: Sequence[str], command: str) -> bool:
    """Run, report, and return whether every target passed."""
    started = time.monotonic()
    meta: dict[str, Any] = {
        "command": command,
        "plan": asdict(plan),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_start": machine.load_average(),
        "others_at_start": machine.other_heavy_processes(),
        "startup_s": {},
        **machine.describe(),
    }
    ctx = _context(plan, work_dir)
    meta["model"] = f"{DEFAULT_MODEL_NAME} ({ctx.model_dir})"
    meta["prompt_tokens"] = _prompt_tokens(ctx)
    results = BenchResults(meta)
    for name in (LORAGATE, VLLM, TUTORIAL):
        if name in servers:
            _serve_and_measure(ctx, name, results)
    if "instant" in servers:
        print("== instant engine: wrk")
        prompt = ctx.prompts("overhead", 1, 1)[0]
        results.overhead = measure_overhead(
            plan, ctx.model_dir, DEFAULT_MODEL_NAME, prompt, work_dir
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
