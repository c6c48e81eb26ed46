"""uvicorn's HTTP protocol with a header-read timeout: a client that opens a connection, or
finishes a response, and then does not send a whole request's headers in time is closed.

uvicorn closes an idle keep-alive connection, but not one that never sends anything or sends
half its headers (its keep-alive timer stops at the first byte): 200 such clients held 200
sockets for good. Both of its HTTP implementations set `self.cycle` when a request's headers
are complete, which is what the timer checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def with_header_timeout(timeout: float) -> type[asyncio.Protocol]:
    base: Any = AutoHTTPProtocol

    class HeaderTimeoutProtocol(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            armed_for = self.cycle
            self.loop.call_later(timeout, self._close_if_no_request, armed_for)

        def _close_if_no_request(self, armed_for: object) -> None:
            if self.cycle is armed_for and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
