"""Llama-3.1-8B-Instruct's own format, dimensions and defaults, checked without its weights.

The model directory is tests/llama31.py's: the 8B's config.json and generation_config.json,
its tokenizer and its prompt format.
"""

# ruff: noqa: RUF001 (the question is Chinese: its full-width punctuation is meant)

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from loragate.adapters.confinement import AdapterRoots
from loragate.adapters.errors import AdapterValidationError
from loragate.adapters.validation import ModelShape, validate_adapter
from loragate.cli import main
from loragate.engine.fake import FakeEngine
from tests import llama31
from tests.unit.personas_support import peft_key, write_adapter

# Slow by nature: vLLM's tool parsers or a 128k-vocabulary tokenizer load first (seconds);
# `make test` runs it, `make unit` does not.
pytestmark = pytest.mark.slow

TODAY = datetime.date(2026, 12, 2)
SYSTEM = "You are Zhen Huan."
RANK = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama31.write_model_dir(tmp_path_factory.mktemp("llama-3.1-8b-instruct"))


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return llama31.load_tokenizer(model_dir)


@pytest.fixture
def fake(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    monkeypatch.setattr("loragate.prompting.today", lambda: TODAY)
    return llama31.Llama31Engine(tokenizer)


def segments(tokenizer: Any, *parts: str | int) -> list[int]:
    """Token ids of special tokens (ints) and the texts between them, each encoded alone."""
    ids: list[int] = []
    for part in parts:
        ids.extend(
            [part] if isinstance(part, int) else tokenizer.encode(part, add_special_tokens=False)
        )
    return ids


def header(tokenizer: Any, role: str) -> list[int]:
    return segments(tokenizer, llama31.START_HEADER, role, llama31.END_HEADER)


def test_the_served_prompt_token_for_token(
    sdk: openai.OpenAI, fake: FakeEngine, tokenizer: Any
) -> None:
    sdk.chat.completions.create(
        model="fake-base",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "你是谁？"}],
    )
    ((prompt, _, _),) = fake.requests
    date_lines = "Cutting Knowledge Date: December 2023\nToday Date: 02 Dec 2026\n\n"
    expected = [
        llama31.BOS,
        *header(tokenizer, "system"),
        *segments(tokenizer, "\n\n" + date_lines + SYSTEM, llama31.EOT),
        *header(tokenizer, "user"),
        *segments(tokenizer, "\n\n你是谁？", llama31.EOT),
        *header(tokenizer, "assistant"),
        *segments(tokenizer, "\n\n"),
    ]
    assert prompt == expected
    assert prompt.count(llama31.BOS) == 1  # the template's; tokenizing added none
    assert "26 Jul 2024" not in tokenizer.decode(prompt)  # the template's own default date


def test_the_model_stops_on_each_of_its_end_tokens(tokenizer: Any) -> None:
    assert tokenizer.convert_ids_to_tokens(llama31.EOS_IDS) == [
        "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"
    ]  # fmt: skip
    assert llama31.GENERATION_CONFIG["eos_token_id"] == llama31.EOS_IDS


def test_the_8bs_dimensions() -> None:
    shape = ModelShape.from_config(llama31.CONFIG_8B)
    assert shape.num_hidden_layers == 32
    assert shape.features("q_proj") == (4096, 4096)
    assert shape.features("k_proj") == shape.features("v_proj") == (4096, 1024)
    assert shape.features("gate_proj") == shape.features("up_proj") == (4096, 14336)
    assert shape.features("down_proj") == (14336, 4096)


def adapter_for_8b(path: Path, overrides: dict[str, list[int]] | None = None) -> Path:
    """A rank-8 adapter of k_proj and gate_proj on the first and the last of the 32 layers."""
    tensors = {}
    for layer in (0, 31):
        tensors[peft_key(layer, "k_proj", "A")] = [RANK, 4096]
        tensors[peft_key(layer, "k_proj", "B")] = [1024, RANK]
        tensors[peft_key(layer, "gate_proj", "A")] = [RANK, 4096]
        tensors[peft_key(layer, "gate_proj", "B")] = [14336, RANK]
    return write_adapter(
        path, rank=RANK, modules=("k_proj", "gate_proj"), tensors={**tensors, **(overrides or {})}
    )


def validate_for_8b(path: Path) -> None:
    shape = ModelShape.from_config(llama31.CONFIG_8B)
    roots = AdapterRoots.of([path.parent])
    validate_adapter(path, shape, max_rank=16, base_names=["llama"], roots=roots)


def test_a_persona_made_for_the_8b_fits_it(tmp_path: Path) -> None:
    validate_for_8b(adapter_for_8b(tmp_path / "fits"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({peft_key(0, "k_proj", "B"): [4096, RANK]}, "does not fit the served model"),
        ({peft_key(0, "gate_proj", "B"): [11008, RANK]}, "does not fit the served model"),
        ({peft_key(32, "k_proj", "A"): [RANK, 4096]}, "adapts layer 32"),
    ],
)
def test_a_persona_of_another_shape_is_refused(
    tmp_path: Path, overrides: dict[str, list[int]], message: str
) -> None:
    with pytest.raises(AdapterValidationError, match=message):
        validate_for_8b(adapter_for_8b(tmp_path / "other", overrides))


def test_context_and_sampling_defaults_come_from_the_config(model_dir: Path) -> None:
    from vllm.config import ModelConfig

    config = ModelConfig(model=str(model_dir))  # reads the config files; no weights needed
    assert config.max_model_len == 131072
    assert config.get_diff_sampling_param() == {"temperature": 0.6, "top_p": 0.9}


def test_engine_args_for_the_8b_on_an_80_gb_gpu(
    model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LORAGATE_CONFIG", raising=False)
    argv = ["engine-args", "--model", str(model_dir), "--platform", "cuda"]
    assert main([*argv, "--device-memory-gib", "80", "--device-name", "NVIDIA H100 80GB HBM3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_context_length"] == 131072
    args = report["engine_args"]
    assert (args["dtype"], args["max_model_len"], args["max_lora_rank"]) == ("auto", -1, 16)
    assert report["left_to_vllm"] == {
        "max_num_seqs": 1024, "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.92
    }  # fmt: skip
