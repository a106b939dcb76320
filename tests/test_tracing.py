"""One trace across the queue: spans from the real API and worker, received over OTLP/HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.hooks import WEBHOOKS, Receiver
from tests.jobs import wait_for
from tests.tracing import ReceivedSpan, traced_env

SERVER, PRODUCER, CONSUMER, CLIENT = 2, 4, 5, 3  # opentelemetry.proto Span.SpanKind values


@pytest.mark.slow
def test_one_trace_holds_the_request_the_enqueue_the_job_its_s3_calls_and_webhook(make_stack, otlp):
    hook = Receiver()
    stack = make_stack(**traced_env(otlp), **WEBHOOKS)
    with stack.client() as client:
        body = {"file_ids": [70000, 70007], "callbackUrl": hook.url}
        accepted = client.post("/v1/download/initiate", json=body)
        assert accepted.status_code == 202
        job_id = accepted.json()["jobId"]
        done = wait_for(client, job_id)
        status = client.get(f"/v1/download/status/{job_id}")
    assert done["status"] == "completed", done
    trace_id = done["traceId"]
    assert trace_id and len(trace_id) == 32
    assert accepted.headers["x-trace-id"] == trace_id  # the initiate request started the trace
    assert status.headers["x-trace-id"] not in ("", trace_id)  # each request has its own

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {span.name for span in spans}
        return {
            "POST /v1/download/initiate",
            "enqueue downloads-small",
            "process downloads-small",
            "process webhooks",
            "POST webhook",
        } <= names and any(s.name == "S3.CompleteMultipartUpload" for s in spans)

    spans = otlp.wait_for(trace_id, complete)
    by_id = {span.span_id: span for span in spans}
    roots = [span for span in spans if not span.parent_id]
    assert [(r.name, r.kind, r.service) for r in roots] == [
        ("POST /v1/download/initiate", SERVER, "delineate-api")
    ]
    assert all(span.parent_id in by_id for span in spans if span.parent_id), "a parent link is broken"

    server = roots[0]
    (enqueue,) = [s for s in spans if s.name == "enqueue downloads-small"]
    (job,) = [s for s in spans if s.name == "process downloads-small"]
    assert (enqueue.service, enqueue.kind, enqueue.parent_id) == ("delineate-api", PRODUCER, server.span_id)
    assert (job.service, job.kind, job.parent_id) == ("delineate-worker", CONSUMER, enqueue.span_id)
    s3_calls = [s for s in spans if s.name.startswith("S3.")]
    assert {s.name for s in s3_calls} >= {"S3.HeadObject", "S3.GetObject", "S3.UploadPart"}
    assert sum(s.name == "S3.HeadObject" for s in s3_calls) == 2  # one per file
    assert all(s.service == "delineate-worker" and s.parent_id == job.span_id for s in s3_calls)
    # the enqueue's Redis MULTI is in the trace too, under the enqueue span
    assert any(s.kind == CLIENT and s.parent_id == enqueue.span_id for s in spans)
    # the webhook delivery continues the same trace: its job span, then one span per attempt
    (delivery,) = [s for s in spans if s.name == "process webhooks"]
    (attempt,) = [s for s in spans if s.name == "POST webhook"]
    assert (delivery.service, delivery.kind, delivery.parent_id) == (
        "delineate-worker",
        CONSUMER,
        enqueue.span_id,
    )
    assert (attempt.kind, attempt.parent_id) == (CLIENT, delivery.span_id)
    assert len(hook.for_job(job_id)) == 1
    hook.server.shutdown()
    # RQ's own polling (no job around it) is not exported as thousands of one-span traces
    assert all(s.kind != CLIENT for s in otlp.spans if not s.parent_id)


def test_tracing_off_means_no_trace_ids_and_no_errors(stack):
    with stack.client() as client:
        accepted = client.post("/v1/download/initiate", json={"file_ids": [70000]})
        done = wait_for(client, accepted.json()["jobId"])
    assert "x-trace-id" not in accepted.headers
    assert done["status"] == "completed" and done["traceId"] is None
    logs = stack.api.output() + stack.workers[0].output()
    assert "trace_id" not in logs
    assert "opentelemetry" not in logs.lower()
    assert httpx.get(f"{stack.url}/health/live", timeout=5).status_code == 200


@pytest.mark.slow
def test_an_unsampled_trace_gives_no_dead_trace_links(make_stack, otlp):
    """OTEL_TRACES_SAMPLE_RATIO=0: nothing exported, so no trace id is handed out either."""
    stack = make_stack(OTEL_TRACES_SAMPLE_RATIO="0", **traced_env(otlp))
    with stack.client() as client:
        accepted = client.post("/v1/download/initiate", json={"file_ids": [70000]})
        done = wait_for(client, accepted.json()["jobId"])
    assert done["status"] == "completed" and done["traceId"] is None
    assert "x-trace-id" not in accepted.headers
    stack.stop()  # the SDK flushes at exit: whatever was recorded has been sent now
    assert otlp.spans == []
