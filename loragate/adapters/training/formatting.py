"""One training example: the served prompt, then the reply and the end-of-turn token.

The prompt is `loragate.prompting.render_prompt_ids` with `add_generation_prompt=True`: the very
tokens the gateway sends to the engine for the same conversation and system prompt, so a persona
is trained on exactly what it will see (the tutorial trained on a hand-written Llama-3.1 string
with one system prompt and served another, without the generation prompt). Labels are -100 over
the prompt; the model learns the reply and to end its turn.
"""

from __future__ import annotations

from typing import Any, TypedDict

from loragate.adapters.training.dataset import TrainingRow
from loragate.prompting import Message, build_messages, render_prompt_ids, render_prompt_text

IGNORE_INDEX = -100  # what torch's cross-entropy (and so transformers) skips
_PROBE_USER = "Hello."
_PROBE_REPLY = "loragate end-of-turn probe"


class TrainingFormatError(ValueError):
    pass


class TrainingExample(TypedDict):
    input_ids: list[int]
    attention_mask: list[int]
    labels: list[int]


def row_messages(row: TrainingRow, system_prompt: str | None) -> list[Message]:
    """The conversation the server would render: a row's own system prompt wins, as a request's
    own system message wins over the persona's."""
    system = row.system if row.system is not None else system_prompt
    return build_messages(system, row.history, row.user_text)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The tokens that close an assistant turn in this model's own chat template.

    Rendered, not assumed: `<|eot_id|>` for Llama-3.1, `<|im_end|>` for SmolLM2 (whose template
    then writes a newline, not part of the turn). Falls back to the tokenizer's EOS token.
    """
    conversation: list[Message] = [{"role": "user", "content": _PROBE_USER}]
    prompt = render_prompt_text(tokenizer, conversation, add_generation_prompt=True)
    answered = [*conversation, Message(role="assistant", content=_PROBE_REPLY)]
    full = render_prompt_text(tokenizer, answered, add_generation_prompt=False)
    if full.startswith(prompt + _PROBE_REPLY):
        tail = tokenizer.encode(full[len(prompt) + len(_PROBE_REPLY) :], add_special_tokens=False)
        special = _special_ids(tokenizer)
        for i, token in enumerate(tail):
            if token in special:
                return list(tail[: i + 1])
    if tokenizer.eos_token_id is not None:
        return [int(tokenizer.eos_token_id)]
    raise TrainingFormatError(
        "cannot tell how this model ends an assistant turn: its chat template writes no special "
        "token after a reply and its tokenizer has no EOS token"
    )


def _special_ids(tokenizer: Any) -> set[int]:
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)


def format_example(
    tokenizer: Any,
    row: TrainingRow,
    *,
    system_prompt: str | None,
    max_length: int,
    end_of_turn: list[int],
) -> TrainingExample | None:
    """Tokens and labels for one row, cut at max_length; None when the prompt alone fills it."""
    prompt = render_prompt_ids(tokenizer, row_messages(row, system_prompt))
    reply = list(tokenizer.encode(row.output, add_special_tokens=False)) + end_of_turn
    if len(prompt) >= max_length:
        return None
    input_ids = (prompt + reply)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + reply)[:max_length]
    return TrainingExample(input_ids=input_ids, attention_mask=[1] * len(input_ids), labels=labels)
