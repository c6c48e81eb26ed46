"""The environment vLLM's processes read: settings that only environment variables carry."""

from __future__ import annotations

import os

from loragate.engine.cpu_lora import PATCH_ENV
from loragate.engine.engine_args import Platform
from loragate.engine.tether import GATEWAY_PID_ENV
from loragate.settings import RESERVED_CPU_ENV, EngineSettings

THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def engine_environment(settings: EngineSettings, platform: Platform) -> dict[str, str]:
    """vLLM settings that only its environment variables carry."""
    # The engine core dies with this process (loragate.engine.tether, a vLLM plugin).
    environment = {GATEWAY_PID_ENV: str(os.getpid())}
    if not settings.cpu_lora_patch:
        environment[PATCH_ENV] = "0"
    if platform.is_cpu:
        reserved = settings.resolved_cpu_reserved_cores()
        if reserved is not None:
            environment[RESERVED_CPU_ENV] = str(reserved)
        binding = cpu_thread_binding(settings, sorted(os.sched_getaffinity(0)))
        if binding is not None:
            environment[THREADS_BIND_ENV] = binding
    return environment


def cpu_thread_binding(settings: EngineSettings, cores: list[int]) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for several CPU workers: the cores split among them.

    vLLM's own ("auto") binds worker N to NUMA node N, so two workers on a one-node machine
    fail to start ("Not enough allowed NUMA nodes"). Its list is in [DP, PP, TP] order.
    """
    workers = (
        settings.data_parallel_size
        * settings.pipeline_parallel_size
        * settings.tensor_parallel_size
    )
    if workers == 1 or THREADS_BIND_ENV in os.environ:
        return None
    if len(cores) < workers:
        raise ValueError(
            f"{workers} CPU workers (data x pipeline x tensor parallel) need at least {workers} "
            f"cores; this process may use {len(cores)}"
        )
    share = len(cores) // workers
    groups = [cores[i * share : (i + 1) * share] for i in range(workers)]
    return "|".join(",".join(map(str, group)) for group in groups)
