"""Checks on a peft adapter before anything is published: each failure is a 400 naming it.

vLLM would refuse most of these too, but later (inside the engine process, as a 500), and it
loads adapters of the wrong shape onto the wrong base model as long as the names match. Here the
config and every tensor's shape are checked against the served model's config.json first, and the
numbers (the LoRA scale, NaN or Inf in the weights) by numerics.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loragate.adapters.confinement import AdapterRoots
from loragate.adapters.errors import AdapterValidationError
from loragate.adapters.manifest import ADAPTER_CONFIG, LORA_TARGET_MODULES
from loragate.adapters.numerics import non_finite_tensor, scale_problem
from loragate.adapters.safetensors_header import (
    BrokenSafetensorsError,
    TensorInfo,
    read_header,
)
from loragate.adapters.untrusted import UntrustedFileError, parse_json, read_capped
from loragate.settings import LORA_RANKS

WEIGHTS_FILE = "adapter_model.safetensors"
_TENSOR_KEY = re.compile(
    r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)
# Inits that only set the starting weights; the others (PiSSA, OLoRA, LoftQ...) alter the base.
_PLAIN_INITS = {"gaussian", "eva", "orthogonal", "mica", "lora_ga"}


@dataclass(frozen=True)
class ModelShape:
    """What an adapter must fit: the served model's dimensions, from its config.json."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        config = config.get("text_config") or config  # multimodal configs nest the text model
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            num_hidden_layers=int(config["num_hidden_layers"]),
            head_dim=int(config.get("head_dim") or hidden // heads),
        )

    def features(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of one projection."""
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_key_value_heads * self.head_dim
        return {
            "q_proj": (self.hidden_size, q_out),
            "k_proj": (self.hidden_size, kv_out),
            "v_proj": (self.hidden_size, kv_out),
            "o_proj": (q_out, self.hidden_size),
            "gate_proj": (self.hidden_size, self.intermediate_size),
            "up_proj": (self.hidden_size, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }[module]


@dataclass(frozen=True)
class AdapterReport:
    rank: int
    target_modules: tuple[str, ...]
    size_bytes: int
    warnings: tuple[str, ...]


def validate_adapter(
    adapter_dir: Path,
    shape: ModelShape,
    *,
    max_rank: int,
    base_names: Sequence[str],
    roots: AdapterRoots,
) -> AdapterReport:
    """Raise AdapterValidationError naming the first problem; report what is merely unusual."""
    where = f"The adapter at '{adapter_dir}'"
    config = _read_config(adapter_dir, where, roots)
    _check_features(config, where)
    ranks = _check_rank(config, where, max_rank)
    problem = scale_problem(config, ranks)
    if problem is not None:
        raise AdapterValidationError(f"{where} is refused: {problem} in {ADAPTER_CONFIG}.")
    _check_target_modules(config.get("target_modules"), where)
    weights = roots.confine_file(adapter_dir / WEIGHTS_FILE)
    tensors = _read_tensors(weights, where)
    modules = _check_weights(tensors, where, shape, max_rank)
    _check_finite(weights, tensors, where)
    warnings = []
    trained_on = config.get("base_model_name_or_path")
    if trained_on and not _same_model(str(trained_on), base_names):
        warnings.append(
            f"The adapter was trained on '{trained_on}', not on the served model "
            f"'{base_names[0]}'; its shapes fit, but check that it is the same model."
        )
    return AdapterReport(ranks[0], modules, _size(adapter_dir, roots), tuple(warnings))


def _read_config(adapter_dir: Path, where: str, roots: AdapterRoots) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterValidationError(
            f"{where} has no {ADAPTER_CONFIG}: it is not a peft adapter directory."
        )
    roots.confine_file(path)
    try:
        config = parse_json(read_capped(path))
    except UntrustedFileError as exc:
        raise AdapterValidationError(f"{where}: {ADAPTER_CONFIG} {exc}.") from exc
    if not isinstance(config, dict):
        raise AdapterValidationError(f"{where}: {ADAPTER_CONFIG} is not a JSON object.")
    peft_type = config.get("peft_type")
    if str(peft_type).upper() != "LORA":
        raise AdapterValidationError(
            f"{where} has peft_type '{peft_type}'; only LORA adapters are supported."
        )
    return config


def _check_features(config: dict[str, Any], where: str) -> None:
    refused = []
    if config.get("use_dora"):
        refused.append("DoRA (use_dora)")
    if config.get("modules_to_save"):
        refused.append(f"modules_to_save {config['modules_to_save']}")
    if config.get("bias", "none") != "none":
        refused.append(f"bias '{config['bias']}'")
    if config.get("lora_bias"):
        refused.append("lora_bias")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        refused.append(f"init_lora_weights '{init}' (it alters the base weights)")
    for feature in ("layer_replication", "alora_invocation_tokens", "trainable_token_indices"):
        if config.get(feature):
            refused.append(feature)
    if config.get("use_qalora"):
        refused.append("QALoRA (use_qalora)")
    if refused:
        raise AdapterValidationError(f"{where} uses unsupported features: {', '.join(refused)}.")


def _check_rank(config: dict[str, Any], where: str, max_rank: int) -> list[int]:
    """r, then the rank_pattern ranks, each a positive int within max_rank."""
    rank = config.get("r")
    pattern = config.get("rank_pattern") or {}
    ranks = [rank, *pattern.values()] if isinstance(pattern, dict) else [rank, pattern]
    valid = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool) and r > 0]
    if len(valid) != len(ranks):
        raise AdapterValidationError(
            f"{where} has an invalid rank (r={rank!r}, rank_pattern={pattern!r}) "
            f"in {ADAPTER_CONFIG}."
        )
    highest = max(valid)
    if highest > max_rank:
        fits = [r for r in LORA_RANKS if r >= highest]
        hint = (
            f"start the server with --max-lora-rank {fits[0]} to serve it"
            if fits
            else f"vLLM serves ranks up to {LORA_RANKS[-1]}"
        )
        raise AdapterValidationError(
            f"{where} has rank {highest}, above the server's max_lora_rank {max_rank} ({hint})."
        )
    return valid


def _check_target_modules(targets: Any, where: str) -> None:
    if isinstance(targets, str):
        return  # a regular expression: the weights' names are checked instead
    if not isinstance(targets, list) or not targets:
        raise AdapterValidationError(f"{where} names no target_modules in {ADAPTER_CONFIG}.")
    unsupported = sorted({str(t) for t in targets} - set(LORA_TARGET_MODULES))
    if unsupported:
        raise AdapterValidationError(
            f"{where} targets modules the served model does not support for LoRA: "
            f"{', '.join(unsupported)} (supported: {', '.join(LORA_TARGET_MODULES)})."
        )


def _read_tensors(weights: Path, where: str) -> dict[str, TensorInfo]:
    if not weights.is_file():
        pickled = weights.with_suffix(".bin").is_file()
        hint = (
            " It has adapter_model.bin: pickled weights are not accepted (they can run code); "
            "save them with safe_serialization=True."
            if pickled
            else ""
        )
        raise AdapterValidationError(f"{where} has no {WEIGHTS_FILE}.{hint}")
    try:
        tensors = read_header(weights)
    except BrokenSafetensorsError as exc:
        raise AdapterValidationError(f"{where}: {WEIGHTS_FILE} is broken: {exc}.") from exc
    if not tensors:
        raise AdapterValidationError(f"{where}: {WEIGHTS_FILE} holds no LoRA weights.")
    return tensors


def _check_weights(
    tensors: dict[str, TensorInfo], where: str, shape: ModelShape, max_rank: int
) -> tuple[str, ...]:
    pairs: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    for name, info in tensors.items():
        match = _TENSOR_KEY.match(name)
        if match is None:
            raise AdapterValidationError(
                f"{where}: {WEIGHTS_FILE} has the tensor '{name}', which is not a LoRA A/B "
                f"weight of a supported module ({', '.join(LORA_TARGET_MODULES)})."
            )
        layer, module, half = int(match[1]), match[2], match[3]
        pairs.setdefault((layer, module), {})[half] = info.shape
    for (layer, module), halves in sorted(pairs.items()):
        _check_pair(layer, module, halves, where, shape, max_rank)
    return tuple(sorted({module for _, module in pairs}))


def _check_pair(
    layer: int,
    module: str,
    halves: dict[str, tuple[int, ...]],
    where: str,
    shape: ModelShape,
    max_rank: int,
) -> None:
    what = f"layers.{layer}.{module}"
    if module not in LORA_TARGET_MODULES:
        raise AdapterValidationError(
            f"{where} adapts '{what}', a module the served model does not support for LoRA."
        )
    if layer >= shape.num_hidden_layers:
        raise AdapterValidationError(
            f"{where} adapts layer {layer}, but the served model has "
            f"{shape.num_hidden_layers} layers: it was made for another base model."
        )
    if set(halves) != {"A", "B"}:
        raise AdapterValidationError(
            f"{where} has lora_A without lora_B (or the reverse) in {what}."
        )
    a, b = halves["A"], halves["B"]
    fan_in, fan_out = shape.features(module)
    rank = a[0] if len(a) == 2 else -1
    if len(a) != 2 or len(b) != 2 or a != (rank, fan_in) or b != (fan_out, rank):
        raise AdapterValidationError(
            f"{where} does not fit the served model: {what} has lora_A {list(a)} and lora_B "
            f"{list(b)}, the model needs [r, {fan_in}] and [{fan_out}, r]. "
            "It was made for another base model."
        )
    if rank > max_rank:
        raise AdapterValidationError(
            f"{where} has rank {rank} in {what}, above the server's max_lora_rank {max_rank}."
        )


def _check_finite(weights: Path, tensors: dict[str, TensorInfo], where: str) -> None:
    problem = non_finite_tensor(weights, tensors)
    if problem is not None:
        raise AdapterValidationError(
            f"{where} is refused: in {WEIGHTS_FILE}, {problem} (NaN or Inf weights make every "
            "reply of the persona garbage)."
        )


def _size(adapter_dir: Path, roots: AdapterRoots) -> int:
    # Files a symlink takes out of the roots are not counted: their size is not ours to tell.
    files = [f.resolve() for f in adapter_dir.iterdir() if f.is_file()]
    return sum(f.stat().st_size for f in files if roots.contains(f))


def _same_model(trained_on: str, base_names: Sequence[str]) -> bool:
    def key(name: str) -> str:
        return Path(name.rstrip("/")).name.lower()

    return any(trained_on == n or key(trained_on) == key(n) for n in base_names if n)
