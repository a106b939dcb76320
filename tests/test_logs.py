"""Correlated JSON logs: trace_id/span_id/request_id and the job's digest where known, and nothing
secret: no credential, no presigned signature, no job id (the only key to a job)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import httpx
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
