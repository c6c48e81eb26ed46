"""The load client: an asyncio client that times every streamed token of every request.

Why not `vllm bench serve`: it starts its TTFT clock stop at the first chunk with `choices`,
which in loragate's stream is the role chunk sent before the engine has produced anything; it
would flatter loragate's TTFT. This client stops it at the first chunk carrying content, for
every server alike. It also drives the tutorial's non-streaming server with the same requests,
picks each request's persona exactly (round-robin), and imports no vLLM (less CPU taken from the
two cores the servers share with it).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class RequestRecord:
    ok: bool
    start: float  # perf_counter at send
    end: float = 0.0
    ttft: float | None = None  # seconds to the first content token (whole answer if unstreamed)
    itl: list[float] = field(default_factory=list)  # gaps between content chunks, seconds
    output_tokens: int = 0
    prompt_tokens: int = 0  # as the server counted them (`usage`): checks every server's prompt
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class LevelRun:
    records: list[RequestRecord]
    wall_s: float
    load_1min: float = math.nan  # the machine's load average when the level ended
    others_cores: float = 0.0  # the most CPU other processes used while it ran (5-s windows)
    attempt: int = 1  # a level disturbed by others is run again (see --wait-quiet)


def client_session(keep_alive: bool = True) -> aiohttp.ClientSession:
    """`keep_alive=False` opens a connection per request, as the tutorial's `requests.post` does.

    The tutorial's server blocks its event loop while it generates; a request sent on a kept-alive
    connection can then meet the server's keep-alive timeout first and be reset.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=not keep_alive),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=900),
    )


async def run_level(
    session: aiohttp.ClientSession, url: str, bodies: Sequence[dict[str, Any]], concurrency: int
) -> LevelRun:
    """Closed loop: `concurrency` requests in flight until all bodies are sent and answered."""
    queue = list(reversed(bodies))
    records: list[RequestRecord] = []

    async def worker() -> None:
        while queue:
            records.append(await send(session, url, queue.pop()))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
    return LevelRun(records, time.perf_counter() - start)


async def send(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> RequestRecord:
    record = RequestRecord(ok=False, start=time.perf_counter())
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            elif body.get("stream"):
                await _read_stream(response, record)
            else:
                _read_whole(await response.json(), record)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.end = time.perf_counter()
    return record


async def _read_stream(response: aiohttp.ClientResponse, record: RequestRecord) -> None:
    last_token_at: float | None = None
    chunks = 0
    usage: dict[str, int] = {}
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        now = time.perf_counter()
        event = json.loads(payload)
        if "error" in event:
            record.error = str(event["error"].get("message"))[:200]
            return
        if event.get("usage"):
            usage = event["usage"]
        if not any(c.get("delta", {}).get("content") for c in event.get("choices") or []):
            continue
        chunks += 1
        if last_token_at is None:
            record.ttft = now - record.start
        else:
            record.itl.append(now - last_token_at)
        last_token_at = now
    record.output_tokens = usage.get("completion_tokens", chunks)
    record.prompt_tokens = usage.get("prompt_tokens", 0)
    record.ok = record.ttft is not None
    if not record.ok:
        record.error = "the stream carried no content"


def _read_whole(data: dict[str, Any], record: RequestRecord) -> None:
    record.end = time.perf_counter()
    record.ttft = record.end - record.start  # the first token arrives with the last
    record.output_tokens = int(data["usage"]["completion_tokens"])
    record.prompt_tokens = int(data["usage"]["prompt_tokens"])
    record.ok = True
