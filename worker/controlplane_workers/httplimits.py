"""Limits on what an HTTP client may hold before it is authenticated: header size, header time, connections.

uvicorn's httptools protocol buffers a header until it ends and waits for it for ever: 32 MB of unfinished
headers grew a process by 260 MB, and a half-sent header held a connection for 90+ s (issue 17, item 6).
`limited_protocol` subclasses it: more than `max_header_bytes` before the end of the headers answers 431 and
closes, headers not complete within `header_timeout` seconds answer 408 and close. Concurrent connections are
bounded by uvicorn's own `limit_concurrency` (503 past it); held connections count, the timeout frees them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    max_connections: int | None = None


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds each request's header phase in bytes and in time.

    Every read that leaves the headers unfinished is counted whole (with the tail of a pipelined request's body,
    if any), and the parser has buffered it already: a request overshoots the bound by at most one read (asyncio
    reads 256 KiB at most) before it is refused.
    """

    limits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a client that connects and sends nothing is timed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        super().data_received(data)
        if self._reading_headers and not self.transport.is_closing():  # the read left headers unfinished
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"Request headers exceed {self.limits.max_header_bytes} bytes.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a pipelined request waits behind a running one: leave that one be
            return
        self._refuse(408, f"Request headers not complete within {self.limits.header_timeout:g} s.")

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()
        self._reading_headers = False
        self._disarm_header_timer()


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class carrying `limits` (uvicorn instantiates the class it is given per connection)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
