"""Correlated JSON logs: trace_id/span_id/request_id and the job's digest where known, and nothing
secret: no credential, no presigned signature, no job id (the only key to a job)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from service import harness
from service.telemetry.logging import job_ref
from tests.jobs import initiate, wait_for
from tests.tracing import traced_env


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.mark.slow
def test_log_lines_carry_ids_and_never_secrets_or_signatures(make_stack, otlp):
    stack = make_stack(LOG_LEVEL="debug", **traced_env(otlp))
    with stack.client() as client:
        job_id = initiate(client, [70000, 70007])
        done = wait_for(client, job_id)
        assert done["status"] == "completed", done
        redirect = client.get(f"/v1/download/{job_id}/file")
        assert redirect.status_code == 302
    location = redirect.headers["location"]
    signature = parse_qs(urlsplit(location).query)["X-Amz-Signature"][0]
    assert httpx.get(location, timeout=30).status_code == 200
    stack.stop()  # flush everything the processes had to say

    api_text, worker_text = stack.api.output(), stack.workers[0].output()
    for text in (api_text, worker_text):
        assert harness.DEV_SECRET_KEY not in text
        assert signature not in text
        assert "X-Amz-Signature=" not in text and "X-Amz-Credential=" not in text
        assert job_id not in text

    api_lines = json_lines(api_text)
    (initiated,) = [
        line
        for line in api_lines
        if line.get("event") == "request" and line.get("route") == "/v1/download/initiate"
    ]
    assert initiated["trace_id"] == done["traceId"]
    assert len(initiated["span_id"]) == 16 and initiated["request_id"]
    assert {"timestamp", "level"} <= initiated.keys()

    assert job_ref(job_id) != job_id
    worker_lines = [line for line in json_lines(worker_text) if line.get("job") == job_ref(job_id)]
    events = [line["event"] for line in worker_lines]
    assert events[0] == "job_started" and events[-1] == "job_stopped", events
    assert all(line["trace_id"] == done["traceId"] and len(line["span_id"]) == 16 for line in worker_lines)


def keep_logging_state(monkeypatch) -> None:
    """configure() sets process-wide state: put this test process's back afterwards."""
    import logging

    noisy = ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore")
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker", *noisy):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "level", logger.level)
        monkeypatch.setattr(logger, "propagate", logger.propagate)


def test_access_lines_of_one_event_loop_turn_leave_in_one_write(monkeypatch):
    """The API's per-request cost: one write(2) per turn, not per access line; every line
    arrives, whole and in order, and a line logged off the loop is written at once."""
    import asyncio
    import io
    import sys

    import structlog

    from service.telemetry import logging as telemetry_logging

    class Counting(io.RawIOBase):
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            self.writes.append(bytes(data))
            return len(data)

    raw = Counting()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BufferedWriter(raw, 1 << 16), write_through=True))
    keep_logging_state(monkeypatch)
    monkeypatch.setattr(telemetry_logging, "_access", None)
    try:
        telemetry_logging.configure("info", "json")
        access = telemetry_logging.access_logger()

        async def burst() -> int:
            for n in range(20):
                access.info("request", route="/", status=200, n=n)
            written = len(raw.writes)
            await asyncio.sleep(0)  # the end of the turn
            return written

        assert asyncio.run(burst()) == 0
        assert len(raw.writes) == 1
        access.info("request", route="/", status=200, n=20)  # no loop here
        assert len(raw.writes) == 2
        lines = json_lines(b"".join(raw.writes).decode())
        assert [line["n"] for line in lines] == list(range(21))
    finally:
        structlog.reset_defaults()


def test_the_access_line_is_the_line_structlog_s_json_chain_renders(monkeypatch):
    """AccessLog renders the access line itself: the same fields in the same order, the same
    timestamp format, and nothing below the info level."""
    import io
    import re
    import sys

    import structlog

    from service.telemetry import logging as telemetry_logging

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, write_through=True))
    keep_logging_state(monkeypatch)
    monkeypatch.setattr(telemetry_logging, "_access", None)
    fields = {
        "method": "GET",
        "route": "/v1/download/status/{job_id}",
        "status": 200,
        "duration_ms": 0.25,
        "client": "10.0.0.7",
        "request_id": "a-request",
    }
    try:
        telemetry_logging.configure("info", "json")
        access = telemetry_logging.access_logger()
        assert isinstance(access, telemetry_logging.AccessLog)
        access.info("request", **fields)
        chain = structlog.wrap_logger(
            structlog.BytesLogger(sys.stderr.buffer),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(orjson.dumps),
            ],
        )
        chain.info("request", **fields)
        ours, theirs = raw.getvalue().decode().splitlines()
        stamp = re.compile(r'"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"')
        assert stamp.search(ours) and stamp.search(theirs), (ours, theirs)
        assert stamp.sub("", ours) == stamp.sub("", theirs)

        telemetry_logging.configure("warning", "json")
        telemetry_logging.access_logger().info("request", **fields)
        assert len(raw.getvalue().decode().splitlines()) == 2
    finally:
        structlog.reset_defaults()
