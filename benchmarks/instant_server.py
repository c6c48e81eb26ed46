"""loragate's real app over an engine that answers instantly: what the gateway itself costs.

Everything but the engine is production: `create_app`, the middleware, the routers, the chat
template rendered by the model's real tokenizer (its cost is the gateway's, not the engine's),
openai-python's response types, SSE, and the same uvicorn setup as `loragate serve`. The engine
is loragate's FakeEngine, replying a fixed number of tokens at once.

    python -m benchmarks.instant_server --tokenizer MODEL_DIR --port 8123 --reply-tokens 16

Its --state-dir (default: a new temporary one) holds the keys a run defines (overhead.py makes
a thousand of them, to measure what key checks and limits cost).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from loragate.adapters.registry import PersonaRegistry
from loragate.default_model import DEFAULT_MODEL_NAME
from loragate.engine.fake import FakeEngine
from loragate.engine.protocol import ChatTokenizer
from loragate.serve import serve_app
from loragate.server.app import create_app
from loragate.server.observability import configure_logging
from loragate.server.state import AppState
from loragate.settings import ServerSettings


class _NoHistory(list[Any]):
    """FakeEngine keeps every request for tests to inspect; under load that only grows."""

    def append(self, _: Any) -> None:
        pass


class InstantEngine(FakeEngine):
    def __init__(self, tokenizer: ChatTokenizer, reply_tokens: int):
        super().__init__(default_reply=(" word",) * reply_tokens, requests=_NoHistory())
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> ChatTokenizer:  # type: ignore[override]  # the real one, not chars
        return self._tokenizer


def instant_state(engine: InstantEngine, model_dir: str) -> Any:
    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        registry = PersonaRegistry(settings, engine, DEFAULT_MODEL_NAME, model_dir)
        yield AppState(settings=settings, engine=engine, catalog=registry)

    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="the model directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args()
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="loragate-instant-"))

    from transformers import AutoTokenizer

    tokenizer = cast(ChatTokenizer, AutoTokenizer.from_pretrained(args.tokenizer))
    engine = InstantEngine(tokenizer, args.reply_tokens)
    settings = ServerSettings.model_construct(
        port=args.port, legacy_port=0, log_level="warning", state_dir=state_dir
    )
    # `loragate.serve.run_server`, with this state factory instead of vLLM's.
    configure_logging(settings.log_level)
    serve_app(create_app(settings, instant_state(engine, args.tokenizer)), settings)


if __name__ == "__main__":
    main()
