"""The least an SSE stream can cost on this machine: a bare ASGI app on the API's own server.

`loadtest/bench_sse.py --phases` runs it beside the service, under uvicorn with the same loop
(uvloop) and HTTP parser (httptools), and measures both with the same client. Each stream here
is the request's own task and nothing else: no middleware, no hub, no access log, no metrics.
So its per-stream CPU for an event and for an ending is the machine's floor for uvicorn, and
the service's figures divided by these say what Delineate adds, on whatever machine runs it.

Any GET path opens a stream (a `snapshot` event at once); each POST /fire wakes every open
stream once: the first time it sends a `progress` event, the second time a `completed` event
and ends the response, as the service does with a job's terminal event. A GET with
Last-Event-ID (EventSource's reconnect after the end) is answered 204, as the service does.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import Receive, Scope, Send

_waiting: list[asyncio.Future[None]] = []


def _event(name: str, event_id: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\nid: {event_id}\ndata: {json.dumps(data)}\n\n".encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "POST":  # /fire
        woken = len(_waiting)
        for future in _waiting:
            future.set_result(None)
        _waiting.clear()
        body = str(woken).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if any(name == b"last-event-id" for name, _ in scope["headers"]):  # a reconnect after the end
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    await send({"type": "http.response.body", "body": _event("snapshot", "0-0", {}), "more_body": True})
    loop = asyncio.get_running_loop()
    events = [
        ("progress", "1-0", {"jobId": "floor", "done": 1, "total": 1}, True),
        ("completed", "2-0", {"jobId": "floor", "status": "completed"}, False),
    ]
    for name, event_id, data, more in events:
        future = loop.create_future()
        _waiting.append(future)
        await future
        await send({"type": "http.response.body", "body": _event(name, event_id, data), "more_body": more})
