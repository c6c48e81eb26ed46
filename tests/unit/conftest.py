"""The fast layer: the HTTP app over a scriptable fake engine, driven by the official SDK."""

from __future__ import annotations

import ast
import asyncio
import atexit
import functools
import gc
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from loragate.adapters.registry import PersonaRegistry
from loragate.adapters.validation import ModelShape
from loragate.engine.fake import FakeEngine, Hold
from loragate.server.app import StateFactory, create_app
from loragate.server.state import AppState
from loragate.settings import ServerSettings

# The state directory's default is the user's (~/.local/state/loragate): its keys would decide
# who may call every app here. The tests get one of their own, empty, unless they name another.
os.environ["XDG_STATE_HOME"] = _STATE_HOME = tempfile.mkdtemp(prefix="loragate-tests-state-")
atexit.register(shutil.rmtree, _STATE_HOME, ignore_errors=True)
os.environ.pop("LORAGATE_STATE_DIR", None)

# `make unit` deselects the slow tests; a module slow as a whole (its `pytestmark` says so, as a
# module that needs torch or vLLM does) is then not even imported, which alone takes seconds.
FAST_ONLY = "not slow"
_SLOW_MARK = re.compile(r"\bpytest\.mark\.slow\b")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    test_module = collection_path.name.startswith("test_") and collection_path.suffix == ".py"
    if config.getoption("markexpr") != FAST_ONLY or not test_module:
        return None
    return _marked_slow_as_a_whole(collection_path) or None


def pytest_collection_finish() -> None:
    """Every module is imported now, and lives as long as the run: frozen, its objects are no
    longer walked by each full garbage collection (the supervisor's after each restart, 0.2 s
    apiece otherwise, and pytest's own at the end)."""
    gc.freeze()


def _marked_slow_as_a_whole(module: Path) -> bool:
    """Read, not imported: whether the module-level `pytestmark` includes `pytest.mark.slow`."""
    for node in ast.parse(module.read_bytes()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return bool(_SLOW_MARK.search(ast.unparse(node.value)))
    return False


# test_schemathesis.py's operations, and the requests it made to each.
SCHEMATHESIS_TALLY = pytest.StashKey[tuple[list[str], Counter[str]]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tally = config.stash.get(SCHEMATHESIS_TALLY, None)
    if tally is None:
        return
    operations, counts = tally
    untested = sorted(set(operations) - set(counts))
    terminalreporter.write_line(
        f"schemathesis: {sum(counts.values())} requests over {len(counts)} of "
        f"{len(operations)} operations" + (f"; not run: {', '.join(untested)}" if untested else "")
    )
    for label, n in sorted(counts.items()):
        terminalreporter.write_line(f"  {n:5d}  {label}")


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds, from a test's thread (the app runs on another)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


BASE = "fake-base"
# No persona is registered on this app; the shape only has to exist.
FAKE_SHAPE = ModelShape(
    hidden_size=8,
    intermediate_size=16,
    num_attention_heads=2,
    num_key_value_heads=1,
    num_hidden_layers=1,
    head_dim=4,
)


def server_settings(**overrides: Any) -> ServerSettings:
    """The defaults, the environment's LORAGATE_* and `overrides`: no `.env` file of the
    developer's. Validated as the settings' __init__ does, without reading every source again
    (pydantic-settings' sources cost 5 ms a time, and every app of the tests makes settings)."""
    return ServerSettings.model_validate({**_from_environment(_environment()), **overrides})


def _environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("LORAGATE_")))


@functools.cache
def _from_environment(_: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    # `_env_file` is an argument of pydantic-settings' __init__, not a field: mypy, which reads
    # the signature from the fields (dataclass_transform), does not know it.
    read = ServerSettings(_env_file=None)  # type: ignore[call-arg]
    return {name: getattr(read, name) for name in read.model_fields_set}


def fake_openapi() -> dict[str, Any]:
    """The app's OpenAPI schema (the same whatever engine and catalog it is given)."""
    return create_app(server_settings(), fake_state_factory(FakeEngine())).openapi()


def fake_state_factory(engine: FakeEngine) -> StateFactory:
    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        registry = PersonaRegistry(settings, engine, BASE, "/models/fake", shape=FAKE_SHAPE)
        yield AppState(settings=settings, engine=engine, catalog=registry)

    return factory


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def settings() -> ServerSettings:
    return server_settings()


@pytest.fixture
def client(fake: FakeEngine, settings: ServerSettings) -> Iterator[TestClient]:
    app = create_app(settings, fake_state_factory(fake))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def sdk(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0
    )


@dataclass
class LiveFake:
    """The app over a FakeEngine, served by uvicorn on a real port (a client can hang up)."""

    origin: str
    fake: FakeEngine
    loop: asyncio.AbstractEventLoop | None = None  # the server's, once it has started

    @property
    def chat_url(self) -> str:
        return f"{self.origin}/v1/chat/completions"

    def release(self, hold: Hold) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(hold.released.set)


def with_asgi_spec(app: ASGIApp, spec_version: str) -> ASGIApp:
    """`app` as a server of that ASGI spec version would call it (uvicorn says 2.3)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": spec_version}}
        await app(scope, receive, send)

    return wrapped


@pytest.fixture
def live_fake(request: pytest.FixtureRequest) -> Iterator[LiveFake]:
    """Served in a thread with its own event loop, as `loragate serve` serves it. Indirect
    parametrization (`"2.4"`) makes it report another ASGI spec version than uvicorn's."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    live = LiveFake(f"http://127.0.0.1:{listening.getsockname()[1]}", FakeEngine())
    fake_factory = fake_state_factory(live.fake)

    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        live.loop = asyncio.get_running_loop()
        async with fake_factory(settings) as state:
            yield state

    settings = ServerSettings.model_construct(log_level="warning")
    app: ASGIApp = create_app(settings, factory)
    if spec_version := getattr(request, "param", None):
        app = with_asgi_spec(app, spec_version)
    # A request still held in the engine when the test ends is cancelled after a second.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()
