"""The proof: the real API and worker behind real proxies, with the time-compressed `test` profile.

Each proxy kind (nginx itself, nginx emulating Cloudflare's 524, HAProxy emulating an ALB's idle
timeout) cuts after 2 s of silence. Through each: the legacy synchronous path is cut, the async
path (polling and SSE) is not, and a heartbeat slower than the idle timeout gets a stream cut.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from service import keys
from service.proxy import budget
from service.proxy.profiles import load_profile
from tests.jobs import initiate
from tests.proxies import KINDS, TIMEOUT_STATUS, follow_stream, proxy_factory, wait_for_workers

PROFILE = load_profile("test")
CUT_S = PROFILE.proxy.read_timeout_s
SLOW_MS = str(int(CUT_S * 1000 + 1500))  # one silent stretch well past the proxy's cut
FAST = {"DOWNLOAD_DELAY_MIN_MS": "200", "DOWNLOAD_DELAY_MAX_MS": "400"}


def job_client(stack, job_id: str) -> str:
    conn = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    try:
        return conn.hget(keys.job(job_id), "client")
    finally:
        conn.close()


@pytest.fixture
def proxied(make_stack, tmp_path):
    with proxy_factory(make_stack, tmp_path / "proxies") as make:
        yield make


def poll_until_done(client, job_id: str, statuses: list[int], timeout_s: float = 20) -> dict:
    """Poll as a client does (following Retry-After, capped for speed); record every status code."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/v1/download/status/{job_id}")
        statuses.append(response.status_code)
        body = response.json()
        if body.get("status") in {"completed", "failed", "cancelled"}:
            return body
        time.sleep(min(float(response.headers.get("retry-after", "1")), 0.2))
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_async_flow_and_stream_survive_the_proxy_that_cuts_legacy_start(proxied, kind):
    """With the profile's budget: fast and slow jobs complete through the proxy with zero 5xx."""
    assert not [f for f in budget.check(PROFILE) if f.severity == "violation"]
    stack, proxy = proxied(kind, workers=0, DOWNLOAD_DELAY_MIN_MS=SLOW_MS, DOWNLOAD_DELAY_MAX_MS=SLOW_MS)
    statuses: list[int] = []
    with proxy.client() as client:
        # The legacy path under this budget: the app answers its own JSON 504 before the proxy cuts.
        legacy = client.post(
            "/v1/download/start", json={"file_id": 70000}, headers={"X-Request-ID": "proof-1"}
        )
        assert legacy.status_code == 504
        assert "REQUEST_TIMEOUT_MS" in legacy.json()["message"]
        assert "layer" not in legacy.json(), "the proxy answered, not the app"
        assert legacy.headers["x-request-id"] == "proof-1"

        # A fast job (a worker drawing 0.2-0.4 s), followed by polling and by SSE.
        fast_worker = stack.add_worker(**FAST)
        wait_for_workers(stack, 1)
        fast_poll = initiate(client, [70000], headers={"X-Forwarded-For": "203.0.113.9"})
        # The proxy forwarded the client's address and the API (TRUSTED_PROXIES) believed it.
        assert job_client(stack, fast_poll) == "203.0.113.9"
        fast_stream = initiate(client, [70007])
        assert poll_until_done(client, fast_poll, statuses)["status"] == "completed"
        fast = follow_stream(client, fast_stream)
        assert fast.status == 200 and fast.error is None
        assert fast.terminal == "completed", [e.event for e in fast.events]
        fast_worker.stop()

        # A slow job: one file, so the stream is silent but for heartbeats for longer than the cut.
        stack.add_worker()
        wait_for_workers(stack, 1)
        slow_stream = initiate(client, [70014])
        slow_poll = initiate(client, [70021])
        polled: dict = {}

        def poll_slow() -> None:
            with proxy.client() as own:
                polled.update(poll_until_done(own, slow_poll, statuses))

        poller = threading.Thread(target=poll_slow)
        poller.start()
        slow = follow_stream(client, slow_stream)
        poller.join(30)
        assert slow.status == 200 and slow.error is None, slow.error
        assert slow.terminal == "completed", [e.event for e in slow.events]
        assert slow.seconds > CUT_S, "the job was not slower than the proxy's cut: proves nothing"
        assert slow.heartbeats >= 2, "the stream lived through silence without heartbeats?"
        assert polled["status"] == "completed"

        generated = client.get("/v1/download/status/" + slow_poll)
        assert generated.headers.get("x-request-id"), "no request id generated when absent"
    assert statuses and all(code < 500 for code in statuses), statuses
    # Access logs name routes, never job ids (bearer secrets): nginx's JSON log, HAProxy's line.
    job_ids = (fast_poll, fast_stream, slow_stream, slow_poll)
    logged = (proxy.prefix / "logs/access.log").read_text() if kind != "alb" else proxy.proc.output()
    assert "/v1/download/status/{job_id}" in logged and "/v1/download/stream/{job_id}" in logged
    assert not [job_id for job_id in job_ids if job_id in logged], "a job id in the proxy's access log"
    if kind == "nginx":  # the JSON access log: our request id and the upstream's timings
        lines = [json.loads(line) for line in (proxy.prefix / "logs/access.log").read_text().splitlines()]
        start = next(line for line in lines if line["request_id"] == "proof-1")
        assert start["status"] == 504 and start["upstream_status"] == "504"
        assert float(start["upstream_header_time"]) >= PROFILE.app.request_timeout_ms / 1000
        assert all(line["request_id"] for line in lines)
        with proxy.client() as client:  # Prometheus scrapes the API directly, not through nginx
            hidden = client.get("/metrics")
        assert hidden.status_code == 404 and "delineate_http_requests" not in hidden.text


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_budget_violations_are_real_cuts(proxied, kind):
    """A slow REQUEST_TIMEOUT_MS and a heartbeat slower than the idle timeout: the proxy cuts both."""
    broken = PROFILE.with_app(request_timeout_ms=30_000, sse_heartbeat_s=CUT_S + 3)
    rules = {f.rule for f in budget.check(broken) if f.severity == "violation"}
    assert {"heartbeat", "request-timeout"} <= rules
    stack, proxy = proxied(
        kind,
        REQUEST_TIMEOUT_MS="30000",
        SSE_HEARTBEAT_S=str(CUT_S + 3),
        DOWNLOAD_DELAY_MIN_MS=SLOW_MS,
        DOWNLOAD_DELAY_MAX_MS=SLOW_MS,
    )
    wait_for_workers(stack, 1)
    with proxy.client() as client:
        legacy = client.post("/v1/download/start", json={"file_id": 70000})
        assert legacy.status_code == TIMEOUT_STATUS[kind], legacy.text
        assert legacy.json()["layer"] == kind, "the proxy, not the app, must have cut this request"

        job_id = initiate(client, [70000])
        cut = follow_stream(client, job_id)
        assert cut.status == 200
        assert [e.event for e in cut.events][:1] == ["snapshot"]
        assert cut.terminal is None, "the stream was not cut: it delivered its terminal event"
        assert cut.seconds < int(SLOW_MS) / 1000, "the stream ended after the job, not at the cut"
        # The job itself is unharmed: only the connection was cut.
        assert poll_until_done(client, job_id, [])["status"] == "completed"
    if kind == "nginx":
        assert "upstream timed out" in proxy.error_log()
