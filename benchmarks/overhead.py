"""The gateway's own overhead: wrk against loragate over the instant engine.

wrk is compiled and event-driven, so one thread of it saturates a Python server while using
a fraction of a core. The server is pinned to CPU 0 and wrk to CPU 1 (taskset), so the load
generator does not eat the core it measures. wrk's Lua `done` hook prints its figures as JSON.

Each run is made twice: on a gateway without keys, and on one with a thousand keys defined
(each with limits), wrk sending one of them: what key checks and rate limits cost.
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
from loragate.tenants.key_store import KeyStore
from loragate.tenants.keys import ApiKey, Limits

SERVER_CPU = "0"
WRK_CPU = "1"
_JSON_MARK = "WRK_JSON "

KEYS_DEFINED = 1000
# High enough never to refuse a request of the run: the limits are counted, not hit.
_UNREACHED = Limits(rpm=10**9, tpm=10**12, max_parallel=10**6)
_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(auth)s
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
    keys: int = 0  # keys defined on the gateway (0: the API is open)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_script(body: dict[str, Any], key: str | None = None) -> str:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    return _LUA % {"body": json.dumps(body), "mark": _JSON_MARK, "auth": auth}


def define_keys(state_dir: Path, count: int) -> str:
    """`count` keys with limits in `state_dir`; the secret of one of them."""
    store = KeyStore(state_dir)
    try:
        secrets = [
            store.create(ApiKey(f"bench-{n:04d}", limits=_UNREACHED))[1] for n in range(count)
        ]
    finally:
        store.close()
    return secrets[count // 2]


def parse_wrk(output: str, stream: bool, concurrency: int, keys: int = 0) -> OverheadResult:
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
        keys=keys,
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
    for keys in (0, KEYS_DEFINED):
        state_dir = work_dir / f"state-{keys}-keys"
        shutil.rmtree(state_dir, ignore_errors=True)
        key = define_keys(state_dir, keys) if keys else None
        spec = instant_spec(model_dir, plan.overhead_reply_tokens, SERVER_CPU, state_dir)
        with running(spec, work_dir / "logs") as server:
            url = f"{server.url}/v1/chat/completions"
            for stream in (False, True):
                body = chat_body(base_model, prompt, plan.overhead_reply_tokens, stream)
                script = work_dir / f"chat-{'stream' if stream else 'whole'}-{keys}-keys.lua"
                script.write_text(wrk_script(body, key))
                run_wrk(url, script, 8, 2)  # warm-up: first-request imports, allocator, caches
                for connections in plan.overhead_concurrencies:
                    if quiet:
                        wait_until_quiet(None, 3)
                    output = run_wrk(url, script, connections, plan.overhead_seconds)
                    results.append(parse_wrk(output, stream, connections, keys))
                    print(f"  instant engine, {keys} keys, stream={stream}, c={connections}: "
                          f"{results[-1]}")  # fmt: skip
    return results
