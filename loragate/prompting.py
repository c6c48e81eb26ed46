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
from importlib import resources
from typing import Any, NotRequired, Protocol, TypedDict

# For ChatML models whose own template renders no tools (SmolLM2's): hermes' call format.
CHATML_TOOLS_TEMPLATE = "chatml_tools.jinja"


class Message(TypedDict):
    role: str
    content: str
    # An assistant turn that called tools: [{"id", "type", "function": {"name", "arguments"}}],
    # the arguments as an object (templates write them with `tojson`).
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]  # a tool turn: the call it answers


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


def tool_template(tokenizer: Any) -> str | None:
    """The template to render tools with: None when the model's own renders them (Llama-3.1's),
    loragate's ChatML tool template for a ChatML model whose own does not (SmolLM2's)."""
    own = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(own, str) or "tools" in own:
        return None
    if "<|im_start|>" in own:
        return resources.files("loragate.templates").joinpath(CHATML_TOOLS_TEMPLATE).read_text()
    raise ValueError("this model's chat template cannot render tools")


def render_prompt_text(
    tokenizer: TemplateTokenizer,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    tools: Sequence[dict[str, Any]] | None = None,
    chat_template: str | None = None,
) -> str:
    """`chat_template`: a persona's own, in place of the model's (for tools too)."""
    extra: dict[str, Any] = {}
    if chat_template is not None:
        extra["chat_template"] = chat_template
    if tools:
        extra["tools"] = list(tools)
        template = None if chat_template is not None else tool_template(tokenizer)
        if template is not None:
            extra["chat_template"] = template
    text = tokenizer.apply_chat_template(
        list(messages),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        date_string=template_date(),
        **extra,
    )
    assert isinstance(text, str)
    return text


def render_prompt_ids(
    tokenizer: TemplateTokenizer,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[dict[str, Any]] | None = None,
    chat_template: str | None = None,
) -> list[int]:
    text = render_prompt_text(
        tokenizer,
        messages,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        chat_template=chat_template,
    )
    return list(tokenizer.encode(text, add_special_tokens=False))
