"""The benchmark's client and workload against servers started elsewhere (scripts/gpu_check.sh).

    python -m benchmarks.external measure --name loragate --url http://127.0.0.1:8000 \
        --model Llama-3.1-8B-Instruct --tokenizer DIR [--persona NAME] --out loragate.json
    python -m benchmarks.external compare loragate.json vllm.json
    python -m benchmarks.external vllm-argv ENGINE_ARGS.json   # `vllm serve` flags, one a line

`measure` runs closed-loop levels (concurrency 1, 16, 64 by default) of the same requests the
full plan sends (random-word prompts of exactly --input-tokens, --output-tokens with ignore_eos,
greedy, streamed), on the base model and, with --persona, through that adapter; it exits 1 if
any request failed. `vllm-argv` turns `loragate engine-args` output into the flags that give
`vllm serve` the same engine arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from benchmarks.loadgen import client_session, run_level
from benchmarks.stats import LevelResult, summarise
from benchmarks.workload import Encoder, chat_body, level_bodies, make_prompts

CONCURRENCIES = (1, 16, 64)
WARMUP_TOKENS = 8


def requests_at(concurrency: int) -> int:
    """Two waves per level, as the full plan, at least 8 and at most 128 requests."""
    return max(8, min(128, 2 * concurrency))


async def measure(
    name: str,
    url: str,
    workloads: dict[str, str],  # workload -> the model it requests
    tokenizer: Encoder,
    concurrencies: Sequence[int] = CONCURRENCIES,
    input_tokens: int = 128,
    output_tokens: int = 128,
) -> list[LevelResult]:
    chat = f"{url.rstrip('/')}/v1/chat/completions"
    results = []
    async with client_session() as session:
        # The first requests pay for lazy initialisation, compilation and adapter loads.
        burst = [
            chat_body(m, f"Say {i}.", WARMUP_TOKENS, True) for i, m in enumerate(workloads.values())
        ]
        warm = await run_level(session, chat, burst * 8, 16)
        if failed := [r.error for r in warm.records if not r.ok]:
            raise RuntimeError(f"{name}: warm-up failed: {failed[0]}")
        for workload, model in workloads.items():
            for concurrency in concurrencies:
                seed = sum(map(ord, workload)) * 1000 + concurrency  # the same for every server
                prompts = make_prompts(tokenizer, requests_at(concurrency), input_tokens, seed)
                bodies = level_bodies([model], prompts, output_tokens, stream=True)
                run = await run_level(session, chat, bodies, concurrency)
                result = summarise(name, workload, concurrency, [run])
                print(f"  {name} {workload} c={concurrency}: {_brief(result)}", flush=True)
                results.append(result)
    return results


def _brief(r: LevelResult) -> str:
    return (
        f"{r.requests} req in {r.wall_s:.1f} s, {r.output_tokens_per_s:.1f} tok/s, "
        f"TTFT p50 {r.ttft_p50_ms:.0f} ms, ITL p50 {r.itl_p50_ms:.1f} ms, errors {r.errors}"
        + (f" (first: {r.first_error})" if r.first_error else "")
    )


def compare(runs: dict[str, list[dict[str, Any]]]) -> str:
    """A markdown table: each level's figures for every server, the first one's ratio to each."""
    names = list(runs)
    levels = sorted(
        {(r["workload"], r["concurrency"]) for results in runs.values() for r in results},
        key=lambda level: (level[0] != "base", level),
    )
    by_level = {(n, r["workload"], r["concurrency"]): r for n in names for r in runs[n]}
    header = ["workload", "concurrency"]
    header += [f"{n} {figure}" for n in names for figure in ("tok/s", "TTFT p50 ms", "ITL p50 ms")]
    header += [f"{names[0]} / {n}" for n in names[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for workload, concurrency in levels:
        found = [by_level.get((n, workload, concurrency)) for n in names]
        cells = [workload, str(concurrency)]
        for r in found:
            cells += (
                [f"{r['output_tokens_per_s']:.0f}", _ms(r["ttft_p50_ms"]), _ms(r["itl_p50_ms"])]
                if r
                else ["-", "-", "-"]
            )
        cells += [_ratio(found[0], other) for other in found[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or not b["output_tokens_per_s"]:
        return "-"
    return f"{a['output_tokens_per_s'] / b['output_tokens_per_s']:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def vllm_serve_argv(engine_args: dict[str, Any]) -> list[str]:
    """`vllm serve MODEL --flag value...` arguments giving vLLM's server these engine arguments."""
    rest = dict(engine_args)
    argv = [str(rest.pop("model"))]
    for key, value in rest.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif key == "max_model_len" and value == -1:
            argv += [flag, "auto"]  # "-1" would be read as an option
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.external", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="drive one running server, write its figures as JSON")
    m.add_argument("--name", required=True, help="the server's name in the report")
    m.add_argument("--url", required=True, help="its base URL, e.g. http://127.0.0.1:8000")
    m.add_argument("--model", required=True, help="the base model's served name")
    m.add_argument("--persona", help="also measure this adapter (persona) by its served name")
    m.add_argument("--tokenizer", required=True, help="the model's directory, for the prompts")
    m.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)))
    m.add_argument("--input-tokens", type=int, default=128)
    m.add_argument("--output-tokens", type=int, default=128)
    m.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="print the servers' figures side by side")
    c.add_argument("results", type=Path, nargs="+", help="measure's JSON files, first compared")
    v = sub.add_parser("vllm-argv", help="`vllm serve` arguments from `loragate engine-args`")
    v.add_argument("engine_args", type=Path, help="the JSON `loragate engine-args` printed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "vllm-argv":
        print("\n".join(vllm_serve_argv(json.loads(args.engine_args.read_text())["engine_args"])))
        return 0
    if args.command == "compare":
        runs = {}
        for path in args.results:
            data = json.loads(path.read_text())
            runs[data["name"]] = data["levels"]
        print(compare(runs))
        return 0
    from transformers import AutoTokenizer

    tokenizer = cast(Encoder, AutoTokenizer.from_pretrained(args.tokenizer))
    workloads = {"base": args.model, **({"persona": args.persona} if args.persona else {})}
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results = asyncio.run(
        measure(
            args.name,
            args.url,
            workloads,
            tokenizer,
            concurrencies,
            args.input_tokens,
            args.output_tokens,
        )
    )
    levels = [r.to_json() for r in results]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"name": args.name, "url": args.url, "levels": levels}, indent=1)
    )
    errors = sum(r.errors for r in results)
    if errors:
        print(f"{args.name}: {errors} requests failed", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
