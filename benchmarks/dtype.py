"""loragate on the embedded model in bfloat16 and in float32, the same requests at each: the
figures behind the CPU's dtype default (bfloat16 only where the CPU computes it natively).

    python -m benchmarks.dtype [--concurrency 1,16] [--requests 16] [--output-tokens 64]

Prints a table and this CPU's bf16 support as loragate detects it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loadgen import client_session, run_level
from benchmarks.plan import BASE
from benchmarks.servers import loragate_spec, running
from benchmarks.stats import LevelResult, summarise
from benchmarks.workload import chat_body
from loragate.default_model import DEFAULT_MODEL_NAME
from loragate.engine.engine_args import detect_platform

DTYPES = ("bfloat16", "float32")


async def _drive(
    url: str, dtype: str, levels: Sequence[int], requests: int, tokens: int
) -> list[LevelResult]:
    endpoint = f"{url}/v1/chat/completions"
    results = []
    async with client_session() as session:
        warm = [chat_body(DEFAULT_MODEL_NAME, f"Say {i}.", 8, True) for i in range(8)]
        await run_level(session, endpoint, warm, 8)
        for concurrency in levels:
            bodies = [
                chat_body(DEFAULT_MODEL_NAME, f"Tell story number {i}.", tokens, True)
                for i in range(max(requests, concurrency))
            ]
            run = await run_level(session, endpoint, bodies, concurrency)
            results.append(summarise(dtype, BASE, concurrency, [run]))
    return results


def measure(levels: Sequence[int], requests: int, tokens: int) -> list[LevelResult]:
    results: list[LevelResult] = []
    with tempfile.TemporaryDirectory(prefix="loragate-dtype-") as logs:
        for dtype in DTYPES:
            spec = loragate_spec({})
            spec = dataclasses.replace(spec, argv=[*spec.argv, "--dtype", dtype])
            with running(spec, Path(logs) / dtype) as server:
                results += asyncio.run(_drive(server.url, dtype, levels, requests, tokens))
    return results


def table(results: Sequence[LevelResult]) -> str:
    lines = [
        "| dtype | concurrency | output tokens/s | TTFT p50 ms | inter-token p50 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.server} | {r.concurrency} | {r.output_tokens_per_s:.1f} | {r.ttft_p50_ms:.0f} "
        f"| {r.itl_p50_ms:.1f} | {r.errors} |"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,16", help="levels, comma-separated")
    parser.add_argument("--requests", type=int, default=16, help="streamed requests per level")
    parser.add_argument("--output-tokens", type=int, default=64, help="tokens per reply")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    platform = detect_platform()
    print(f"this CPU computes bf16 natively: {platform.native_bf16}")
    print(table(measure(levels, args.requests, args.output_tokens)))


if __name__ == "__main__":
    main()
