"""The one settings source: CLI flags, LORAGATE_* environment variables and a TOML config file.

Precedence, highest first: CLI flags, environment, config file (`--config` or
`LORAGATE_CONFIG`), defaults. Every field's description is its `--help` text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from loragate.paths import default_state_dir

LEGACY_SYSTEM_PROMPT = "You are a helpful assistant."
RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
# Up to this many cores, the engine computes on all of them. Measured on 2 cores (`make
# bench-quick`, 16 concurrent chats): +29% output tokens/s and TTFT p50 1.7 s -> 1.1 s against
# vLLM's one reserved core.
SMALL_MACHINE_CORES = 4
# A token is a few characters, each at most 6 bytes as a JSON escape (\uXXXX): 32 bytes per
# token leaves room for the longest context in any text, with the JSON around it.
BODY_BYTES_PER_TOKEN = 32
# The ranks vLLM's LoRA config accepts (vllm.config.lora.MaxLoRARanks; a unit test compares).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class _LoragateSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAGATE_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (no .env files, by design)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("LORAGATE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


class EngineSettings(_LoragateSettings):
    model: str | None = Field(
        default=None,
        description="Model to serve: a local Hugging Face directory or a hub id "
        "(e.g. meta-llama/Llama-3.1-8B-Instruct). Default: the embedded SmolLM2-135M-Instruct.",
    )
    served_model_name: str | None = Field(
        default=None,
        description="Name of the base model in the API. Default: the model directory's name.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=-1,
        description="Context length (prompt plus completion) in tokens. Default: the model's "
        "own (131072 for Llama-3.1), shortened by vLLM to what fits the KV cache (as -1).",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        default=None,
        description="Weights and activations dtype. Default: bfloat16 on a CPU that computes it "
        "natively (AVX-512 BF16 or AMX on x86), float32 on one that does not; auto on a GPU "
        "(the model's bf16, or fp16 on GPUs without it, such as the T4).",
    )
    kv_cache_memory_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="vLLM's gpu_memory_utilization: on a GPU the fraction of its memory for the "
        "whole engine (weights, activations, KV cache), vLLM's own (0.92) by default; on the CPU "
        "the fraction of one NUMA node's RAM for the KV cache, 0.3 by default.",
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="vLLM's name of --kv-cache-memory-fraction."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="Tensor-parallel workers.")
    pipeline_parallel_size: int = Field(
        default=1, ge=1, description="Pipeline-parallel stages (vLLM's, e.g. across nodes)."
    )
    data_parallel_size: int = Field(
        default=1,
        ge=1,
        description="Data-parallel engine replicas, each with the whole model (and every "
        "persona: adapter loads go to all of them).",
    )
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = Field(
        default=None,
        description="vLLM's executor for several workers: mp (processes), ray (needs a "
        "Ray cluster; `pip install ray`), uni, external_launcher. Default: vLLM's choice.",
    )
    quantization: str | None = Field(
        default=None,
        description="vLLM quantization method (awq, gptq, fp8, bitsandbytes...). Default: the "
        "model's own (none for Llama-3.1-8B-Instruct).",
    )
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse the KV cache of shared prompt prefixes. Default: vLLM's."
    )
    kv_cache_dtype: str | None = Field(
        default=None, description="KV cache dtype (auto, fp8, fp8_e5m2...). Default: auto."
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per engine step. Default: vLLM's OpenAI server's for the device.",
    )
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM engine argument (AsyncEngineArgs' names): an [engine] "
        "table in the config file, or --engine KEY=VALUE (VALUE as JSON, else a string).",
    )
    enable_lora: bool = Field(default=True, description="Enable LoRA adapters (personas).")
    max_loras: int = Field(
        default=8,
        ge=1,
        description="Adapters that can run in one engine batch (requests for more wait). Each "
        "slot holds max_lora_rank weights for every layer: ~85 MB on Llama-3.1-8B at rank 16.",
    )
    max_lora_rank: int = Field(
        default=16,
        description="Highest adapter rank accepted: one of vLLM's "
        f"{', '.join(map(str, LORA_RANKS))}.",
    )
    max_cpu_loras: int = Field(
        default=16,
        ge=1,
        description="Adapters kept loaded in the engine (least recently used out); at least "
        "max_loras.",
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        description="Sequences per engine batch. Default: 64 on the CPU; vLLM's OpenAI server's "
        "on a GPU (256, or 1024 on 80 GB cards other than the A100).",
    )
    max_waiting_requests: int | None = Field(
        default=None,
        ge=0,
        description="Requests that may wait for a place in the engine's batch (max_num_seqs "
        "run at once); beyond them 429 with Retry-After. Default: max_num_seqs, one more batch.",
    )
    on_engine_death: Literal["restart", "exit"] = Field(
        default="restart",
        description="When the engine dies (its process killed, an engine error, a step hung "
        "past --engine-watchdog-timeout): restart it in place, personas reloaded, or exit "
        "non-zero at once as vLLM's server does, for a supervisor to restart.",
    )
    max_engine_restarts: int = Field(
        default=3,
        ge=0,
        description="Engine restarts allowed within --engine-restart-window; one more death "
        "and the process exits non-zero.",
    )
    engine_restart_window: float = Field(
        default=600.0, gt=0, description="Seconds over which --max-engine-restarts counts."
    )
    engine_watchdog_timeout: float = Field(
        default=120.0,
        ge=0,
        description="Seconds the engine may hold requests without producing a token before it "
        "is taken for hung and restarted; 0 off.",
    )
    seed: int = Field(default=0, description="Engine random seed.")
    enforce_eager: bool = Field(
        default=False, description="Disable CUDA graphs / compilation (faster start, slower run)."
    )
    cpu_reserved_cores: int | None = Field(
        default=None,
        ge=0,
        description="CPU backend: cores kept off the engine's compute threads for its scheduler "
        "and the HTTP server (vLLM's VLLM_CPU_NUM_OF_RESERVED_CPU). Default: 0 on machines "
        f"with at most {SMALL_MACHINE_CORES} cores, where vLLM's one reserved core is half "
        "the compute; vLLM's own choice above.",
    )

    cpu_lora_patch: bool = Field(
        default=True,
        description="CPU backend: loragate's patch of vLLM's CPU LoRA ops (base-model requests "
        "in a batch with personas get no adapter; a few GEMMs per batch). Off only to compare "
        "with vLLM's own ops: they apply the last adapter slot to base-model tokens.",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _a_rank_vllm_accepts(cls, rank: int) -> int:
        if rank not in LORA_RANKS:
            raise ValueError(f"vLLM accepts only {', '.join(map(str, LORA_RANKS))}, not {rank}")
        return rank

    @field_validator("engine", mode="before")
    @classmethod
    def _key_value_pairs(cls, value: Any) -> Any:
        """--engine KEY=VALUE flags arrive as a list of strings; the file's table as a dict."""
        if isinstance(value, list):
            return dict(parse_engine_flag(item) for item in value)
        return value

    @model_validator(mode="after")
    def _one_memory_fraction(self) -> EngineSettings:
        alias, own = self.gpu_memory_utilization, self.kv_cache_memory_fraction
        if alias is not None and own is not None and alias != own:
            raise ValueError(
                "kv_cache_memory_fraction and gpu_memory_utilization are one setting: give one"
            )
        self.kv_cache_memory_fraction = own if own is not None else alias
        return self

    def resolved_cpu_reserved_cores(self) -> int | None:
        """The cores to reserve, or None for vLLM's own choice (or the environment's)."""
        if self.cpu_reserved_cores is not None:
            return self.cpu_reserved_cores
        if RESERVED_CPU_ENV in os.environ or (os.cpu_count() or 1) > SMALL_MACHINE_CORES:
            return None
        return 0


class ServerSettings(EngineSettings):
    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="OpenAI API port.")
    legacy_port: int | None = Field(
        default=6006,
        description="Port of the tutorial's legacy `POST /` endpoint; 0 or empty turns it off.",
    )
    api_key: str | None = Field(
        default=None,
        description="A built-in key that may use every persona: once it or any key of "
        "`loragate keys` exists, every route but /health needs `Authorization: Bearer <key>`.",
    )
    admin_key: str | None = Field(
        default=None,
        description="A built-in admin key: when set, routes that change personas or keys need "
        "it (or a key made with `loragate keys create --admin`).",
    )
    keys_file: Path | None = Field(
        default=None,
        description="TOML file of keys as configuration ([[key]] tables with the secret's "
        "digest), beside those `loragate keys create` stores; a file's key wins over a stored "
        "key of the same name.",
    )
    personas_dir: list[Path] = Field(
        default_factory=list,
        description="Directory of persona bundles, scanned at start-up and watched (repeatable).",
    )
    persona: list[str] = Field(
        default_factory=list, description="Register one persona as NAME=PATH (repeatable)."
    )
    adapter_root: list[Path] = Field(
        default_factory=list,
        description="Directories adapter paths must lie in (repeatable). "
        "Default: the personas directories and the --persona paths.",
    )
    preload_personas: bool = Field(
        default=False, description="Load every registered persona into the engine at start-up."
    )
    persona_watch_interval: float = Field(
        default=2.0, ge=0, description="Seconds between scans of the personas directories; 0 off."
    )
    legacy_system_prompt: str = Field(
        default=LEGACY_SYSTEM_PROMPT, description="System prompt of the legacy endpoint."
    )
    legacy_max_new_tokens: int = Field(
        default=512, ge=1, description="Default max_new_tokens of the legacy endpoint."
    )
    legacy_serves_all_routes: bool = Field(
        default=False,
        description="Serve every route on the legacy port too; by default it serves only the "
        "tutorial's `POST /` and /health.",
    )
    max_request_body_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest request body accepted (413 beyond it). Default: room for the "
        f"longest context, {BODY_BYTES_PER_TOKEN} bytes per token of max_model_len plus 1 MiB.",
    )
    max_sequences_per_request: int = Field(
        default=256,
        ge=1,
        description="Most sequences one request may start (prompts times n on /v1/completions).",
    )
    timeout_keep_alive: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection stays open."
    )
    header_read_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's headers; slower ones are closed.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="Concurrent connections and requests; beyond it new ones get 503.",
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM or SIGINT: seconds the requests in flight have to finish (new "
        "ones get 503) before the rest are ended with an error and the server exits.",
    )
    request_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a generation request may take in all, queueing included; beyond "
        "it 504 (an error event in a stream). Default: no limit.",
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Directory of all durable state, in SQLite: the personas registered "
        "through the API (registered again at start-up) and the stored responses of "
        "/v1/responses. Default: $XDG_STATE_HOME/loragate, else ~/.local/state/loragate.",
    )
    tool_call_parser: str = Field(
        default="auto",
        description="vLLM's tool parser for tool_choice auto (llama3_json, hermes, mistral...). "
        "Default: the served model's: llama3_json for Llama-3.1; hermes for ChatML models, "
        "which get loragate's ChatML tool template when their own renders no tools.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text, or as one JSON object per line (with an access log "
        "entry per request: request id, route, status, model, tokens, latency).",
    )
    otlp_traces_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector to send traces to (as vLLM's flag): a span per "
        "request with gen_ai.* attributes, adapter loads, prefill and decode. OTLP over gRPC, "
        "or HTTP with OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf. Needs the otel extra.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve GET /metrics without the API key (for a Prometheus that holds none). "
        "Default: /metrics needs the API key, when one is set.",
    )

    def legacy_enabled(self) -> bool:
        return bool(self.legacy_port)

    def body_limit(self, max_model_len: int) -> int:
        """The largest body accepted, for an engine whose context is `max_model_len`."""
        if self.max_request_body_bytes is not None:
            return self.max_request_body_bytes
        return BODY_BYTES_PER_TOKEN * max_model_len + 2**20


def parse_engine_flag(item: str) -> tuple[str, Any]:
    key, sep, raw = str(item).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--engine expects KEY=VALUE, got '{item}'")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip().replace("-", "_"), value
