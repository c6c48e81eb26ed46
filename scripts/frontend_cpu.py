"""CPU seconds a server's API process spends on a fixed load: the gateway's own cost.

Start a server (loragate, or vLLM's `python -m vllm.entrypoints.openai.api_server` with the same
engine settings), then:

    python scripts/frontend_cpu.py --port 8000 --pid <API process pid> --model NAME [--stream]

It sends 64 chat requests of 128 tokens (`ignore_eos`, greedy) at concurrency 16 and prints the
CPU time the API process (not its engine processes) used, from psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import openai
import psutil
from openai.types.chat import ChatCompletionMessageParam

REQUESTS, CONCURRENCY, TOKENS = 64, 16, 128


async def _one(client: openai.AsyncOpenAI, model: str, index: int, stream: bool) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": f"Tell story number {index}."}
    ]
    options: dict[str, Any] = {"max_tokens": TOKENS, "temperature": 0}
    extra = {"ignore_eos": True}
    if stream:
        chunks = await client.chat.completions.create(
            model=model, messages=messages, stream=True, extra_body=extra, **options
        )
        async for _chunk in chunks:
            pass
    else:
        await client.chat.completions.create(
            model=model, messages=messages, extra_body=extra, **options
        )


async def measure(port: int, pid: int, model: str, stream: bool) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-")
    gate = asyncio.Semaphore(CONCURRENCY)

    async def limited(index: int) -> None:
        async with gate:
            await _one(client, model, index, stream)

    await limited(-1)  # warm-up
    process = psutil.Process(pid)
    before, started = process.cpu_times(), time.perf_counter()
    await asyncio.gather(*(limited(i) for i in range(REQUESTS)))
    after, wall = process.cpu_times(), time.perf_counter() - started
    cpu = (after.user - before.user) + (after.system - before.system)
    print(
        f"{model} stream={stream}: API process {cpu:.2f} CPU s for {REQUESTS} requests x "
        f"{TOKENS} tokens in {wall:.1f} s ({cpu / (REQUESTS * TOKENS) * 1e6:.0f} us per token)"
    )
    await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's API process")
    parser.add_argument("--model", required=True)
    parser.add_argument("--stream", action="store_true")
    opts = parser.parse_args()
    asyncio.run(measure(opts.port, opts.pid, opts.model, opts.stream))
