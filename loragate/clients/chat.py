"""`loragate chat`: a terminal chat with a gateway, streamed, with persona switching.

Commands: /persona NAME, /personas, /system [TEXT], /result TEXT, /clear, /help, /quit.
Ctrl-C during a reply stops it (the partial reply stays in the history); Ctrl-D or /quit
leaves. With --tools FILE (a JSON list of OpenAI function tools) the model may call them: a
call is printed, not run, and /result TEXT gives it the result you choose.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from loragate.cli_settings import add_settings_arguments, settings_from_arguments
from loragate.clients.chat_tools import Reply, ToolOffer, function_name, gather_calls, load_tools
from loragate.clients.openai_client import GatewaySettings
from loragate.wire import error_message

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolChoiceOptionParam

    from loragate.wire import PersonaInfo

USER_PROMPT = "you> "
HELP = """commands:
  /persona NAME   talk to another persona (the history stays; /clear starts afresh)
  /personas       list the personas and the base model
  /system [TEXT]  set the system prompt (none: the persona's own)
  /result TEXT    answer the model's pending tool call with TEXT (no tool runs here)
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
        tools: ToolOffer | None = None,
        out: TextIO = sys.stdout,
    ):
        self.client = client
        self.model = model
        self.system = system
        self.sampling = sampling or Sampling()
        self.tools = tools
        self.out = out
        self.history: list[dict[str, Any]] = []
        self._told_about_results = False

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
        elif name == "/result" and arg:
            self._result(arg)
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

    def pending_calls(self) -> list[str]:
        """The ids of the last reply's tool calls that no `tool` message has answered yet."""
        answered: set[str] = set()
        for message in reversed(self.history):
            if message["role"] == "tool":
                answered.add(message["tool_call_id"])
            elif message["role"] == "assistant":
                calls = message.get("tool_calls") or []
                return [c["id"] for c in calls if c["id"] not in answered]
            else:
                break
        return []

    def _result(self, text: str) -> None:
        pending = self.pending_calls()
        if not pending:
            self.say("(no tool call is waiting for a result)")
            return
        message = {"role": "tool", "tool_call_id": pending[0], "content": text}
        if len(pending) > 1:
            self.history.append(message)
            self.say(f"(result kept; {len(pending) - 1} more call(s) wait for theirs)")
            return
        self._turn(message)  # every call has its result: the model goes on

    def reply(self, text: str) -> None:
        """Stream the reply to `text`; keep both turns unless the request failed."""
        self._turn({"role": "user", "content": text})

    def _turn(self, message: dict[str, Any]) -> None:
        import openai

        self.history.append(message)
        self.out.write(f"{self.model}> ")
        reply = Reply()
        try:
            self._stream_into(reply)
        except KeyboardInterrupt:
            self.say(" [stopped]")
            self.history.append(reply.message(finished=False))
            return
        except openai.APIError as exc:
            self.say(f"\n[error] {_message(exc)}")
            self.history.pop()
            return
        self.history.append(reply.message(finished=True))
        self._show_calls(reply)

    def _stream_into(self, reply: Reply) -> None:
        import openai

        tools = self.tools
        stream = self.client.chat.completions.create(
            model=self.model,
            messages=self._messages(),
            stream=True,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_tokens=self.sampling.max_tokens,
            tools=tools.tools if tools else openai.omit,
            tool_choice=self._tool_choice(),
        )
        with stream:  # leaving it closes the connection, which aborts the request upstream
            for chunk in stream:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is None:
                    continue
                gather_calls(reply.calls, delta.tool_calls or [])
                if delta.content:
                    reply.parts.append(delta.content)
                    self.out.write(delta.content)
                    self.out.flush()

    def _tool_choice(self) -> ChatCompletionToolChoiceOptionParam | openai.Omit:
        """The offer's choice; after a tool's result `auto`, as the OpenAI Agents SDK's
        `reset_tool_choice` does: a forced call would otherwise repeat for ever."""
        import openai

        if self.tools is None:
            return openai.omit
        if self.history and self.history[-1]["role"] == "tool":
            return "auto"
        return self.tools.choice_param()

    def _show_calls(self, reply: Reply) -> None:
        """End the reply's line; each call on its own (a reply that is only calls: on this one)."""
        if reply.parts or not reply.calls:
            self.say("")
        for index in sorted(reply.calls):
            self.say(reply.calls[index].describe())
        if reply.calls and not self._told_about_results:
            self._told_about_results = True
            self.say("(the tool is not run here: /result TEXT answers the call)")


def _describe(persona: PersonaInfo) -> str:
    details = [d for d in (persona.state, persona.description) if d]
    return f"{persona.name}  ({'; '.join(details)})" if details else persona.name


def _message(exc: openai.APIError) -> str:
    """The gateway's words; for a 429 or 503 (the SDK's retries spent), when to come back."""
    import openai

    message = error_message(exc.body) or exc.message
    retry_after = None
    if isinstance(exc, openai.APIStatusError):
        retry_after = exc.response.headers.get("retry-after")
    if retry_after and "retry" not in message.lower():
        message += f" Retry in {retry_after} s."
    return message


def default_model(client: openai.OpenAI, known: list[str]) -> str:
    """The base model; for a key that may not use it, its first persona."""
    from loragate.clients.openai_client import served_base_model

    try:
        return served_base_model(client)
    except LookupError:
        if not known:
            raise
        return known[0]


def model_names(client: openai.OpenAI) -> list[str]:
    """What `model` may name: the base model and every persona."""
    return [card.id for card in client.models.list().data]


def run(chat: TerminalChat, read_line: Callable[[str], str] = input) -> int:
    chat.say(f"Chatting with {chat.model}. /help lists the commands.")
    if chat.tools:
        names = ", ".join(function_name(t) or "?" for t in chat.tools.tools)
        chat.say(f"(tools offered: {names}; tool_choice {chat.tools.choice})")
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

    settings = settings_from_arguments(GatewaySettings, args)
    try:
        tools = load_tools(args.tools, args.tool_choice) if args.tools else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.tool_choice != "auto" and tools is None:
        print("--tool-choice needs --tools FILE", file=sys.stderr)
        return 2
    client = openai.OpenAI(base_url=settings.base_url, api_key=settings.key(), timeout=600)
    try:
        known = model_names(client)
        model = args.persona or default_model(client, known)
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
    chat = TerminalChat(client, model, system=args.system, sampling=sampling, tools=tools)
    return run(chat)


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
    parser.add_argument(
        "--tools",
        type=Path,
        metavar="FILE",
        help="a JSON list of OpenAI function tools the model may call (printed, not run)",
    )
    parser.add_argument(
        "--tool-choice",
        default="auto",
        metavar="CHOICE",
        help="with --tools: auto (default), none, required, or a tool's name to force its call",
    )
    parser.set_defaults(handler=_main)
