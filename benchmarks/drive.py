"""Driving one running server: warm-up, the levels of its workloads, the cold-persona trials."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import machine
from benchmarks.loadgen import LevelRun, client_session, run_level, send
from benchmarks.plan import Plan
from benchmarks.servers import TUTORIAL, RunningServer
from benchmarks.stats import ColdStart, LevelResult, summarise
from benchmarks.workload import chat_body, level_bodies, make_prompts, workload_models
from loragate.default_model import DEFAULT_MODEL_NAME

WARMUP_TOKENS = 8
MAX_ATTEMPTS = 3


@dataclass
class Context:
    plan: Plan
    model_dir: Path
    tokenizer: Any
    personas: dict[str, Path]
    cold_personas: dict[str, Path]
    work_dir: Path
    quiet: bool  # wait for others to be quiet before each level, run disturbed levels again

    def prompts(
        self, workload: str, concurrency: int, count: int, run_pass: int = 0, attempt: int = 1
    ) -> list[str]:
        # Distinct prompts per level, pass and attempt (none is served from another one's prefix
        # cache), and the same ones for every server: the seed depends on those alone.
        seed = sum(map(ord, workload)) * 1000 + concurrency + 100_000 * run_pass + 7 * attempt
        return make_prompts(self.tokenizer, count, self.plan.input_tokens, seed)


@dataclass(frozen=True)
class Level:
    workload: str
    concurrency: int
    requests: int
    run_pass: int = 0


Runs = dict[tuple[str, str, int], list[LevelRun]]  # (server, workload, concurrency) -> passes


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


async def drive_levels(
    ctx: Context, server: RunningServer, levels: Sequence[Level], runs: Runs
) -> None:
    """Run each level once against the server, adding its run to `runs`."""
    name = server.spec.name
    # The tutorial's design cannot stream, and its client opened a connection per request.
    stream = keep_alive = name != TUTORIAL
    async with client_session(keep_alive) as session:
        used = {m for level in levels for m in workload_models(level.workload, DEFAULT_MODEL_NAME)}
        await _warm_up(session, _url(server), [DEFAULT_MODEL_NAME, *sorted(used)], stream)
        for level in levels:
            run = await _measured(ctx, session, _url(server), level, stream)
            runs.setdefault((name, level.workload, level.concurrency), []).append(run)
            figures = summarise(name, level.workload, level.concurrency, [run])
            where = f"{name} {level.workload} c={level.concurrency} pass {level.run_pass}"
            print(f"  {where}: {brief(figures)}")


async def _measured(
    ctx: Context, session: aiohttp.ClientSession, url: str, level: Level, stream: bool
) -> LevelRun:
    """One run of the level; with `ctx.quiet`, run again while other processes disturb it."""
    models = workload_models(level.workload, DEFAULT_MODEL_NAME)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if ctx.quiet:
            await asyncio.to_thread(machine.wait_until_quiet, None, 3)
        prompts = ctx.prompts(
            level.workload, level.concurrency, level.requests, level.run_pass, attempt
        )
        bodies = level_bodies(models, prompts, ctx.plan.output_tokens, stream)
        stop = asyncio.Event()
        watcher = asyncio.create_task(machine.watch(stop))
        run = await run_level(session, url, bodies, level.concurrency)
        stop.set()
        run.others_cores, run.attempt = await watcher, attempt
        run.load_1min = os.getloadavg()[0]
        if not ctx.quiet or run.others_cores <= machine.DISTURBED_CORES:
            break
        print(f"  (others used {run.others_cores:.2f} cores during {level}: running it again)")
    return run


def brief(r: LevelResult) -> str:
    return (
        f"{r.requests} req in {r.wall_s:.1f} s, {r.output_tokens_per_s:.1f} tok/s, "
        f"TTFT p50 {r.ttft_p50_ms:.0f} ms p95 {r.ttft_p95_ms:.0f} ms, "
        f"ITL p50 {r.itl_p50_ms:.1f} ms, errors {r.errors}, load {r.load_1min_max:.2f}, "
        f"others {r.others_cores_max:.2f} cores"
        + (f" (first: {r.first_error})" if r.first_error else "")
    )


async def cold_trials(ctx: Context, server: RunningServer) -> ColdStart:
    """Each cold persona's first request (adapter not in the engine), then its second.

    Every request has its own prompt: a repeated one would be served from the prefix cache.
    """
    cold: list[float] = []
    warm: list[float] = []
    errors = 0
    prompts = iter(ctx.prompts("cold", 1, 2 * len(ctx.cold_personas)))
    async with client_session() as session:
        for name in ctx.cold_personas:
            for into in (cold, warm):
                body = chat_body(name, next(prompts), WARMUP_TOKENS, True)
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
