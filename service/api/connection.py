"""One client connection: uvicorn's httptools protocol, bounded in what a request head may cost.

uvicorn bounds neither the size of a request's head (8 MB of headers were accepted) nor the time
it takes to arrive (a client sending a byte at a time held its connection, and its file
descriptor, forever); its keep-alive timeout only runs between requests. Here a head must be
complete within HTTP_READ_TIMEOUT_S of its first byte (or of the connection's opening), else
the connection is closed, and may hold HEAD_MAX_BYTES of request line and headers, else 431,
as the original Node service answered (Node's default limit is 16 KiB too). The body's own
timeout is the route's (service/api/schemas.py: read_body). The process's connection limit,
derived from its file-descriptor limit, is here too, and so is the answer past it: uvicorn's
bare-text 503 replaced by our JSON one with Retry-After.

Built on uvicorn's HttpToolsProtocol internals (its parser callbacks, `_start_asgi_task`):
tests/test_abuse.py covers each override, so an uvicorn upgrade that moves them fails there.
"""

from __future__ import annotations

import asyncio
import resource
from functools import cache
from typing import Any

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.errors import UNAVAILABLE_RETRY_AFTER_S, error_body
from service.api.responses import JSONResponse
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


async def over_connection_limit(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's answer past its connection limit, as ours: JSON, with Retry-After."""
    message = "This server holds all the connections it may (API_MAX_CONNECTIONS); retry shortly"
    headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S), "Connection": "close"}
    await JSONResponse(error_body(503, message, None), 503, headers=headers)(scope, receive, send)


class HeadTooLarge(Exception):
    """Raised from the parser's callback to stop it; uvicorn turns parser errors into a response."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size and a time limit on each request's head.

    Cheap per request (the first version, which counted every header in a Python callback and
    armed a timer per request, cost a bare endpoint about a third of its throughput): a head's
    size is summed once when it is complete and, while it is not, per read; one timer per
    connection checks when the current head started, re-armed only while requests keep coming.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_too_large = False
        self._head_since: float | None = self.loop.time()  # None: not reading a head
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm(_read_timeout_s())

    def _arm(self, delay: float) -> None:
        self._head_timer = self.loop.call_later(delay, self._check_head)

    def _check_head(self) -> None:
        """Close a connection whose current head is older than HTTP_READ_TIMEOUT_S."""
        self._head_timer = None
        if self._head_since is None or self.transport.is_closing():
            return  # between heads: the next one arms the timer again
        timeout = _read_timeout_s()
        left = self._head_since + timeout - self.loop.time()
        if left > 0:
            self._arm(left)
            return
        self.logger.info("Closing a connection whose request head was not complete in time.")
        self.transport.close()

    def on_message_begin(self) -> None:  # the first byte of a request
        self._head_since = self.loop.time()
        if self._head_timer is None:
            self._arm(_read_timeout_s())
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_since = None
        self._head_bytes = 0
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > HEAD_MAX_BYTES:  # a whole head in one read: stop parsing, answer 431
            self._head_too_large = True
            raise HeadTooLarge
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        reading_head = self._head_since is not None or self.cycle is None or self.cycle.response_complete
        super().data_received(data)
        if not reading_head or self._head_since is None:  # no head, or it completed in this read
            return
        self._head_bytes += len(data)
        if self._head_bytes > HEAD_MAX_BYTES and not self.transport.is_closing():
            self._send_431()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        super()._start_asgi_task(cycle, over_connection_limit if app is service_unavailable else app)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; 431 when the error was a head over the limit."""
        if self._head_too_large:
            self._send_431()
        else:
            super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _send_431(self) -> None:
        """The head grew past HEAD_MAX_BYTES before it ended (one read may add up to the
        transport's read size before this is checked)."""
        body = b"Request header fields too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
