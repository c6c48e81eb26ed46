"""Starting the real gateway (`loragate serve`, vLLM, the embedded model) as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 600  # vLLM starts in ~30 s alone; CI machines may share their two cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    port: int
    legacy_port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def legacy_url(self) -> str:
        return f"http://127.0.0.1:{self.legacy_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_gateway(log_path: Path, extra_args: Sequence[str] = ()) -> Iterator[Gateway]:
    port, legacy_port = free_port(), free_port()
    args = [
        sys.executable, "-m", "loragate.cli", "serve",
        "--port", str(port),
        "--legacy-port", str(legacy_port),
        "--kv-cache-memory-fraction", os.environ.get("LORAGATE_TEST_KV_FRACTION", "0.2"),
        # Four slots, as many as the persona tests' adapters: a batch of them fills the last
        # slot, the one vLLM's CPU ops leak to base-model tokens without the isolation plugin.
        "--max-loras", "4",
        *extra_args,
    ]  # fmt: skip
    if "--state-dir" not in extra_args:  # its own: nothing saved by another run comes back
        args += ["--state-dir", str(log_path.with_suffix(".state"))]
    log = log_path.open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    gateway = Gateway(port, legacy_port, log_path, process)
    try:
        _wait_healthy(gateway)
        yield gateway
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _wait_healthy(gateway: Gateway) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway exited during start-up:\n{gateway.log()[-5000:]}")
        try:
            if httpx.get(f"{gateway.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"gateway not healthy after {STARTUP_TIMEOUT_S} s:\n{gateway.log()[-5000:]}")
