"""Every adapter check, each refusal naming its problem, on peft-shaped files of a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loragate.adapters.confinement import AdapterRoots
from loragate.adapters.errors import AdapterValidationError
from loragate.adapters.untrusted import MAX_CONFIG_BYTES
from loragate.adapters.validation import ModelShape, validate_adapter
from loragate.server.errors import as_gateway_error
from tests.unit.personas_support import (
    BASE,
    DEEP,
    TINY_MODEL,
    lora_tensors,
    peft_key,
    poison_tensor,
    write_adapter,
    write_deep_header,
    write_safetensors,
)

SHAPE = ModelShape.from_config(TINY_MODEL)


def validate(path: Path, max_rank: int = 8) -> Any:
    roots = AdapterRoots.of([path.parent])
    return validate_adapter(path, SHAPE, max_rank=max_rank, base_names=[BASE], roots=roots)


def refusal(path: Path, max_rank: int = 8) -> str:
    with pytest.raises(AdapterValidationError) as err:
        validate(path, max_rank)
    shown = as_gateway_error(err.value)
    assert shown is not None and shown.status == 400 and shown.code == "invalid_adapter"
    return err.value.message


def test_a_fitting_adapter_passes_with_its_rank_size_and_modules(tmp_path: Path) -> None:
    report = validate(write_adapter(tmp_path / "ok", rank=4))
    assert report.rank == 4
    assert report.size_bytes == sum(f.stat().st_size for f in (tmp_path / "ok").iterdir())
    assert set(report.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"}  # fmt: skip
    assert report.warnings == ()


def test_model_shape_from_llama_config_derives_head_dim() -> None:
    config = {**TINY_MODEL, "head_dim": None, "num_key_value_heads": None}
    shape = ModelShape.from_config(config)
    assert (shape.head_dim, shape.num_key_value_heads) == (4, 2)
    assert shape.features("k_proj") == (8, 8)


def test_missing_config_means_not_a_peft_adapter(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "has no adapter_config.json" in refusal(tmp_path / "empty")


def test_config_that_is_not_json(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / "adapter_config.json").write_text("{nope")
    assert "not valid JSON" in refusal(path)


def test_peft_type_must_be_lora(tmp_path: Path) -> None:
    assert "peft_type 'IA3'" in refusal(write_adapter(tmp_path / "a", peft_type="IA3"))


def test_rank_above_max_lora_rank(tmp_path: Path) -> None:
    message = refusal(write_adapter(tmp_path / "a", rank=16), max_rank=8)
    assert "rank 16" in message and "max_lora_rank 8" in message


def test_rank_pattern_above_max_lora_rank(tmp_path: Path) -> None:
    message = refusal(write_adapter(tmp_path / "a", rank_pattern={"q_proj": 32}))
    assert "rank 32" in message


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "bias 'all'"),
        ({"bias": "lora_only"}, "bias 'lora_only'"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa'"),
    ],
)
def test_unsupported_features_are_refused(
    tmp_path: Path, config: dict[str, Any], named: str
) -> None:
    message = refusal(write_adapter(tmp_path / "a", **config))
    assert "unsupported features" in message and named in message


def test_unsupported_target_module(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a", target_modules=["q_proj", "embed_tokens"])
    message = refusal(path)
    assert "embed_tokens" in message and "supported: q_proj" in message


def test_unsupported_module_in_weights_behind_a_regex(tmp_path: Path) -> None:
    tensors = {**lora_tensors(), "base_model.model.lm_head.lora_A.weight": [2, 8]}
    path = write_adapter(tmp_path / "a", target_modules=".*proj", tensors=tensors)
    assert "lm_head" in refusal(path)


def test_shapes_of_another_base_model(tmp_path: Path) -> None:
    tensors = lora_tensors()
    tensors[peft_key(0, "q_proj", "A")] = [2, 4096]
    message = refusal(write_adapter(tmp_path / "a", tensors=tensors))
    assert "does not fit the served model" in message and "layers.0.q_proj" in message


def test_more_layers_than_the_served_model(tmp_path: Path) -> None:
    tensors = {
        **lora_tensors(),
        peft_key(5, "q_proj", "A"): [2, 8],
        peft_key(5, "q_proj", "B"): [8, 2],
    }
    assert "layer 5" in refusal(write_adapter(tmp_path / "a", tensors=tensors))


def test_lora_a_without_lora_b(tmp_path: Path) -> None:
    tensors = lora_tensors()
    del tensors[peft_key(1, "down_proj", "B")]
    assert "lora_A without lora_B" in refusal(write_adapter(tmp_path / "a", tensors=tensors))


def test_missing_weights(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / "adapter_model.safetensors").unlink()
    assert "has no adapter_model.safetensors" in refusal(path)


def test_pickled_weights_are_not_accepted(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    assert "pickled weights are not accepted" in refusal(path)


def test_truncated_weights(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    message = refusal(path)
    assert "is broken" in message and "truncated" in message


def test_weights_with_a_garbage_header(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / "adapter_model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{")
    assert "not valid JSON" in refusal(path)


def test_weights_whose_offsets_disagree_with_their_shape(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    weights = path / "adapter_model.safetensors"
    write_safetensors(weights, {peft_key(0, "q_proj", "A"): [2, 8]})
    raw = weights.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    header[peft_key(0, "q_proj", "A")]["shape"] = [3, 8]
    body = json.dumps(header).encode()
    weights.write_bytes(len(body).to_bytes(8, "little") + body + raw[8 + header_len :])
    assert "should span 96 bytes" in refusal(path)


def test_other_base_model_name_is_reported_not_refused(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a", base_model_name_or_path="meta-llama/Other-Model")
    (warning,) = validate(path).warnings
    assert "meta-llama/Other-Model" in warning and BASE in warning


def test_same_base_model_by_directory_name_is_not_reported(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a", base_model_name_or_path=f"/somewhere/{BASE}")
    assert validate(path).warnings == ()


@pytest.mark.parametrize(
    ("value", "kind"), [(math.nan, "NaN"), (math.inf, "Inf"), (-math.inf, "Inf")]
)
def test_non_finite_weights_are_refused_naming_the_tensor(
    tmp_path: Path, value: float, kind: str
) -> None:
    path = write_adapter(tmp_path / "a")
    name = peft_key(1, "v_proj", "B")
    poison_tensor(path / "adapter_model.safetensors", name, value)
    message = refusal(path)
    assert f"'{name}' holds {kind}" in message


def test_finite_nonzero_weights_pass(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    poison_tensor(path / "adapter_model.safetensors", peft_key(0, "q_proj", "A"), -3.5e4)
    assert validate(path).rank == 2


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"lora_alpha": math.nan}, "lora_alpha is nan, not a finite number"),
        ({"lora_alpha": math.inf}, "lora_alpha is inf, not a finite number"),
        ({"lora_alpha": 10**400}, "not a finite number"),
        ({"lora_alpha": "16"}, "lora_alpha is '16', not a finite number"),
        ({"lora_alpha": 1e30}, "lora_alpha / r = 1e+30 / 2 = 5e+29 is above 1000"),
        ({"lora_alpha": -1e30}, "is above 1000"),
        ({"alpha_pattern": {"q_proj": math.nan}}, "alpha_pattern['q_proj'] is nan"),
        ({"alpha_pattern": {"q_proj": 4000}}, "alpha_pattern['q_proj'] / r = 4000 / 2"),
        # The largest alpha over the smallest rank: peft pairs patterns by module name.
        ({"r": 8, "rank_pattern": {"k_proj": 1}, "lora_alpha": 1500}, "1500 / 1 = 1500"),
        ({"use_rslora": True, "lora_alpha": 2000}, "lora_alpha / sqrt(r) = 2000 / sqrt(2)"),
    ],
)
def test_non_finite_or_absurd_scales_are_refused(
    tmp_path: Path, config: dict[str, Any], named: str
) -> None:
    message = refusal(write_adapter(tmp_path / "a", **config))
    assert named in message and "adapter_config.json" in message


@pytest.mark.parametrize(
    "config",
    [
        {"lora_alpha": 128},  # alpha / r = 64, the largest of real recipes
        {"lora_alpha": 2000, "r": 2, "rank_pattern": {"q_proj": 2}},  # 1000: the bound itself
        {"use_rslora": True, "lora_alpha": 1400},  # 1400 / sqrt(2) = 990
        {"lora_alpha": 0},
    ],
)
def test_scales_within_the_bound_pass(tmp_path: Path, config: dict[str, Any]) -> None:
    assert validate(write_adapter(tmp_path / "a", **config)).rank == 2


def test_a_config_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / "adapter_config.json").write_text(DEEP)
    assert "adapter_config.json is not valid JSON (nested too deeply)" in refusal(path)
    (path / "adapter_config.json").write_text("[" * 100 + "]" * 100)  # within the recursion limit
    assert "nested deeper than 32 levels" in refusal(path)


def test_a_config_too_large_is_refused_unread(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / "adapter_config.json").write_text(" " * (MAX_CONFIG_BYTES + 1) + "{}")
    assert "adapter_config.json is larger than" in refusal(path)


def test_a_safetensors_header_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    write_deep_header(path / "adapter_model.safetensors")
    message = refusal(path)
    assert "is broken" in message and "nested too deeply" in message
