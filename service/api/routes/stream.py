"""GET /v1/download/stream/{job_id}: Server-Sent Events for one job.

A fresh client gets a `snapshot` (the full status) and then live events; a client that
reconnects with Last-Event-ID gets exactly what it missed. Events: `status` (queued,
processing, retrying), `progress` (a file finished), then one terminal event (`completed`,
`failed` or `cancelled`) after which the stream ends. A heartbeat comment after each
SSE_HEARTBEAT_S without an event keeps proxies from cutting an idle stream; after
SSE_MAX_STREAM_S, or when the process shuts down, the stream ends cleanly and the client resumes
with Last-Event-ID. Events that arrive together go out in one write (service/api/sse.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from service import keys
from service.api.errors import ApiError
from service.api.events import EVENT_ID_PATTERN, Entry, EventHub, stream_id
from service.api.routes.downloads import load_job, poll_after
from service.api.sse import Chunk, EventStream, StreamSlots
from service.jobs import state
from service.jobs.view import status_body
from service.runtime import Runtime
from service.telemetry import metrics

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = ServerSentEvent(comment="ping").encode()


def present(job_id: str, entry: Entry) -> ServerSentEvent:
    """A stored event as the client sees it (terminal events carry the result summary)."""
    entry_id, fields = entry
    name, data = fields["event"], json.loads(fields["data"])
    if name in state.TERMINAL:
        payload: dict[str, Any] = {
            "jobId": job_id,
            "status": name,
            "error": data.get("error"),
            "size": int(data["result_size"]) if data.get("result_size") not in (None, "") else None,
            "finishedAt": data.get("finished_at"),
            "downloadUrl": f"/v1/download/{job_id}/file" if name == state.COMPLETED else None,
        }
    elif name == "progress":
        total = data["total"] or 1
        payload = {**data, "percent": round(100 * data["done"] / total, 1)}
    else:  # stored field names (started_at) as the status JSON spells them (startedAt)
        payload = {"jobId": job_id, **{_camel(key): value for key, value in data.items()}}
        name = "status"
    return ServerSentEvent(data=json.dumps(payload), event=name, id=entry_id)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_ENCODED: dict[tuple[str, str], bytes] = {}
ENCODED_MAX = 4096


def encoded(job_id: str, entry: Entry) -> bytes:
    """`present` once per entry and process: a job's local subscribers all send the same bytes."""
    key = (job_id, entry[0])
    data = _ENCODED.get(key)
    if data is None:
        data = present(job_id, entry).encode()
        if len(_ENCODED) >= ENCODED_MAX:
            del _ENCODED[next(iter(_ENCODED))]  # the oldest: dicts keep insertion order
        _ENCODED[key] = data
    return data


def _opening(
    job_id: str, current: state.JobRecord, backlog: list[Entry], last_event_id: str | None, retry_ms: int
) -> tuple[bytes, str, bool]:
    """What a stream sends before live events, the id sent up to, and whether that ends it.

    Fresh: the snapshot (and the terminal event when the job has ended). Resumed: the backlog.
    """
    parts: list[bytes] = []
    if last_event_id:
        sent, to_send = last_event_id, backlog
    else:
        terminal = [e for e in backlog if e[1]["event"] in state.TERMINAL]
        before = [e for e in backlog if e not in terminal]
        sent = before[-1][0] if before else "0-0"
        snapshot = json.dumps(status_body(current))
        parts.append(ServerSentEvent(data=snapshot, event="snapshot", id=sent, retry=retry_ms).encode())
        to_send = terminal if current.finished else []
    for entry in to_send:
        parts.append(encoded(job_id, entry))
        sent = entry[0]
        if entry[1]["event"] in state.TERMINAL:
            return b"".join(parts), sent, True
    return b"".join(parts), sent, False


# A running job's record, its two newest events and (ARGV[1], an XRANGE lower bound) those after
# the client's Last-Event-ID, in one atomic read: a worker's MULTI cannot land between them. One
# command, so it joins the turn's pipeline (rt.batched) instead of taking a pooled connection
# for a MULTI of its own, as thousands of streams opening together each did.
OPENING_READ = """
local cut = {redis.call('HGETALL', KEYS[1]), redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 2)}
if ARGV[1] ~= '' then cut[3] = redis.call('XRANGE', KEYS[2], ARGV[1], '+') end
return cut
"""


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _entries(raw: list[list[Any]]) -> list[Entry]:
    return [(entry_id, _pairs(fields)) for entry_id, fields in raw]


LAST_EVENT_ID = re.compile(EVENT_ID_PATTERN)
STREAM_ID_MAX = 2**64 - 1  # each half of a stream id is a uint64 (and "(max" has no successor)


def last_event_id_of(request: Request) -> str | None:
    """The Last-Event-ID a client resumes from: a Redis Stream id (`1733140000000-0`), or 400.

    Anything else reached Redis as an XRANGE bound and came back as a Redis error (a 503 that
    blamed a dependency for the client's input).
    """
    value = request.headers.get("last-event-id") or None
    if value is None:
        return None
    if not LAST_EVENT_ID.fullmatch(value) or max(stream_id(value)) >= STREAM_ID_MAX:
        raise ApiError(400, "Last-Event-ID must be an event id this stream sent (digits-digits)")
    return value


async def stream(request: Request) -> Response:
    last_event_id = last_event_id_of(request)
    hub: EventHub = request.app.state.hub
    if last_event_id and hub.ended_with(request.path_params["job_id"], last_event_id):
        return Response(status_code=204)  # the client has the terminal event: nothing to read or hold
    job = await load_job(request)
    rt: Runtime = request.app.state.runtime
    settings = rt.settings
    # A stream's slot before any of its work: a client refused for holding too many (or a full
    # process) costs no subscription and no reads, however often its EventSource retries.
    slots: StreamSlots = request.app.state.stream_slots
    client = request.client.host if request.client else ""
    if refused := slots.take(client):
        if refused == 429:
            message = f"You hold {slots.per_client} streams (SSE_MAX_STREAMS_PER_CLIENT); poll the status"
        else:
            message = f"This server holds {slots.total} open streams (SSE_MAX_STREAMS); poll the status"
        raise ApiError(refused, message, {"Retry-After": poll_after(settings)})
    subscription = hub.subscribe(job.id)  # before reading: nothing can fall between the two

    def close() -> None:
        hub.unsubscribe(subscription)
        slots.give_back(client)

    try:
        key = keys.events(job.id)
        # the snapshot's id must match its content: the record and the events in one cut
        cut = await rt.batched.run_script(
            OPENING_READ, [keys.job(job.id), key], [f"({last_event_id}" if last_event_id else ""]
        )
        fields, newest, *missed = _pairs(cut[0]), _entries(cut[1]), *(_entries(e) for e in cut[2:])
        current = state.JobRecord.from_redis(fields) or job
        if last_event_id and stream_id(last_event_id) > stream_id(newest[0][0] if newest else "0-0"):
            last_event_id = None  # an id this stream never sent: start afresh, not wait in silence
        backlog = missed[0] if last_event_id else list(reversed(newest))
    except BaseException:
        close()
        raise
    if last_event_id and current.finished and not backlog:
        close()
        return Response(status_code=204)  # nothing left to send: EventSource stops reconnecting

    job_id = job.id  # the stream keeps only what it still needs, not the job records
    opening, first_sent, ended = _opening(job_id, current, backlog, last_event_id, settings.sse_retry_ms)
    if request.scope.get("http_version") == "1.0":
        # HTTP/1.0 has no chunked encoding, and uvicorn would chunk an open-ended stream anyway:
        # send what there is now with a Content-Length; EventSource reconnects with
        # Last-Event-ID after `retry` ms, which makes the stream a poll.
        close()
        return Response(opening, media_type=EventStream.media_type, headers=HEADERS)

    async def chunks() -> AsyncIterator[Chunk]:
        """The opening, then each batch of new events as one chunk, heartbeats when idle."""
        with metrics.SSE_CONNECTIONS.track_inprogress():
            yield opening, ended
            if ended:
                return
            sent = first_sent
            deadline = time.monotonic() + settings.sse_max_stream_s
            while not hub.closing.is_set():
                left = deadline - time.monotonic()
                if left <= 0:  # lifetime reached: end cleanly, the client resumes
                    return
                entries = await subscription.get(min(settings.sse_heartbeat_s, left))
                if entries is None:  # quiet for a heartbeat interval (or the lifetime is up)
                    if time.monotonic() < deadline:
                        yield HEARTBEAT, False
                    continue
                if not entries:  # shutting down or the client left: end cleanly
                    return
                parts = []
                sent_id = stream_id(sent)
                for entry in entries:
                    if stream_id(entry[0]) <= sent_id:  # already in the opening
                        continue
                    parts.append(encoded(job_id, entry))
                    sent = entry[0]
                    if entry[1]["event"] in state.TERMINAL:
                        yield b"".join(parts), True
                        return
                if parts:
                    yield b"".join(parts), False

    return EventStream(
        chunks(),
        headers=HEADERS,
        on_disconnect=subscription.wake,
        on_close=close,
        wind_down=hub.wind_down.wait,
    )
