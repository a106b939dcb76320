"""Edge's own work on every request, checked on the layer itself: the request id it makes and
the headers it merges into a route's response (tests/test_api_contract.py checks the same over
a real socket on the running API)."""

from __future__ import annotations

import asyncio
import uuid

from service.api.middleware import DEFAULT_HEADERS, EXTRA_HEADERS, EdgeMiddleware, new_request_id


def test_a_new_request_id_is_a_random_uuid4():
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # canonical: lower-case hex, hyphens where uuid puts them


def respond(route_headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> list:
    """The response headers Edge sends for a route answering with `route_headers`, an inner
    layer having left `extra` for Edge to set."""
    sent: list[dict] = []

    async def route(scope, receive, send):
        scope["state"][EXTRA_HEADERS] = extra
        await send({"type": "http.response.start", "status": 200, "headers": route_headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-request-id", b"given-1")],
        "client": ("127.0.0.1", 5555),
    }
    asyncio.run(EdgeMiddleware(route)(scope, receive, send))
    return sent[0]["headers"]


def test_the_usual_response_gets_ours_and_every_default_once():
    limit = [(b"ratelimit-limit", b"100"), (b"ratelimit-remaining", b"99"), (b"ratelimit-reset", b"60")]
    route = [(b"content-length", b"2"), (b"content-type", b"application/json")]
    assert respond(route, limit) == [*route, (b"x-request-id", b"given-1"), *limit, *DEFAULT_HEADERS]


def test_ours_win_over_a_route_s_and_a_route_s_own_default_is_kept():
    route = [
        (b"content-length", b"2"),
        (b"x-request-id", b"from-the-route"),
        (b"ratelimit-remaining", b"7"),
        (b"x-frame-options", b"DENY"),
    ]
    limit = [(b"ratelimit-remaining", b"99")]
    headers = respond(route, limit)
    assert headers[:2] == [(b"content-length", b"2"), (b"x-frame-options", b"DENY")]
    assert headers[2:4] == [(b"x-request-id", b"given-1"), (b"ratelimit-remaining", b"99")]
    assert headers[4:] == [item for item in DEFAULT_HEADERS if item[0] != b"x-frame-options"]


def test_requests_in_progress_reach_the_gauge_once_per_event_loop_turn(monkeypatch):
    """20 requests in flight together: a few writes of the turn's net value (each a locked store
    into the metrics file in multiprocess mode), not an increment and a decrement each."""
    from service.telemetry import metrics

    written: list[tuple] = []
    gauge = metrics.HTTP_IN_PROGRESS
    for name in ("inc", "dec", "set"):
        method = getattr(gauge, name)

        def counted(*args, method=method, name=name):
            method(*args)
            written.append((name, *args))

        monkeypatch.setattr(gauge, name, counted)

    async def route(scope, receive, send):
        await asyncio.sleep(0)  # a request spans turns, as one awaiting Redis does
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    def scope():
        return {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("127.0.0.1", 1)}

    async def main() -> None:
        edge = EdgeMiddleware(route)
        await asyncio.gather(*(edge(scope(), receive, send) for _ in range(20)))
        await asyncio.sleep(0)  # the last turn's write

    asyncio.run(main())
    assert len(written) <= 3, written
    assert ("set", 20) in written and written[-1] == ("set", 0), written
