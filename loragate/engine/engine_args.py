"""The engine arguments loragate gives vLLM: named settings, platform defaults, pass-through.

A default that differs between the CPU and a GPU is decided here, from vLLM's own platform
detection (`vllm.platforms.current_platform`), and nowhere else. `loragate engine-args` prints
the result without starting an engine.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loragate.settings import EngineSettings

# The CPU backend reads gpu_memory_utilization as the share of one NUMA node's RAM for the KV
# cache, and vLLM's 0.9 does not fit there beside the weights and the rest of the system.
CPU_KV_CACHE_FRACTION = 0.3
# bf16 where the CPU computes it natively (the embedded model is stored in it). An x86 CPU
# without AVX-512 BF16 or AMX emulates it, slower than fp32 itself: 68.6 against 113.2 tokens/s
# at 16 concurrent streams on a 2-core Xeon with AVX-512 only (`python -m benchmarks.dtype`).
CPU_DTYPE = "bfloat16"
CPU_DTYPE_WITHOUT_BF16 = "float32"
# Enough for the CPU's throughput; vLLM's CPU server default (128 per worker) only adds
# scheduling work on a 2-core machine.
CPU_MAX_NUM_SEQS = 64
# vLLM's "auto" context: the model's own, shortened to what fits the KV cache.
AUTO_MAX_MODEL_LEN = -1

# Set by loragate itself, or by a named setting: the pass-through may not name them.
_OWNED = frozenset(
    {"model", "served_model_name", "enable_lora", "max_loras", "max_cpu_loras", "seed"}
)


@dataclass(frozen=True)
class Platform:
    """What vLLM detected: its platform's name, and the first device's name and memory."""

    name: str  # vLLM's device_type: "cpu", "cuda", "rocm"...
    is_cpu: bool
    device_name: str = ""
    device_memory_bytes: int = 0
    # A CPU's: it computes bf16 in hardware. GPUs leave the choice to vLLM's "auto".
    native_bf16: bool = True


def detect_platform() -> Platform:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return Platform(name="cpu", is_cpu=True, native_bf16=_cpu_computes_bf16())
    try:
        name = str(current_platform.get_device_name())
        memory = int(current_platform.get_device_total_memory())
    except Exception:  # a node without the device (a Ray head): vLLM's own fallback
        name, memory = "", 0
    return Platform(str(current_platform.device_type), False, name, memory)


def _cpu_computes_bf16() -> bool:
    """On x86, vLLM's own test for its bf16 CPU kernels (AVX-512 BF16), or AMX: vLLM lists bf16
    there whether or not the CPU has them. Elsewhere (Arm, POWER, RISC-V), vLLM's
    `supported_dtypes`, which leaves bf16 out where the CPU lacks it (Apple's M1)."""
    import torch
    from vllm.platforms import CpuArchEnum, current_platform

    if current_platform.get_cpu_architecture() == CpuArchEnum.X86:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return torch.bfloat16 in current_platform.supported_dtypes


class UnknownEngineArgumentError(ValueError):
    pass


def engine_kwargs(
    settings: EngineSettings, model_path: str, served_name: str, platform: Platform
) -> dict[str, Any]:
    """AsyncEngineArgs' keyword arguments; what is left out is vLLM's own default."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "served_model_name": [served_name],
        "max_model_len": settings.max_model_len or AUTO_MAX_MODEL_LEN,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "enable_lora": settings.enable_lora,
        "max_loras": settings.max_loras,
        "max_lora_rank": settings.max_lora_rank,
        "max_cpu_loras": settings.max_cpu_loras,
        "seed": settings.seed,
        "enforce_eager": settings.enforce_eager,
    }
    optional = {
        **_platform_defaults(settings, platform),
        "distributed_executor_backend": settings.distributed_executor_backend,
        "quantization": settings.quantization,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "kv_cache_dtype": settings.kv_cache_dtype,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
    }
    passed = _pass_through(settings.engine, named={*kwargs, *optional})
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    return {**kwargs, **passed}


def _platform_defaults(settings: EngineSettings, platform: Platform) -> dict[str, Any]:
    chosen: dict[str, Any] = {
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.kv_cache_memory_fraction,
        "max_num_seqs": settings.max_num_seqs,
    }
    if platform.is_cpu:
        cpu = {
            "dtype": CPU_DTYPE if platform.native_bf16 else CPU_DTYPE_WITHOUT_BF16,
            "gpu_memory_utilization": CPU_KV_CACHE_FRACTION,
            "max_num_seqs": CPU_MAX_NUM_SEQS,
        }
        chosen = {key: cpu[key] if value is None else value for key, value in chosen.items()}
    else:  # a GPU: vLLM's own defaults for its OpenAI server (usage_context), dtype auto
        chosen["dtype"] = chosen["dtype"] or "auto"
    return chosen


def _pass_through(extra: Mapping[str, Any], *, named: set[str]) -> dict[str, Any]:
    if not extra:
        return {}
    known = engine_argument_names()
    for key in extra:
        if key in _OWNED or key in named:
            raise UnknownEngineArgumentError(
                f"engine argument '{key}' is set by loragate: use its own setting "
                f"(--{key.replace('_', '-')}) rather than --engine"
            )
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownEngineArgumentError(
                f"'{key}' is not a vLLM engine argument (AsyncEngineArgs){hint}"
            )
    return dict(extra)


def engine_argument_names() -> set[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def build_engine_args(
    settings: EngineSettings, model_path: str, served_name: str, platform: Platform | None = None
) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    platform = platform or detect_platform()
    return AsyncEngineArgs(**engine_kwargs(settings, model_path, served_name, platform))


def server_usage_context() -> Any:
    """vLLM's OpenAI server's usage context: its batch defaults (max_num_seqs...) apply."""
    from vllm.usage.usage_lib import UsageContext

    return UsageContext.OPENAI_API_SERVER


def vllm_batch_defaults(platform: Platform, world_size: int) -> dict[str, int]:
    """What vLLM's OpenAI server picks for max_num_seqs and max_num_batched_tokens on
    `platform` when they are left to it (computed by vLLM's own `get_batch_defaults`)."""
    from unittest import mock

    from vllm.engine import arg_utils

    context = server_usage_context()
    with mock.patch.object(arg_utils, "current_platform", _StandIn(platform)):
        tokens, seqs = arg_utils.AsyncEngineArgs.get_batch_defaults(world_size)
    return {"max_num_seqs": seqs[context], "max_num_batched_tokens": tokens[context]}


class _StandIn:
    """The few questions get_batch_defaults asks vLLM's platform, answered for `platform`."""

    def __init__(self, platform: Platform):
        self._platform = platform

    def is_cpu(self) -> bool:
        return self._platform.is_cpu

    def is_tpu(self) -> bool:
        return self._platform.name == "tpu"

    def get_device_total_memory(self) -> int:
        return self._platform.device_memory_bytes

    def get_device_name(self) -> str:
        return self._platform.device_name


def simulated_platform(name: str, memory_gib: float = 0, device_name: str = "") -> Platform:
    """A platform described rather than detected: to show what a GPU host would get."""
    return Platform(name, name == "cpu", device_name, int(memory_gib * 2**30))


def describe(
    settings: EngineSettings, model_path: str, served_name: str, platform: Platform
) -> dict[str, Any]:
    """What `loragate serve` would give vLLM on `platform`, and what vLLM fills in itself."""
    kwargs = engine_kwargs(settings, model_path, served_name, platform)
    world = kwargs["tensor_parallel_size"] * kwargs["pipeline_parallel_size"]
    left_to_vllm = {
        key: value
        for key, value in vllm_batch_defaults(platform, world).items()
        if key not in kwargs
    }
    if "gpu_memory_utilization" not in kwargs:
        left_to_vllm["gpu_memory_utilization"] = _vllm_default("gpu_memory_utilization")
    return {
        "platform": dataclasses.asdict(platform),
        "engine_args": kwargs,
        "usage_context": server_usage_context().value,
        "left_to_vllm": left_to_vllm,
        "model_context_length": model_context_length(model_path),
    }


def _vllm_default(name: str) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return next(f.default for f in dataclasses.fields(AsyncEngineArgs) if f.name == name)


def model_context_length(model_path: str) -> int | None:
    """The model's own context (config.json's max_position_embeddings), read without weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    length = getattr(text, "max_position_embeddings", None)
    return int(length) if length is not None else None
