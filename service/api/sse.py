"""A Server-Sent Events response that streams from the request's own task.

sse-starlette's EventSourceResponse runs every stream as an anyio task group of three tasks
(the stream, a disconnect listener, a shutdown listener) and puts a cancel scope and a lock
around each send. With thousands of open streams that machinery was a large share of the API's
CPU when many jobs ended at once, and of each connection's memory (loadtest/bench_sse.py,
docs/benchmarks.md). Here a stream is the request's task plus one small task waiting on
`receive()`, so that a client who goes away is noticed at once rather than at the next write;
events are still encoded by sse-starlette's ServerSentEvent (service/api/routes/stream.py).

The source yields chunks of already-encoded events with a flag telling whether the stream
ends with them: the last event and the end of the chunked body go out in one write. After
that, `wind_down` may hold the rest of the response's ending back (service/api/events.py:
WindDown): the client already has everything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Chunk = tuple[bytes, bool]  # encoded events, and whether the stream ends with them


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[Chunk],
        *,
        headers: Mapping[str, str],
        on_disconnect: Callable[[], None],
        on_close: Callable[[], None],
        wind_down: Callable[[], Awaitable[None]],
    ) -> None:
        """`on_disconnect` must make `chunks` end soon (wake its wait); `on_close` always runs
        once the stream is over, also when `chunks` never started (HEAD, an early error);
        `wind_down` is awaited after a stream that ended normally, before the response returns."""
        self.chunks = chunks
        self.on_disconnect = on_disconnect
        self.on_close = on_close
        self.wind_down = wind_down
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._watcher: asyncio.Future[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            if scope["method"] == "HEAD":  # headers only: a HEAD must not hold a stream open
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            # Not cancelled at the end (a cancellation costs more than the rest of the watcher):
            # once the response is complete, or the connection gone, `receive()` returns.
            self._watcher = asyncio.ensure_future(self._watch(receive))
            await self._stream(send)
        finally:
            self.on_close()
            await self.chunks.aclose()
        await self.wind_down()

    async def _stream(self, send: Send) -> None:
        async for data, last in self.chunks:
            await send({"type": "http.response.body", "body": data, "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive) -> None:
        """Wait for the client to go away (a GET's body, if any, is read and dropped)."""
        with contextlib.suppress(OSError):
            while (await receive())["type"] != "http.disconnect":
                pass
        self.on_disconnect()


class StreamSlots:
    """How many streams this process holds open, in all and per client address.

    Each open stream holds a file descriptor and ~25 KB for as long as SSE_MAX_STREAM_S; 600
    streams from one address were all accepted before these limits. A refused stream gets 429
    (that client has SSE_MAX_STREAMS_PER_CLIENT) or 503 (the process has SSE_MAX_STREAMS), both
    with Retry-After; the page then follows its jobs by polling. Counted per process, in memory:
    a stream lives and dies with its process, so a crash cannot leak a slot.
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}

    def take(self, client: str) -> int | None:
        """Take a slot for `client`; None when taken, else the status that refuses it."""
        held = self._by_client.get(client, 0)
        if held >= self.per_client:
            return 429
        if self.open >= self.total:
            return 503
        self._by_client[client] = held + 1
        self.open += 1
        return None

    def give_back(self, client: str) -> None:
        self.open -= 1
        held = self._by_client.pop(client) - 1
        if held:
            self._by_client[client] = held
