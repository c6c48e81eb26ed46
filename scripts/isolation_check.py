"""Reproduce vLLM's CPU LoRA isolation bug on AsyncLLM directly, and time the fix's cost.

    PYTHONPATH=. python scripts/isolation_check.py repro   # base requests batched beside an adapter
    PYTHONPATH=. python scripts/isolation_check.py bench   # 16 concurrent requests, one adapter
    PYTHONPATH=. python scripts/isolation_check.py ops     # the ops alone, vLLM's vs isolated

loragate's plugin (loragate.engine.cpu_lora.isolation) is on by default;
LORAGATE_CPU_LORA_PATCH=0 (or VLLM_PLUGINS=lora_filesystem_resolver, a list without
`loragate_lora_isolation`) turns it off, which shows the bug.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

PROMPT = "Write one sentence about the sea."
ADAPTER_DIR = Path(os.environ.get("ISOLATION_ADAPTER_DIR", "/tmp/loragate-isolation-adapter"))


def _adapter() -> Path:
    if not (ADAPTER_DIR / "adapter_config.json").exists():
        from tests.integration.lora_factory import make_lora_adapter

        make_lora_adapter(ADAPTER_DIR, seed=1, std=1.0)
    return ADAPTER_DIR


def _engine(max_loras: int) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from loragate.default_model import ensure_default_model

    args = AsyncEngineArgs(
        model=str(ensure_default_model()),
        max_model_len=2048,
        dtype="bfloat16",
        gpu_memory_utilization=0.2,
        enable_lora=True,
        max_loras=max_loras,
        max_lora_rank=16,
        max_cpu_loras=4,
        seed=0,
    )
    return AsyncLLM.from_engine_args(args)


async def _generate(llm: Any, ids: list[int], lora: Any, max_tokens: int, ignore_eos: bool) -> Any:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    final = None
    async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex,
                                  lora_request=lora):  # fmt: skip
        final = out
    assert final is not None
    return final.outputs[0]


def _prompt_ids(llm: Any) -> list[int]:
    from loragate.prompting import render_prompt_ids

    return render_prompt_ids(llm.get_tokenizer(), [{"role": "user", "content": PROMPT}])


async def repro() -> None:
    from vllm.lora.request import LoRARequest

    lora = LoRARequest("gibberish", 1, str(_adapter()))
    llm = _engine(max_loras=1)
    try:
        ids = _prompt_ids(llm)
        base_solo = (await _generate(llm, ids, None, 24, False)).text
        adapter_solo = (await _generate(llm, ids, lora, 24, False)).text
        print(f"base solo:    {base_solo!r}\nadapter solo: {adapter_solo!r}")
        targets = [None] * 4 + [lora] * 4
        outs = await asyncio.gather(*(_generate(llm, ids, t, 24, False) for t in targets))
        for target, out in zip(targets, outs, strict=True):
            want = base_solo if target is None else adapter_solo
            kind = "base   " if target is None else "adapter"
            print(f"{kind} batched: {'OK  ' if out.text == want else 'DIFF'} {out.text!r}")
        leaked = sum(o.text == adapter_solo for t, o in zip(targets, outs, strict=True) if not t)
        print(f"base requests served with the adapter: {leaked}/4")
    finally:
        llm.shutdown()


async def bench(requests: int, max_tokens: int) -> None:
    from vllm.lora.request import LoRARequest

    lora = LoRARequest("gibberish", 1, str(_adapter()))
    llm = _engine(max_loras=4)
    try:
        ids = _prompt_ids(llm)
        await _generate(llm, ids, lora, 8, True)  # warm-up: load the adapter
        plans: list[tuple[str, list[Any]]] = [
            ("one adapter", [lora] * requests),
            ("half base, half adapter", [None, lora] * (requests // 2)),
        ]
        for label, targets in plans:
            start = time.perf_counter()
            outs = await asyncio.gather(
                *(_generate(llm, ids, t, max_tokens, True) for t in targets)
            )
            elapsed = time.perf_counter() - start
            tokens = sum(len(o.token_ids) for o in outs)
            print(f"{label}: {requests} concurrent, {tokens} tokens, {tokens / elapsed:.1f} tok/s")
    finally:
        llm.shutdown()


# (tokens, adapters in the batch): a prefill, decode steps on one and on many personas.
OPS_CASES = [(1600, 1), (1600, 8), (256, 8), (64, 8), (32, 8), (16, 8), (4, 4), (16, 1), (1, 1)]


def ops(
    hidden: int = 576, out: int = 1536, rank: int = 16, slots: int = 8, threads: int = 2
) -> None:
    """Time one shrink+expand pair (the default model's MLP shapes), vLLM's op and loragate's."""
    import inspect

    import torch
    from vllm.lora.ops.torch_ops import lora_ops

    from loragate.engine.cpu_lora.isolation import isolated

    torch.set_num_threads(threads)  # the engine's worker: every core here (--cpu-reserved-cores)
    shrink, expand = (inspect.unwrap(getattr(lora_ops, n)) for n in ("bgmv_shrink", "bgmv_expand"))
    lora_a = torch.randn(slots, 1, rank, hidden, dtype=torch.bfloat16)
    lora_b = torch.randn(slots, 1, out, rank, dtype=torch.bfloat16)
    variants = {"vLLM": (shrink, expand), "loragate": (isolated(shrink), isolated(expand))}
    for tokens, adapters in OPS_CASES:
        x = torch.randn(tokens, hidden, dtype=torch.bfloat16)
        indices = torch.arange(tokens) % adapters
        half_on_base = torch.where(torch.arange(tokens) % 2 == 0, -1, indices)
        for label, rows in [("", indices), (", half on the base", half_on_base)]:
            best = dict.fromkeys(variants, float("inf"))
            for _ in range(5):  # interleaved rounds, best of each: the machine is shared
                for name, (s, e) in variants.items():
                    start, n = time.perf_counter(), max(3, 3000 // tokens)
                    for _ in range(n):
                        buffer = torch.zeros(tokens, rank)
                        y = torch.zeros(tokens, out, dtype=torch.bfloat16)
                        s(x, lora_a, buffer, rows, 1.0)
                        e(buffer, lora_b, y, rows, True)
                    best[name] = min(best[name], (time.perf_counter() - start) / n * 1e3)
            timings = ", ".join(f"{k} {v:.3f} ms" for k, v in best.items())
            print(f"{tokens} tokens on {adapters} adapter(s){label}: {timings}")


if __name__ == "__main__":  # AsyncLLM spawns its engine core: the guard is required
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["repro", "bench", "ops"])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    opts = parser.parse_args()
    print(f"VLLM_PLUGINS={os.environ.get('VLLM_PLUGINS', '(unset: all plugins)')}")
    if opts.mode == "repro":
        asyncio.run(repro())
    elif opts.mode == "bench":
        asyncio.run(bench(opts.requests, opts.max_tokens))
    else:
        ops()
