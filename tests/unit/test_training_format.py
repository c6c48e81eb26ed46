"""The shared formatting: training examples are the served prompt plus the reply and end-of-turn.

Checked token for token against Llama-3.1-8B-Instruct's tokenizer and chat template (as
tests/llama31.py reproduces them), and against the embedded model's own template as the gateway
renders it.
"""

# ruff: noqa: RUF001 (the data set is Chinese: its full-width punctuation is meant)

from __future__ import annotations

import datetime
import functools
import tempfile
from pathlib import Path
from typing import Any

import pytest

from loragate.adapters.targets import ModelTarget
from loragate.adapters.training.dataset import TrainingRow
from loragate.adapters.training.formatting import (
    IGNORE_INDEX,
    end_of_turn_ids,
    format_example,
)
from loragate.prompting import render_prompt_ids
from loragate.server.chat_service import conversation
from loragate.server.protocol import ChatCompletionRequest
from tests import llama31

# Slow by nature: vLLM's tool parsers or a 128k-vocabulary tokenizer load first (seconds);
# `make test` runs it, `make unit` does not.
pytestmark = pytest.mark.slow

SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"
BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT = (
    llama31.BOS,
    llama31.START_HEADER,
    llama31.END_HEADER,
    llama31.EOT,
)
TODAY = datetime.date(2026, 12, 2)


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loragate.prompting.today", lambda: TODAY)


@functools.cache
def llama31_tokenizer() -> Any:
    """Llama-3.1-8B-Instruct's tokenizer and chat template (tests/llama31.py)."""
    return llama31.load_tokenizer(llama31.write_model_dir(Path(tempfile.mkdtemp()) / "llama"))


@functools.cache
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from loragate.default_model import ensure_default_model

    return AutoTokenizer.from_pretrained(ensure_default_model())


def row(output: str = "我是甄嬛，家父是大理寺少卿甄远道。", **fields: Any) -> TrainingRow:
    return TrainingRow(
        number=1, instruction=fields.pop("instruction", "你是谁？"), output=output, **fields
    )


def split(example: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, trained ids) of an example."""
    prompt_len = sum(1 for label in example["labels"] if label == IGNORE_INDEX)
    assert example["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    return example["input_ids"][:prompt_len], example["labels"][prompt_len:]


def test_llama31_prompt_token_for_token() -> None:
    tokenizer = llama31_tokenizer()
    # BOS is added on plain encodes: the source of the tutorial's double BOS, which the shared
    # rendering must not reproduce.
    assert tokenizer.encode("x")[0] == BEGIN_OF_TEXT
    example = format_example(
        tokenizer,
        row(),
        system_prompt=SYSTEM,
        max_length=384,
        end_of_turn=end_of_turn_ids(tokenizer),
    )
    assert example is not None
    prompt, trained = split(example)
    expected_text = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 02 Dec 2026\n\n"
        f"{SYSTEM}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "你是谁？<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert prompt == tokenizer.encode(expected_text, add_special_tokens=False)
    assert tokenizer.decode(prompt) == expected_text
    assert prompt[:2] == [BEGIN_OF_TEXT, START_HEADER]
    assert prompt[-4:-1] == [START_HEADER, tokenizer.convert_tokens_to_ids("assistant"), END_HEADER]
    assert example["input_ids"].count(BEGIN_OF_TEXT) == 1
    reply = tokenizer.encode("我是甄嬛，家父是大理寺少卿甄远道。", add_special_tokens=False)
    assert trained == [*reply, EOT]
    assert example["input_ids"] == prompt + trained
    assert example["attention_mask"] == [1] * len(example["input_ids"])


def test_end_of_turn_comes_from_the_template() -> None:
    assert end_of_turn_ids(llama31_tokenizer()) == [EOT]
    smol = smollm2_tokenizer()
    # ChatML writes "<|im_end|>\n" after a reply; the newline is not part of the turn.
    assert smol.convert_ids_to_tokens(end_of_turn_ids(smol)) == ["<|im_end|>"]


@pytest.mark.parametrize("tokenizer_of", [llama31_tokenizer, smollm2_tokenizer])
def test_training_prompt_is_the_served_prompt(tokenizer_of: Any) -> None:
    """The gateway's chat route renders a persona request to exactly the trained prompt."""
    tokenizer = tokenizer_of()
    request = ChatCompletionRequest.model_validate(
        {"model": "zhenhuan", "messages": [{"role": "user", "content": "你是谁？"}]}
    )
    served = render_prompt_ids(
        tokenizer, conversation(request, ModelTarget("zhenhuan", system_prompt=SYSTEM))
    )
    example = format_example(
        tokenizer,
        row(),
        system_prompt=SYSTEM,
        max_length=384,
        end_of_turn=end_of_turn_ids(tokenizer),
    )
    assert example is not None
    assert split(example)[0] == served


def test_history_row_system_and_input() -> None:
    tokenizer = llama31_tokenizer()
    history = (
        {"role": "user", "content": "皇上驾到！"},
        {"role": "assistant", "content": "皇上万福金安。"},
    )
    example = format_example(
        tokenizer,
        row(instruction="你是谁？", input="请回答", system="你是甄嬛。", history=history),
        system_prompt=SYSTEM,
        max_length=384,
        end_of_turn=[EOT],
    )
    assert example is not None
    text = tokenizer.decode(split(example)[0])
    assert SYSTEM not in text  # a row's own system prompt wins, as a request's own does
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 02 Dec 2026\n\n你是甄嬛。<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n皇上驾到！<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n皇上万福金安。<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n你是谁？\n请回答<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_max_length_truncates_and_drops_prompt_only_examples() -> None:
    tokenizer = llama31_tokenizer()
    full = format_example(tokenizer, row(), system_prompt=SYSTEM, max_length=384, end_of_turn=[EOT])
    assert full is not None
    prompt_len = len(split(full)[0])
    cut = format_example(
        tokenizer, row(), system_prompt=SYSTEM, max_length=prompt_len + 3, end_of_turn=[EOT]
    )
    assert cut is not None
    assert cut["input_ids"] == full["input_ids"][: prompt_len + 3]
    assert cut["labels"] == full["labels"][: prompt_len + 3]
    assert len(cut["attention_mask"]) == prompt_len + 3
    assert (
        format_example(
            tokenizer, row(), system_prompt=SYSTEM, max_length=prompt_len, end_of_turn=[EOT]
        )
        is None
    )
