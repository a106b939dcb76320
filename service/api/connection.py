"""One client connection: uvicorn's httptools protocol, bounded in what a request head may cost.

uvicorn bounds neither the size of a request's head (8 MB of headers were accepted) nor the time
it takes to arrive (a client sending a byte at a time held its connection, and its file
descriptor, forever); its keep-alive timeout only runs between requests. Here a head must be
complete within HTTP_READ_TIMEOUT_S of its first byte (or of the connection's opening), else
the connection is closed, and may hold HEAD_MAX_BYTES of request line and headers, else 431,
as the original Node service answered (Node's default limit is 16 KiB too). The body's own
timeout is the route's (service/api/schemas.py: read_body). The process's connection limit,
derived from its file-descriptor limit, is here too.
"""

from __future__ import annotations

import asyncio
import resource
from functools import cache

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings, load_settings

HEAD_MAX_BYTES = 16 * 1024
# File descriptors an API process keeps for what is not a client: Redis and S3 pools, logs,
# the metrics directory.
FD_RESERVED = 64


def connection_limit(settings: Settings) -> int:
    """API_MAX_CONNECTIONS, or when 0 what the fd limit allows: 90 % of it less FD_RESERVED.

    Past the limit uvicorn answers 503 at once instead of failing in accept() or, worse, in the
    middle of a request when Redis needs a new socket.
    """
    if settings.api_max_connections:
        return settings.api_max_connections
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(32, int(soft * 0.9) - FD_RESERVED)


@cache
def _read_timeout_s() -> float:
    return load_settings().http_read_timeout_s  # the same environment the app reads


class HeadTooLarge(Exception):
    """Raised from the parser's callback; uvicorn turns parser errors into a response."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size and a time limit on each request's head."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._reading_head = True
        super().connection_made(transport)
        self._start_head()

    def _start_head(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(_read_timeout_s(), self._head_timed_out)

    def _stop_head(self) -> None:
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self.logger.info("Closing a connection whose request head was not complete in time.")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._reading_head and self._head_timer is None:  # the first byte of the next request
            self._start_head()
        super().data_received(data)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > HEAD_MAX_BYTES:
            self._head_too_large = True
            raise HeadTooLarge

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._reading_head = True  # the keep-alive timeout runs until the next request's first byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; 431 when the error was a head over the limit."""
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        self._stop_head()
        body = b"Request header fields too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
