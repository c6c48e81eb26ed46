"""Engine arguments by platform, decided from vLLM's platform detection (mocked for a GPU)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import vllm.platforms
from vllm.config.lora import MaxLoRARanks
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import CpuArchEnum, current_platform

from loragate.cli import build_parser
from loragate.cli_settings import settings_from_arguments
from loragate.engine import vllm_engine
from loragate.engine.engine_args import (
    Platform,
    UnknownEngineArgumentError,
    build_engine_args,
    detect_platform,
    engine_kwargs,
    simulated_platform,
    vllm_batch_defaults,
)
from loragate.engine.environment import THREADS_BIND_ENV, cpu_thread_binding, engine_environment
from loragate.engine.tether import GATEWAY_PID_ENV
from loragate.engine.vllm_engine import VllmEngine
from loragate.settings import LORA_RANKS, RESERVED_CPU_ENV, ServerSettings

pytestmark = pytest.mark.slow  # vLLM's own classes: importing vLLM takes 10 s

GIB = 2**30
H100 = ("NVIDIA H100 80GB HBM3", 80 * GIB)
A100 = ("NVIDIA A100-SXM4-80GB", 80 * GIB)
L4 = ("NVIDIA L4", 24 * GIB)


class FakeCuda:
    """The part of vLLM's CudaPlatform that loragate and get_batch_defaults ask about."""

    device_type = "cuda"

    def __init__(self, name: str, memory: int):
        self._name, self._memory = name, memory

    def is_cpu(self) -> bool:
        return False

    def is_tpu(self) -> bool:
        return False

    def get_device_name(self) -> str:
        return self._name

    def get_device_total_memory(self) -> int:
        return self._memory


@pytest.fixture(autouse=True)
def no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAGATE_CONFIG", raising=False)
    monkeypatch.delenv(THREADS_BIND_ENV, raising=False)


def on_gpu(monkeypatch: pytest.MonkeyPatch, device: tuple[str, int] = H100) -> Platform:
    monkeypatch.setattr(vllm.platforms, "_current_platform", FakeCuda(*device))
    return detect_platform()


def parse(*argv: str) -> ServerSettings:
    return settings_from_arguments(ServerSettings, build_parser().parse_args(["serve", *argv]))


def kwargs_for(platform: Platform, *argv: str) -> dict[str, Any]:
    return engine_kwargs(parse(*argv), "/models/llama", "llama", platform)


def test_vllm_detects_this_machine_as_a_cpu() -> None:
    bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert detect_platform() == Platform(name="cpu", is_cpu=True, native_bf16=bf16)


@pytest.mark.parametrize(
    ("arch", "avx512_bf16", "amx", "native"),
    [
        (CpuArchEnum.X86, False, False, False),  # AVX-512 or AVX2 only: bf16 emulated
        (CpuArchEnum.X86, True, False, True),  # Cooper Lake, Zen 4
        (CpuArchEnum.X86, False, True, True),  # Sapphire Rapids and later
        (CpuArchEnum.ARM, False, False, True),  # Linux on Arm: bf16 by vLLM's supported_dtypes
        (CpuArchEnum.POWERPC, False, False, True),
    ],
)
def test_a_cpu_computes_bf16_natively_by_vllm_and_torch(
    monkeypatch: pytest.MonkeyPatch, arch: CpuArchEnum, avx512_bf16: bool, amx: bool, native: bool
) -> None:
    monkeypatch.setattr(current_platform, "get_cpu_architecture", lambda: arch)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert detect_platform().native_bf16 is native


def test_an_arm_cpu_without_bf16_in_vllms_dtypes_gets_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ArmWithoutBf16(type(current_platform)):  # type: ignore[misc]
        supported_dtypes = (torch.float16, torch.float32)  # vLLM's answer on an M1

        @classmethod
        def get_cpu_architecture(cls) -> CpuArchEnum:
            return CpuArchEnum.ARM

    monkeypatch.setattr(vllm.platforms, "_current_platform", ArmWithoutBf16())
    platform = detect_platform()
    assert not platform.native_bf16
    assert kwargs_for(platform)["dtype"] == "float32"


@pytest.mark.parametrize(("native_bf16", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_cpu_defaults(native_bf16: bool, dtype: str) -> None:
    kwargs = kwargs_for(Platform("cpu", is_cpu=True, native_bf16=native_bf16))
    assert kwargs["gpu_memory_utilization"] == 0.3  # of one NUMA node's RAM, for the KV cache
    assert (kwargs["dtype"], kwargs["max_num_seqs"]) == (dtype, 64)
    assert kwargs["max_model_len"] == -1  # the model's own, fitted to the KV cache


def test_gpu_defaults_are_vllms_own(monkeypatch: pytest.MonkeyPatch) -> None:
    platform = on_gpu(monkeypatch)
    assert platform == Platform("cuda", False, *H100)
    kwargs = kwargs_for(platform)
    assert kwargs["dtype"] == "auto"  # fp16 on GPUs without bf16 (the T4)
    assert "gpu_memory_utilization" not in kwargs and "max_num_seqs" not in kwargs
    assert kwargs["max_model_len"] == -1
    args = build_engine_args(parse(), "/models/llama", "llama", platform)
    assert args.gpu_memory_utilization == 0.92 and args.max_num_seqs is None  # vLLM 0.32's


@pytest.mark.parametrize(
    ("device", "seqs", "tokens"),
    [(H100, 1024, 8192), (A100, 256, 2048), (L4, 256, 2048)],
)
def test_vllm_server_batch_defaults_on_gpus(
    monkeypatch: pytest.MonkeyPatch, device: tuple[str, int], seqs: int, tokens: int
) -> None:
    platform = on_gpu(monkeypatch, device)
    assert vllm_batch_defaults(platform, 1) == {
        "max_num_seqs": seqs,
        "max_num_batched_tokens": tokens,
    }


def test_a_described_platform_equals_the_detected_one(monkeypatch: pytest.MonkeyPatch) -> None:
    detected = on_gpu(monkeypatch)
    assert simulated_platform("cuda", 80, H100[0]) == detected
    assert simulated_platform("cpu") == Platform("cpu", True)


def test_explicit_settings_win_on_both_platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ("--max-model-len", "4096", "--dtype", "float16", "--max-num-seqs", "8")
    for platform in (detect_platform(), on_gpu(monkeypatch)):
        kwargs = kwargs_for(platform, *flags, "--gpu-memory-utilization", "0.5")
        assert (kwargs["max_model_len"], kwargs["dtype"], kwargs["max_num_seqs"]) == (
            4096, "float16", 8
        )  # fmt: skip
        assert kwargs["gpu_memory_utilization"] == 0.5


def test_the_memory_fraction_has_vllms_name_too() -> None:
    assert parse("--gpu-memory-utilization", "0.8").kv_cache_memory_fraction == 0.8
    assert parse("--kv-cache-memory-fraction", "0.8").kv_cache_memory_fraction == 0.8
    with pytest.raises(ValueError, match="one setting"):
        parse("--kv-cache-memory-fraction", "0.8", "--gpu-memory-utilization", "0.7")


def test_parallel_and_common_engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = kwargs_for(
        on_gpu(monkeypatch),
        *("--tensor-parallel-size", "2", "--pipeline-parallel-size", "2"),
        *("--data-parallel-size", "2", "--distributed-executor-backend", "ray"),
        *("--quantization", "fp8", "--enable-prefix-caching", "--kv-cache-dtype", "fp8"),
        *("--max-num-batched-tokens", "16384"),
    )
    assert {k: kwargs[k] for k in ("tensor_parallel_size", "pipeline_parallel_size")} == {
        "tensor_parallel_size": 2, "pipeline_parallel_size": 2
    }  # fmt: skip
    assert (kwargs["data_parallel_size"], kwargs["distributed_executor_backend"]) == (2, "ray")
    assert (kwargs["quantization"], kwargs["enable_prefix_caching"]) == ("fp8", True)
    assert (kwargs["kv_cache_dtype"], kwargs["max_num_batched_tokens"]) == ("fp8", 16384)
    names = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert set(kwargs) <= names  # every one is vLLM's own name


def test_lora_ranks_are_vllms() -> None:
    assert get_args(MaxLoRARanks) == LORA_RANKS
    with pytest.raises(ValueError, match="vLLM accepts only 1, 8, 16, 32"):
        parse("--max-lora-rank", "24")


def test_any_other_engine_argument_passes_through() -> None:
    kwargs = kwargs_for(
        detect_platform(), "--engine", "block_size=32", "--engine", "tokenizer_mode=slow"
    )
    assert (kwargs["block_size"], kwargs["tokenizer_mode"]) == (32, "slow")
    args = build_engine_args(parse("--engine", "block_size=32"), "/m", "m", detect_platform())
    assert args.block_size == 32


def test_the_config_files_engine_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "loragate.toml"
    config.write_text("[engine]\nblock_size = 32\ncompilation_config = {level = 0}\n")
    monkeypatch.setenv("LORAGATE_CONFIG", str(config))
    kwargs = kwargs_for(detect_platform())
    assert kwargs["block_size"] == 32 and kwargs["compilation_config"] == {"level": 0}


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("max_num_seq=8", "'max_num_seq' is not a vLLM engine argument.*did you mean max_num_seqs"),
        ("seed=3", "'seed' is set by loragate"),
        ("max_model_len=4096", "use its own setting \\(--max-model-len\\)"),
        ("quantization=awq", "use its own setting \\(--quantization\\)"),
    ],
)
def test_unknown_or_owned_engine_arguments_are_refused(flag: str, message: str) -> None:
    with pytest.raises(UnknownEngineArgumentError, match=message):
        kwargs_for(detect_platform(), "--engine", flag)


def test_a_malformed_engine_flag() -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse("--engine", "block_size")


@pytest.mark.parametrize(
    ("flags", "cores", "binding"),
    [
        ((), [0, 1], None),  # one worker: vLLM's own binding
        (("--tensor-parallel-size", "2"), [0, 1], "0|1"),
        (("--data-parallel-size", "2"), [0, 1], "0|1"),
        (("--tensor-parallel-size", "2"), [0, 1, 2, 3], "0,1|2,3"),
        (("--tensor-parallel-size", "2", "--data-parallel-size", "2"), [0, 1, 2, 3], "0|1|2|3"),
    ],
)
def test_several_cpu_workers_get_their_own_cores(
    flags: tuple[str, ...], cores: list[int], binding: str | None
) -> None:
    assert cpu_thread_binding(parse(*flags), cores) == binding


def test_a_binding_already_given_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_BIND_ENV, "0|1")
    assert cpu_thread_binding(parse("--tensor-parallel-size", "2"), [0, 1]) is None


def test_too_few_cores_for_the_workers() -> None:
    with pytest.raises(ValueError, match="need at least 2 cores"):
        cpu_thread_binding(parse("--tensor-parallel-size", "2"), [0])


def test_the_gpu_environment_has_no_cpu_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RESERVED_CPU_ENV, raising=False)
    environment = engine_environment(parse("--tensor-parallel-size", "2"), on_gpu(monkeypatch))
    assert set(environment) == {GATEWAY_PID_ENV}


class _Started(Exception):
    pass


def test_the_engine_starts_with_vllms_server_batch_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm.usage.usage_lib import UsageContext

    seen: dict[str, Any] = {}

    class CapturingAsyncLLM:
        @staticmethod
        def from_engine_args(args: AsyncEngineArgs, usage_context: UsageContext) -> None:
            seen.update(args=args, usage_context=usage_context)
            raise _Started

    monkeypatch.setattr(vllm_engine, "AsyncLLM", CapturingAsyncLLM)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # start() sets vLLM's variables
    with pytest.raises(_Started):
        VllmEngine.start(parse(), "/models/llama", "llama")
    assert seen["usage_context"] == UsageContext.OPENAI_API_SERVER
    assert seen["args"].served_model_name == ["llama"]
