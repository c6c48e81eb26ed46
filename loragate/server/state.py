"""Everything the routes need, built in one place by the lifespan, reached by typed accessors."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Scope

from loragate.adapters.registry import PersonaRegistry
from loragate.adapters.targets import SamplingDefaults
from loragate.engine.protocol import Engine
from loragate.server.exposition import watch_personas
from loragate.server.metrics import GatewayMetrics
from loragate.server.responses_store import ResponseStore
from loragate.server.tool_calls import resolve_parser
from loragate.settings import ServerSettings
from loragate.tenants.key_store import KeyStore
from loragate.tenants.keyring import KeyRing, builtin_keys
from loragate.tenants.keys_file import read_keys_file
from loragate.tenants.limiter import InProcessLimiter, Limiter
from loragate.tenants.usage import UsageLog

T = TypeVar("T")


def _preparer() -> ThreadPoolExecutor:
    # One thread: a Hugging Face tokenizer is not safe to call from several threads at once
    # ("Already borrowed"), and one keeps requests in arrival order.
    return ThreadPoolExecutor(1, thread_name_prefix="loragate-prepare")


@dataclass
class AppState:
    settings: ServerSettings
    engine: Engine
    catalog: PersonaRegistry  # the one catalog of models: the base model and its personas
    model_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    started_at: float = field(default_factory=time.time)
    # Template rendering, tokenizing and engine-side checks: off the event loop, so that one
    # long prompt does not stall every open stream.
    preparer: ThreadPoolExecutor = field(default_factory=_preparer)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    def __post_init__(self) -> None:
        watch_personas(self.metrics, self.catalog, self.settings)

    @functools.cached_property
    def responses(self) -> ResponseStore:
        """The stored responses of /v1/responses, in --state-dir."""
        return ResponseStore(self.settings.state_dir)

    @functools.cached_property
    def keyring(self) -> KeyRing:
        """Who may call: --api-key, --admin-key, the --keys-file's and the stored keys."""
        s = self.settings
        file_keys = read_keys_file(s.keys_file) if s.keys_file is not None else {}
        return KeyRing(builtin_keys(s.api_key, s.admin_key), KeyStore(s.state_dir), file_keys)

    @functools.cached_property
    def limiter(self) -> Limiter:
        return InProcessLimiter()

    @functools.cached_property
    def usage(self) -> UsageLog:
        """A row per finished request of a model, in --state-dir."""
        return UsageLog(self.settings.state_dir)

    def close(self) -> None:
        """What the lifespan ends: the stores opened on first use, the preparing thread."""
        self.preparer.shutdown(wait=False, cancel_futures=True)
        for opened in ("responses", "usage"):
            if opened in vars(self):
                vars(self)[opened].close()
        if "keyring" in vars(self):
            self.keyring.store.close()

    @functools.cached_property
    def tool_parser(self) -> str:
        """vLLM's tool parser for `auto` tool choice (--tool-call-parser, resolved)."""
        return resolve_parser(self.settings.tool_call_parser, self.engine.tokenizer)

    async def off_loop(self, work: Callable[[], T]) -> T:
        context = contextvars.copy_context()  # the request id for the log lines
        return await asyncio.get_running_loop().run_in_executor(self.preparer, context.run, work)


def app_state(request: Request) -> AppState:
    return scope_state(request.scope)


def scope_state(scope: Scope) -> AppState:
    """The state of the app serving `scope` (Starlette puts the app in every scope)."""
    state = scope["app"].state.loragate
    assert isinstance(state, AppState)
    return state


def engine(request: Request) -> Engine:
    return app_state(request).engine


def registry(request: Request) -> PersonaRegistry:
    return app_state(request).catalog


def settings(request: Request) -> ServerSettings:
    return app_state(request).settings
