"""Run as a program: `python -m tests.integration.restart_probe STATE_DIR RESTARTS`.

Starts the engine as `loragate serve` does, in a fresh interpreter (where serving imports vLLM
for the first time, as in production: a frame an import keeps alive keeps what it held), kills
the engine core RESTARTS times, and prints as JSON, per dead engine, which of it, its AsyncLLM
and its tokenizer are still alive once the new engine answers, with the process' RSS.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import weakref
from pathlib import Path
from typing import Any

import psutil

from loragate.engine.supervisor import SupervisedEngine
from loragate.engine.types import SamplingOptions
from loragate.server.runtime import vllm_state
from loragate.settings import ServerSettings


async def answer(engine: SupervisedEngine, request_id: str) -> None:
    prompt = engine.tokenizer.encode("Hello, how are you?")
    async for _ in engine.generate(prompt, SamplingOptions(max_tokens=8), request_id):
        pass


def kill_engine_core() -> None:
    for child in psutil.Process().children(recursive=True):
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
            child.send_signal(signal.SIGKILL)


async def until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.1)


async def probe(state_dir: Path, restarts: int) -> dict[str, Any]:
    dead: list[dict[str, weakref.ref[Any]]] = []
    rss_mib: list[float] = []
    async with vllm_state(ServerSettings(state_dir=state_dir)) as state:
        engine = state.engine
        assert isinstance(engine, SupervisedEngine)
        for restart in range(restarts + 1):
            await answer(engine, f"probe-{restart}")
            gc.collect()
            rss_mib.append(psutil.Process().memory_info().rss / 2**20)
            if restart == restarts:
                break
            current: Any = engine._engine
            parts = {"engine": current, "llm": current._llm, "tokenizer": current.tokenizer}
            dead.append({name: weakref.ref(part) for name, part in parts.items()})
            del current, parts
            kill_engine_core()
            await until(lambda: engine.state != "ok")
            await until(lambda: engine.state == "ok")
        gc.collect()
        alive = [[name for name, ref in refs.items() if ref() is not None] for refs in dead]
    return {"alive": alive, "rss_mib": rss_mib}


if __name__ == "__main__":  # vLLM's engine core is spawned: it re-imports this module
    print(json.dumps(asyncio.run(probe(Path(sys.argv[1]), int(sys.argv[2])))))
