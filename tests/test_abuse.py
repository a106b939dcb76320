"""Bounded under abuse: what one client can make the API spend (issue #17, items 3 and 4).

Slow and huge request heads, trickled bodies, a burst of initiates from one client, more
streams than file descriptors: each is refused or cut by the API itself, over real sockets.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from service import keys
from service.harness import wait_until
from tests.jobs import initiate


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _one_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, read from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.mark.slow
def test_a_head_that_never_completes_is_cut_after_http_read_timeout(make_stack):
    stack = make_stack(workers=0, HTTP_READ_TIMEOUT_S="1")
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(stack.url) as kept, _connect(stack.url) as slow, _connect(stack.url) as silent:
        kept.sendall(request)
        assert _one_response(kept).startswith(b"HTTP/1.1 200 ")  # now idle between requests
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and the rest of the head never comes
        slow.settimeout(15)
        silent.settimeout(15)  # a connection that never sends a byte
        assert slow.recv(1024) == b""  # closed by the API (main held it forever: recv timed out)
        assert silent.recv(1024) == b""
        # idle for longer than HTTP_READ_TIMEOUT_S by now, but between requests that is
        # UVICORN_KEEPALIVE_S's business: the connection still serves
        kept.sendall(request)
        assert _one_response(kept).startswith(b"HTTP/1.1 200 ")


def test_a_head_over_16_kib_is_a_431_and_a_normal_one_passes(stack):
    with httpx.Client(base_url=stack.url) as client:
        assert client.get("/", headers={"X-Padding": "p" * 8_000}).status_code == 200
    with _connect(stack.url) as sock:
        # 20 KB of headers in one write, which the API reads whole (so it closes cleanly, no RST)
        more = b"".join(b"X-More-%d: " % i + b"m" * 400 + b"\r\n" for i in range(50))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + more + b"\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    with _connect(stack.url) as sock:  # a head that grows over several reads and never ends
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 10_000 + b"\r\n")
        _one_read_later(stack)
        sock.sendall(b"X-B: " + b"b" * 10_000 + b"\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def _one_read_later(stack) -> None:
    """A request on another connection: by its answer, the API has read what came before."""
    with httpx.Client(base_url=stack.url) as client:
        assert client.get("/health/live").status_code == 200


@pytest.mark.slow
def test_a_trickled_body_is_a_408_after_http_read_timeout(make_stack):
    stack = make_stack(workers=0, HTTP_READ_TIMEOUT_S="1")
    with _connect(stack.url) as sock:
        sock.settimeout(15)
        sock.sendall(
            b"POST /v1/download/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"file_id": '
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"HTTP_READ_TIMEOUT_S" in answer and b'"requestId"' in answer


def test_sse_to_an_http_1_0_client_is_not_chunked(stack):
    with stack.client() as client:
        job_id = initiate(client, [70000])
    with _connect(stack.url) as sock:
        sock.sendall(f"GET /v1/download/stream/{job_id} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        answer = _read_all(sock)  # ends: an HTTP/1.0 response is delimited by length or close
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    lowered = head.lower()
    assert b"transfer-encoding" not in lowered and b"text/event-stream" in lowered
    assert f"content-length: {len(body)}".encode() in lowered
    assert b"event: snapshot" in body and job_id.encode() in body


@pytest.mark.slow
def test_sse_streams_are_capped_per_client_and_per_process(make_stack):
    stack = make_stack(
        workers=0,  # jobs stay queued: streams stay open
        SSE_MAX_STREAMS="3",
        SSE_MAX_STREAMS_PER_CLIENT="2",
        TRUSTED_PROXIES="127.0.0.1/32",
        SSE_HEARTBEAT_S="30",
    )

    def as_client(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    with stack.client() as client:
        job_id = initiate(client, [70000])
        url = f"/v1/download/stream/{job_id}"
        first = client.stream("GET", url, headers=as_client("198.51.100.1"))
        second = client.stream("GET", url, headers=as_client("198.51.100.1"))
        with first as a1, second as a2:
            assert a1.status_code == 200 and a2.status_code == 200
            conn = redis.Redis.from_url(stack.env["REDIS_URL"])

            def stream_reads() -> int:  # the XREVRANGE every accepted stream opens with
                return conn.info("commandstats").get("cmdstat_xrevrange", {}).get("calls", 0)

            opened = stream_reads()
            for _ in range(5):  # an EventSource retrying: each refusal costs no read
                third = client.get(url, headers=as_client("198.51.100.1"))
            assert stream_reads() == opened
            assert third.status_code == 429, third.text
            assert int(third.headers["retry-after"]) >= 1
            assert "SSE_MAX_STREAMS_PER_CLIENT" in third.json()["message"]
            with client.stream("GET", url, headers=as_client("198.51.100.2")) as b1:
                assert b1.status_code == 200
                full = client.get(url, headers=as_client("198.51.100.3"))
                assert full.status_code == 503, full.text
                assert int(full.headers["retry-after"]) >= 1
                assert "SSE_MAX_STREAMS" in full.json()["message"]
                # polling still works for everyone
                assert client.get(
                    f"/v1/download/status/{job_id}", headers=as_client("198.51.100.3")
                ).is_success
        # the streams closed: their slots are back
        with stack.client() as other:

            def reopened() -> bool:
                with other.stream("GET", url, headers=as_client("198.51.100.3")) as again:
                    return again.status_code == 200

            wait_until(reopened, 10, "a stream slot given back")


@pytest.mark.slow
def test_the_connection_limit_answers_503_instead_of_running_out_of_descriptors(make_stack):
    stack = make_stack(workers=0, API_MAX_CONNECTIONS="4")
    idle = [_connect(stack.url) for _ in range(4)]
    try:
        with _connect(stack.url) as sock:
            sock.settimeout(15)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"retry-after: " in head.lower() and b"API_MAX_CONNECTIONS" in body, answer
    finally:
        for sock in idle:
            sock.close()
    with stack.client() as client:
        wait_until(lambda: client.get("/").status_code == 200, 10, "the idle connections gone")


def test_the_default_connection_limit_follows_the_fd_limit():
    import resource

    from service.api.connection import FD_RESERVED, connection_limit
    from service.settings import load_settings

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit(load_settings()) == max(32, int(soft * 0.9) - FD_RESERVED)
    assert connection_limit(load_settings(api_max_connections=77)) == 77


@pytest.mark.slow
def test_concurrent_initiates_from_one_client_are_one_redis_step_each(make_stack):
    """100 concurrent initiates from one client: every one WATCHed the same per-client key and
    retried from the start on each conflict, O(n^2) round trips. Now each is one script, and
    the scripts of one event-loop turn share a pipeline: not a Redis connection each."""
    stack = make_stack(workers=0, PER_CLIENT_MAX_ACTIVE_JOBS="1000")
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    count = 100

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/download/initiate", json={"file_ids": [70000 + i]}) for i in range(count))
            )
        return [reply.status_code for reply in replies]

    conn.config_resetstat()
    assert asyncio.run(burst()) == [202] * count
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in conn.info("commandstats").items()}
    assert not {"watch", "multi", "exec"} & set(calls), calls  # no optimistic transaction to lose
    # one script run per initiate (a first run per connection may find the script not loaded yet)
    assert calls.get("evalsha", 0) + calls.get("eval", 0) - calls.get("script|load", 0) == count, calls
    assert conn.zcard(keys.client_active("127.0.0.1")) == count
    # the API's pool keeps what it opened: one per initiate before they shared the pipeline
    assert conn.info("clients")["connected_clients"] < count // 4


@pytest.mark.slow
def test_the_per_client_limit_holds_under_a_concurrent_burst(make_stack):
    stack = make_stack(workers=0, PER_CLIENT_MAX_ACTIVE_JOBS="5")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/download/initiate", json={"file_ids": [70000 + i]}) for i in range(30))
            )
        return [reply.status_code for reply in replies]

    codes = asyncio.run(burst())
    assert codes.count(202) == 5 and codes.count(429) == 25, codes
