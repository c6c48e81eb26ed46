"""The gateway's own overhead: wrk against loragate over the instant engine.

wrk is compiled and event-driven, so one thread of it saturates a Python server while using
a fraction of a core. The server is pinned to CPU 0 and wrk to CPU 1 (taskset), so the load
generator does not eat the core it measures. wrk's Lua `done` hook prints its figures as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.machine import wait_until_quiet
from benchmarks.plan import Plan
from benchmarks.servers import instant_spec, running
from benchmarks.workload import chat_body

SERVER_CPU = "0"
WRK_CPU = "1"
_JSON_MARK = "WRK_JSON "

_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%(body)s]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "duration_us": %%d, "errors": %%d, "non_2xx": %%d, '
    .. '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "mean_us": %%f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class OverheadResult:
    stream: bool
    concurrency: int
    requests: int
    errors: int
    requests_per_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_script(body: dict[str, Any]) -> str:
    return _LUA % {"body": json.dumps(body), "mark": _JSON_MARK}


def parse_wrk(output: str, stream: bool, concurrency: int) -> OverheadResult:
    line = next(x for x in output.splitlines() if x.startswith(_JSON_MARK))
    data = json.loads(line.removeprefix(_JSON_MARK))
    return OverheadResult(
        stream=stream,
        concurrency=concurrency,
        requests=data["requests"],
        errors=data["errors"] + data["non_2xx"],
        requests_per_s=data["requests"] / (data["duration_us"] / 1e6),
        latency_p50_ms=data["p50_us"] / 1000,
        latency_p90_ms=data["p90_us"] / 1000,
        latency_p99_ms=data["p99_us"] / 1000,
    )


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> str:
    argv = [
        "taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60)
    return done.stdout


def measure_overhead(
    plan: Plan, model_dir: Path, base_model: str, prompt: str, work_dir: Path, quiet: bool
) -> list[OverheadResult]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    results = []
    spec = instant_spec(model_dir, plan.overhead_reply_tokens, cpus=SERVER_CPU)
    with running(spec, work_dir / "logs") as server:
        url = f"{server.url}/v1/chat/completions"
        for stream in (False, True):
            body = chat_body(base_model, prompt, plan.overhead_reply_tokens, stream)
            script = work_dir / f"chat-{'stream' if stream else 'whole'}.lua"
            script.write_text(wrk_script(body))
            run_wrk(url, script, 8, 2)  # warm-up: first-request imports, allocator, caches
            for connections in plan.overhead_concurrencies:
                if quiet:
                    wait_until_quiet(None, 3)
                output = run_wrk(url, script, connections, plan.overhead_seconds)
                results.append(parse_wrk(output, stream, connections))
                print(f"  instant engine, stream={stream}, c={connections}: {results[-1]}")
    return results
