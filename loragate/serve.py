"""`loragate serve`: one app, one engine, listening on the API port and the legacy port."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from loragate.server.app import create_app
from loragate.server.connections import with_header_timeout
from loragate.server.lifecycle import Lifecycle
from loragate.server.observability import configure_logging
from loragate.settings import ServerSettings

logger = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns on TCP_NODELAY only for sockets whose protocol says TCP.
    # Without it a small write (a JSON body after its headers, an SSE event) waits for the
    # client's delayed ACK: about 40 ms per response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def listening_sockets(settings: ServerSettings) -> list[socket.socket]:
    sockets = [_bind(settings.host, settings.port)]
    if settings.legacy_port and settings.legacy_port != settings.port:
        sockets.append(_bind(settings.host, settings.legacy_port))
    return sockets


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM or SIGINT drains the app first (loragate.server.lifecycle) and the
    process then exits with the lifecycle's code, 0 after a drain. A second signal stops at once,
    as uvicorn does."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle):
        super().__init__(config)
        self.lifecycle = lifecycle
        lifecycle.serve_with(self._stop)
        self._drain: asyncio.Task[None] | None = None

    def _stop(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)  # the second signal: uvicorn's own, at once
            return
        logger.info("%s received: draining", signal.Signals(sig).name)
        # A signal handler runs between two steps of the event loop, in its thread.
        self._drain = asyncio.get_event_loop().create_task(self.lifecycle.drain())


def run_server(settings: ServerSettings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    serve_app(app, settings, app.state.lifecycle)


def serve_app(app: ASGIApp, settings: ServerSettings, lifecycle: Lifecycle | None = None) -> None:
    """Serve `app` on the settings' ports (the benchmark's instant-engine server uses it too);
    with its `lifecycle`, a signal drains it, and the process exits with the lifecycle's code."""
    sockets = listening_sockets(settings)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        # With JSON logs uvicorn's loggers go to the root logger's JSON handler, not its own.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=5,
        access_log=False,
        http=with_header_timeout(settings.header_read_timeout),
        timeout_keep_alive=settings.timeout_keep_alive,
        limit_concurrency=settings.max_connections,
    )
    ports = ", ".join(str(s.getsockname()[1]) for s in sockets)
    logger.info("listening on %s port(s) %s", settings.host, ports)
    # Server.run, not asyncio.run(serve()): it builds uvicorn's event loop (uvloop when
    # installed, as with the `uvicorn` command); asyncio.run would always use the slower default.
    if lifecycle is None:
        uvicorn.Server(config).run(sockets=sockets)
        return
    DrainingServer(config, lifecycle).run(sockets=sockets)
    if lifecycle.exit_code:
        sys.exit(lifecycle.exit_code)
