"""Soak and chaos run of a gateway: mixed traffic for a long time while personas churn, the
engine core is SIGKILLed once and a burst overruns the admission bound; then what was lost.

    .venv/bin/python scripts/soak.py                      # 30 min at 16 concurrent, its own server
    .venv/bin/python scripts/soak.py --duration 150 --warmup 30 --churn-interval 20   # smoke
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8000 --max-num-seqs 64 ...

Without --url it starts `loragate serve` itself (free ports, the embedded default model, a
temporary --state-dir, --max-num-seqs and --max-waiting-requests as given here, the bundles'
directories as --adapter-root). Persona bundles come from --bundle (at least two: a swap puts
another bundle under the same name). A bundle is a `loragate train` output, e.g.
`loragate train --data huanhuan.json --max-rows 32 --max-steps 5 --output DIR/zhenhuan`, or
any peft adapter of the served model; without --bundle, three random rank-8 adapters are made
(once, in --bundle-dir) by the integration tests' factory, tests/integration/lora_factory.py,
which needs the `train` extra (torch, peft).

Exit status 0 only when no request was lost, the engine came back after the kill, and neither
the gateway's RSS nor its engine processes' grew more than --max-rss-growth % after the warm-up.
RSS is also shown just before the kill and a warm-up after the recovery, to tell what one
engine restart costs from growth over time. The rules of what counts as ok, a clear error and
lost are in scripts/soak_report.py. Run from the repository's root, in its dev venv.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository's root, for scripts.* and tests.*
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import json
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from scripts.soak_report import (
    ChaosEvent,
    HealthSample,
    Outcome,
    Results,
    Rss,
    Tally,
    chaos_schedule,
    classify_response,
    classify_stream,
    classify_transport,
    envelope_code,
    parse_json,
    plan_call,
    recovery_after,
    sse_payloads,
)

HEALTH_POLL_S = 0.2
ADMIN_RETRY_S = 120.0  # a persona PUT during the engine's restart gets 503s for that long at most


class Options:
    """The flags, typed (argparse fills every one: its defaults are below)."""

    url: str | None
    gateway_pid: int | None
    api_key: str | None
    concurrency: int
    duration: float
    warmup: float
    max_num_seqs: int
    max_waiting_requests: int
    burst_factor: float
    bundle: list[Path]
    bundle_dir: Path
    personas: int
    churn_interval: float
    readd_gap: float
    kill: bool
    burst: bool
    max_tokens: int
    request_timeout: float
    max_backoff: float
    max_rss_growth: float
    seed: int
    workdir: Path | None
    serve_arg: list[str]
    json: Path | None


class _Help(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        quiet = default in (None, argparse.SUPPRESS) or isinstance(default, bool | list)
        return (action.help or "") + ("" if quiet else " (default: %(default)s)")


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    add = p.add_argument
    add("--url", help="attach to this running gateway instead of starting one")
    add("--gateway-pid", type=int, help="with --url: its pid (default: the port's listener)")
    add("--api-key", help="bearer key of the gateway (admin too)")
    add("--concurrency", type=int, default=16, help="traffic workers")
    add("--duration", type=float, default=1800, help="seconds of traffic, warm-up included")
    add("--warmup", type=float, default=60, help="seconds of plain traffic before RSS and chaos")
    add("--max-num-seqs", type=int, default=16, help="the server's; sizes the burst")
    add("--max-waiting-requests", type=int, default=16, help="the server's admission bound")
    add("--burst-factor", type=float, default=3.0, help="burst = this x (seqs + waiting)")
    add("--bundle", type=Path, action="append", default=[], help="persona bundle (repeatable)")
    tmp = Path(tempfile.gettempdir())
    add(
        "--bundle-dir",
        type=Path,
        default=tmp / "loragate-soak-bundles",
        help="where the random adapters go without --bundle",
    )
    add("--personas", type=int, default=2, help="personas registered")
    add("--churn-interval", type=float, default=30, help="seconds between persona swaps/re-adds")
    add("--readd-gap", type=float, default=1.0, help="seconds a deleted persona stays away")
    add("--no-kill", dest="kill", action="store_false", help="do not SIGKILL the engine core")
    add("--no-burst", dest="burst", action="store_false", help="no burst beyond admission")
    add("--max-tokens", type=int, default=48, help="largest max_tokens of a request")
    add("--request-timeout", type=float, default=180, help="a request slower is lost")
    add("--max-backoff", type=float, default=2.0, help="cap of Retry-After honoured by workers")
    add("--max-rss-growth", type=float, default=5.0, help="percent allowed after the warm-up")
    add("--seed", type=int, default=0, help="of the traffic's random mix")
    add("--workdir", type=Path, help="the started gateway's log and state (default: a temp dir)")
    add("--serve-arg", action="append", default=[], help="extra `serve` flag, as =--flag")
    add("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv, namespace=Options())
    if args.duration <= args.warmup:
        p.error("--duration must exceed --warmup")
    return args


@dataclass
class Run:
    args: Options
    url: str
    pid: int | None
    base: str = ""
    personas: dict[str, int] = field(default_factory=dict)  # name -> index of its bundle
    bundles: list[Path] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    health: list[HealthSample] = field(default_factory=list)
    chaos_log: list[tuple[float, str, str]] = field(default_factory=list)
    kill_at: float | None = None
    rss_before_kill: tuple[int, int, int] | None = None
    rss_after_recovery: tuple[int, int, int] | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)  # per persona
    t0: float = field(default_factory=time.monotonic)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def until(self, at: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, at - self.now()))

    def client(self, connections: int) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.args.api_key}"} if self.args.api_key else {}
        return httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=self.args.request_timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )


# -- Requests -------------------------------------------------------------------------------


async def send(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], timeout: float
) -> tuple[Outcome, float | None]:
    """One request, classified; and the Retry-After it came with, if any."""
    try:
        async with asyncio.timeout(timeout):
            if not body.get("stream"):
                response = await client.post(path, json=body)
                return classify_response(response.status_code, response.content), _retry(response)
            async with client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    content = await response.aread()
                    return classify_response(response.status_code, content), _retry(response)
                lines = [line async for line in response.aiter_lines()]
                return classify_stream(sse_payloads(lines)), None
    except (httpx.HTTPError, TimeoutError) as exc:
        return classify_transport(exc), None


def _retry(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


async def worker(run: Run, client: httpx.AsyncClient, n: int) -> None:
    rng = random.Random(run.args.seed * 1000 + n)
    while not run.stop.is_set():
        path, body = plan_call(rng, run.base, sorted(run.personas), run.args.max_tokens)
        began = time.monotonic()
        outcome, retry_after = await send(client, path, body, run.args.request_timeout)
        run.tally.record("traffic", outcome, time.monotonic() - began)
        if outcome.category != "ok":  # as a client would: not a hot loop of refusals
            await asyncio.sleep(min(retry_after or 0.2, run.args.max_backoff))


async def watch_health(run: Run, client: httpx.AsyncClient) -> None:
    while not run.stop.is_set():
        try:
            response = await client.get("/health", timeout=2.0)
            body = response.json() if response.status_code in (200, 503) else None
            status = body.get("status") if isinstance(body, dict) else None
            run.health.append((run.now(), str(status or f"http {response.status_code}")))
        except (httpx.HTTPError, ValueError):
            run.health.append((run.now(), "unreachable"))
        await asyncio.sleep(HEALTH_POLL_S)


# -- Chaos ----------------------------------------------------------------------------------


async def admin(run: Run, client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> str:
    """A persona API call, retried while the gateway answers 503/429 (an engine restarting)."""
    deadline = time.monotonic() + ADMIN_RETRY_S
    while True:
        try:
            response = await client.request(method, path, **kw)
            if response.status_code < 300:
                return str(response.status_code)
            result = f"http {response.status_code} {envelope_code(parse_json(response.content))}"
            if response.status_code not in (429, 503):
                return result
        except httpx.HTTPError as exc:
            result = f"{type(exc).__name__}"
        if time.monotonic() > deadline or run.stop.is_set():
            return f"FAILED {result}"
        await asyncio.sleep(1.0)


async def put_persona(run: Run, client: httpx.AsyncClient, name: str) -> str:
    path = run.bundles[run.personas[name] % len(run.bundles)]
    return await admin(run, client, "PUT", f"/v1/personas/{name}", json={"path": str(path)})


async def act(run: Run, client: httpx.AsyncClient, event: ChaosEvent, n: int) -> None:
    name = sorted(run.personas)[n % len(run.personas)]
    if event.action in ("swap", "readd"):
        async with run.locks.setdefault(name, asyncio.Lock()):  # one change of it at a time
            result = await churn(run, client, event, name)
    elif event.action == "kill":
        run.rss_before_kill = rss_now(run.pid)
        result = kill_engine(run)
        run.background.append(asyncio.create_task(sample_after_recovery(run)))
    else:
        result = await burst(run)
    run.chaos_log.append((event.at, event.action, result))


async def churn(run: Run, client: httpx.AsyncClient, event: ChaosEvent, name: str) -> str:
    if event.action == "swap":
        run.personas[name] += 1
        result = f"{name} -> bundle {run.personas[name] % len(run.bundles)}: "
        result += await put_persona(run, client, name)
        return result
    result = f"{name}: DELETE {await admin(run, client, 'DELETE', f'/v1/personas/{name}')}"
    await asyncio.sleep(run.args.readd_gap)
    return result + f", PUT {await put_persona(run, client, name)}"


def kill_engine(run: Run) -> str:
    cores = engine_cores(run.pid)
    for core in cores:
        with contextlib.suppress(psutil.NoSuchProcess):
            core.send_signal(signal.SIGKILL)
    if not cores:
        return "FAILED: no EngineCore process among the gateway's children"
    run.kill_at = run.now()
    return "SIGKILL " + ", ".join(f"{c.name()} pid {c.pid}" for c in cores)


async def sample_after_recovery(run: Run) -> None:
    """RSS once the new engine has served for a warm-up: growth from here to the end is the
    gateway's over time, apart from what one restart costs."""
    while run.kill_at is not None and recovery_after(run.health, run.kill_at) is None:
        if run.stop.is_set():
            return
        await asyncio.sleep(HEALTH_POLL_S)
    await run.until(run.now() + run.args.warmup)
    if not run.stop.is_set():
        run.rss_after_recovery = rss_now(run.pid)


async def burst(run: Run) -> str:
    n = int(run.args.burst_factor * (run.args.max_num_seqs + run.args.max_waiting_requests))
    body = {
        "model": run.base,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
    }
    async with run.client(n) as client:
        path, timeout = "/v1/chat/completions", run.args.request_timeout
        results = await asyncio.gather(*(send(client, path, body, timeout) for _ in range(n)))
    for outcome, _ in results:
        run.tally.record("burst", outcome)
    kinds = sorted({o.kind for o, _ in results})
    counts = ", ".join(f"{sum(o.kind == k for o, _ in results)} {k}" for k in kinds)
    return f"{n} concurrent: {counts}"


async def chaos(run: Run, client: httpx.AsyncClient, schedule: list[ChaosEvent]) -> None:
    tasks, churned = [], 0
    for event in schedule:
        await run.until(event.at)
        if run.stop.is_set():
            break
        tasks.append(asyncio.create_task(act(run, client, event, churned)))
        churned += event.action in ("swap", "readd")  # each persona churned in turn
    await asyncio.gather(*tasks)


# -- Processes ------------------------------------------------------------------------------


def engine_cores(pid: int | None) -> list[psutil.Process]:
    found = []
    for child in _children(pid):
        with contextlib.suppress(psutil.Error):
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                found.append(child)
    return found


def _children(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def rss_now(pid: int | None) -> tuple[int, int, int]:
    """The gateway's RSS, its child processes' summed (the engine), and how many those are."""
    if pid is None:
        return 0, 0, 0
    try:
        own = psutil.Process(pid).memory_info().rss
    except psutil.NoSuchProcess:
        return 0, 0, 0
    engine, count = 0, 0
    for child in _children(pid):
        with contextlib.suppress(psutil.Error):
            engine += child.memory_info().rss
            count += 1
    return own, engine, count


def listener_pid(url: str) -> int | None:
    port = httpx.URL(url).port
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


# -- The run --------------------------------------------------------------------------------


def bundles(args: Options) -> list[Path]:
    if args.bundle:
        return [path.resolve() for path in args.bundle]
    from tests.integration.lora_factory import make_lora_adapter
    from tests.integration.persona_support import PERSONA_STD

    made = []
    for seed in (1, 2, 3):
        out = (args.bundle_dir / f"soak-{seed}").resolve()
        if not (out / "adapter_config.json").exists():
            print(f"making a random adapter in {out}", flush=True)
            make_lora_adapter(out, seed=seed, std=PERSONA_STD)
        made.append(out)
    return made


async def setup(run: Run, client: httpx.AsyncClient) -> None:
    cards = (await client.get("/v1/models")).raise_for_status().json()["data"]
    run.base = next(card["id"] for card in cards if not card.get("parent"))
    for i in range(run.args.personas):
        name = f"soak-{i}"
        run.personas[name] = i
        result = await put_persona(run, client, name)
        if not result.startswith("20"):
            raise SystemExit(f"could not register persona {name}: {result}")


async def soak(run: Run) -> list[Rss]:
    """The traffic, the health watch and the chaos; the RSS samples (gateway, engine)."""
    args = run.args
    async with run.client(args.concurrency + 4) as client, run.client(4) as control:
        await setup(run, control)
        run.t0 = time.monotonic()
        schedule = chaos_schedule(
            args.duration, args.warmup, args.churn_interval, kill=args.kill, burst=args.burst
        )
        watch = asyncio.create_task(watch_health(run, control))
        workers = [asyncio.create_task(worker(run, client, n)) for n in range(args.concurrency)]
        await run.until(args.warmup)
        start = rss_now(run.pid)
        print(f"warm-up done at {run.now():.0f} s: {run.tally.total('ok')} ok", flush=True)
        chaotic = asyncio.create_task(chaos(run, control, schedule))
        await run.until(args.duration)
        end = rss_now(run.pid)
        run.stop.set()  # the workers finish the request they are in, then stop
        await asyncio.gather(*workers, chaotic)
        await asyncio.gather(*run.background)
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    if run.pid is None:
        return []  # attached, no process found: nothing to measure
    before = run.rss_before_kill or (None, None, None)
    after = run.rss_after_recovery or (None, None, None)
    procs = f"engine ({start[2]} -> {end[2]} processes)"
    return [
        Rss(f"gateway (pid {run.pid})", start[0], end[0], before[0], after[0]),
        Rss(procs, start[1], end[1], before[1], after[1]),
    ]


def report(run: Run, rss: list[Rss], elapsed: float) -> int:
    results = Results(
        tally=run.tally,
        chaos=run.chaos_log,
        health=run.health,
        kill_at=run.kill_at,
        rss=rss,
        elapsed=elapsed,
        ended_at=run.now(),
        concurrency=run.args.concurrency,
        warmup=run.args.warmup,
        max_growth_pct=run.args.max_rss_growth,
        kill_asked=run.args.kill,
    )
    print(results.render())
    if run.args.json:
        run.args.json.write_text(json.dumps(results.as_json(), indent=2))
    return 1 if results.failures() else 0


@contextlib.contextmanager
def gateway(args: Options, paths: list[Path]) -> Iterator[tuple[str, int | None]]:
    if args.url:
        pid = args.gateway_pid or listener_pid(args.url)
        if pid is None and args.kill:
            raise SystemExit("the gateway's process was not found: give --gateway-pid")
        yield args.url.rstrip("/"), pid
        return
    from tests.integration.gateway import running_gateway

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loragate-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    serve = ["--max-num-seqs", str(args.max_num_seqs)]
    serve += ["--max-waiting-requests", str(args.max_waiting_requests)]
    serve += ["--state-dir", str(workdir / "state")]
    for root in sorted({path.parent for path in paths}):
        serve += ["--adapter-root", str(root)]
    if args.api_key:
        serve += ["--api-key", args.api_key]
    log = workdir / "gateway.log"
    print(f"starting loragate serve (log: {log})", flush=True)
    with running_gateway(log, [*serve, *args.serve_arg]) as gw:
        print(f"gateway up at {gw.url}, pid {gw.process.pid}", flush=True)
        yield gw.url, gw.process.pid


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = bundles(args)
    if len(paths) < 2:
        raise SystemExit("give at least two --bundle: a swap puts another one under the name")
    with gateway(args, paths) as (url, pid):
        run = Run(args, url, pid, bundles=paths)
        started = time.monotonic()
        rss = asyncio.run(soak(run))
        return report(run, rss, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
