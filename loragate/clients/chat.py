"""`loragate chat`: a terminal chat with a gateway, streamed, with persona switching.

Commands: /persona NAME, /personas, /system [TEXT], /clear, /help, /quit. Ctrl-C during a
reply stops it (the partial reply stays in the history); Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO, cast

from loragate.cli_settings import add_settings_arguments, settings_from_arguments
from loragate.clients.openai_client import GatewaySettings
from loragate.wire import error_message

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

    from loragate.wire import PersonaInfo

USER_PROMPT = "you> "
HELP = """commands:
  /persona NAME   talk to another persona (the history stays; /clear starts afresh)
  /personas       list the personas and the base model
  /system [TEXT]  set the system prompt (none: the persona's own)
  /clear          forget the conversation
  /quit           leave (also Ctrl-D); Ctrl-C stops a reply"""


@dataclass
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None


class TerminalChat:
    """One conversation; `handle` takes each typed line, the replies stream into `out`."""

    def __init__(
        self,
        client: openai.OpenAI,
        model: str,
        *,
        system: str | None = None,
        sampling: Sampling | None = None,
        out: TextIO = sys.stdout,
    ):
        self.client = client
        self.model = model
        self.system = system
        self.sampling = sampling or Sampling()
        self.out = out
        self.history: list[dict[str, str]] = []

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the user is leaving."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            return self._command(line)
        self.reply(line)
        return True

    def _command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/clear":
            self.history.clear()
            self.say("(conversation cleared)")
        elif name == "/personas":
            self._list_personas()
        elif name == "/persona" and arg:
            self._switch(arg)
        elif name == "/system":
            self.system = arg or None
            self.say(f"(system prompt: {self.system or 'the persona default'})")
        else:
            self.say(HELP)
        return True

    def _switch(self, name: str) -> None:
        known = model_names(self.client)
        if name.partition("@")[0] not in known:
            self.say(f"unknown persona '{name}'. Available: {', '.join(known)}")
            return
        self.model = name
        self.say(f"(now talking to {name})")

    def _list_personas(self) -> None:
        from loragate.clients.openai_client import list_personas, served_base_model

        base = served_base_model(self.client)
        self.say(f"{'*' if self.model == base else ' '} {base}  (base model, no persona)")
        for persona in list_personas(self.client):
            self.say(f"{'*' if self.model == persona.name else ' '} {_describe(persona)}")

    def _messages(self) -> list[ChatCompletionMessageParam]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return cast("list[ChatCompletionMessageParam]", system + self.history)

    def reply(self, text: str) -> None:
        """Stream the reply to `text`; keep both turns unless the request failed."""
        import openai

        self.history.append({"role": "user", "content": text})
        self.out.write(f"{self.model}> ")
        parts: list[str] = []
        try:
            self._stream_into(parts)
        except KeyboardInterrupt:
            self.say(" [stopped]")
        except openai.APIError as exc:
            self.say(f"\n[error] {_message(exc)}")
            self.history.pop()
            return
        self.history.append({"role": "assistant", "content": "".join(parts)})

    def _stream_into(self, parts: list[str]) -> None:
        stream = self.client.chat.completions.create(
            model=self.model,
            messages=self._messages(),
            stream=True,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_tokens=self.sampling.max_tokens,
        )
        with stream:  # leaving it closes the connection, which aborts the request upstream
            for chunk in stream:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    parts.append(delta)
                    self.out.write(delta)
                    self.out.flush()
        self.say("")


def _describe(persona: PersonaInfo) -> str:
    details = [d for d in (persona.state, persona.description) if d]
    return f"{persona.name}  ({'; '.join(details)})" if details else persona.name


def _message(exc: openai.APIError) -> str:
    return error_message(exc.body) or exc.message


def model_names(client: openai.OpenAI) -> list[str]:
    """What `model` may name: the base model and every persona."""
    return [card.id for card in client.models.list().data]


def run(chat: TerminalChat, read_line: Callable[[str], str] = input) -> int:
    chat.say(f"Chatting with {chat.model}. /help lists the commands.")
    while True:
        try:
            line = read_line(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            chat.say("")
            return 0
        if not chat.handle(line):
            return 0


def _main(args: argparse.Namespace) -> int:
    import openai

    from loragate.clients.openai_client import served_base_model

    settings = settings_from_arguments(GatewaySettings, args)
    client = openai.OpenAI(base_url=settings.base_url, api_key=settings.key(), timeout=600)
    try:
        known = model_names(client)
        model = args.persona or served_base_model(client)
    except openai.APIConnectionError:
        print(f"cannot reach a gateway at {settings.base_url}", file=sys.stderr)
        return 1
    except openai.APIError as exc:
        print(f"the gateway refused: {_message(exc)}", file=sys.stderr)
        return 1
    if model.partition("@")[0] not in known:
        print(f"unknown persona '{model}'. Available: {', '.join(known)}", file=sys.stderr)
        return 2
    sampling = Sampling(args.temperature, args.top_p, args.max_tokens)
    return run(TerminalChat(client, model, system=args.system, sampling=sampling))


def register_chat_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "chat",
        help="chat with a running gateway in the terminal (streamed, persona switching)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser, GatewaySettings)
    parser.add_argument("--persona", help="persona to talk to (default: the base model)")
    parser.add_argument("--system", help="system prompt (default: the persona's own)")
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument("--top-p", type=float, help="nucleus sampling probability mass")
    parser.add_argument("--max-tokens", type=int, help="most tokens per reply")
    parser.set_defaults(handler=_main)
