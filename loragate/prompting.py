"""The one place a conversation becomes prompt tokens, shared by serving and training.

The model's own chat template renders the text, and the text is tokenized without adding
special tokens: the template already wrote BOS, so tokenizing it again would add a second one
(the Llama-3.1 tutorial's bug). Training calls the same function, so the prompt a persona was
trained on is the prompt it is served with.

Llama-3.1's template stamps "Today Date: 26 Jul 2024" (its release) unless it is given
`date_string`: serving and training both give it today's date, in the format Llama-3.2's template
writes with `strftime_now`. Templates without a date ignore it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Protocol, TypedDict


class Message(TypedDict):
    role: str
    content: str


class TemplateTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, /, **kwargs: Any) -> Any: ...

    def encode(self, text: str, /, **kwargs: Any) -> list[int]: ...


def build_messages(
    system_prompt: str | None, history: Sequence[Message], user: str | None = None
) -> list[Message]:
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(history)
    if user is not None:
        messages.append({"role": "user", "content": user})
    return messages


def today() -> datetime.date:
    return datetime.date.today()


def template_date() -> str:
    """Llama-3.1's way of writing the date: "02 Dec 2026"."""
    return today().strftime("%d %b %Y")


def render_prompt_text(
    tokenizer: TemplateTokenizer, messages: Sequence[Message], *, add_generation_prompt: bool
) -> str:
    text = tokenizer.apply_chat_template(
        list(messages),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        date_string=template_date(),
    )
    assert isinstance(text, str)
    return text


def render_prompt_ids(
    tokenizer: TemplateTokenizer, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> list[int]:
    text = render_prompt_text(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return list(tokenizer.encode(text, add_special_tokens=False))
