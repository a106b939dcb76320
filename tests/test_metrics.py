"""Prometheus metrics from the real API (two uvicorn processes, multiprocess mode) and worker."""

from __future__ import annotations

import time

import httpx
import pytest

from service import harness
from tests.jobs import initiate, wait_for
from tests.metrics import scrape, value

STATUS_ROUTE = "/v1/download/status/{job_id}"


def worker_stack(make_stack, **env: str):
    port = harness.free_port()
    stack = make_stack(WORKER_METRICS_PORT=str(port), WORKER_METRICS_ADDR="127.0.0.1", **env)
    url = f"http://127.0.0.1:{port}/metrics"
    harness.wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 20, "worker metrics")
    return stack, url


@pytest.mark.slow
def test_api_metrics_merge_processes_and_label_routes_by_template(make_stack, tmp_path):
    # An operator-set directory reaches both processes: only the API may use it.
    before = time.time()
    stack, worker_url = worker_stack(
        make_stack, API_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "mp")
    )
    sent = 30
    for _ in range(sent):  # a new connection each time: both uvicorn processes serve some
        assert httpx.get(f"{stack.url}/", timeout=10).status_code == 200
    with stack.client() as client:
        job_id = initiate(client, [70000])
        wait_for(client, job_id)
        missing = client.get("/v1/download/status/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404
    api = scrape(f"{stack.url}/metrics")
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    assert job_id not in text, "raw paths must never become label values"
    assert value(api, "delineate_http_requests_total", route="/", method="GET", status="2xx") == sent
    assert value(api, "delineate_http_requests_total", route=STATUS_ROUTE, status="2xx") >= 1
    assert value(api, "delineate_http_requests_total", route=STATUS_ROUTE, status="4xx") == 1
    assert value(api, "delineate_http_request_duration_seconds_count", route="/") == sent
    assert value(api, "delineate_jobs_accepted_total", queue="downloads-small") == 1
    # read from Redis at scrape time
    assert ("delineate_queue_depth", (("queue", "downloads-small"),)) in api
    assert value(api, "delineate_rq_workers") == 1
    assert value(api, "delineate_redis_memory_used_bytes") > 0
    assert api[("delineate_redis_memory_max_bytes", ())] == 0  # the test Redis sets no maxmemory
    assert value(api, "delineate_http_requests_in_progress") == 1  # this scrape itself
    # the worker kept its own registry: its counts are not merged into the API's
    assert value(scrape(worker_url), "delineate_jobs_started_total") == 1
    assert value(api, "delineate_jobs_started_total") == 0
    assert list((tmp_path / "mp").glob("*.db")), "the API did not use the directory it was given"
    # restart/deploy annotations: one series, the newest live process's start (API and worker)
    starts = [v for (name, _), v in api.items() if name == "delineate_process_start_time_seconds"]
    assert len(starts) == 1 and before <= starts[0] <= time.time()
    assert before <= value(scrape(worker_url), "delineate_process_start_time_seconds") <= time.time()


@pytest.mark.slow
def test_worker_exports_job_and_s3_metrics_on_its_own_port(make_stack):
    stack, worker_url = worker_stack(make_stack)
    with stack.client() as client:
        done = wait_for(client, initiate(client, [70000, 70007]))
        failed = wait_for(client, initiate(client, [12_345]))
    assert done["status"] == "completed" and failed["status"] == "failed"
    worker = scrape(worker_url)
    assert value(worker, "delineate_jobs_started_total", queue="downloads-small") == 2
    assert value(worker, "delineate_jobs_finished_total", outcome="completed") == 1
    assert value(worker, "delineate_jobs_finished_total", outcome="failed") == 1
    assert value(worker, "delineate_job_duration_seconds_count") == 2
    assert value(worker, "delineate_job_duration_seconds_bucket", le="300.0") == 2
    assert value(worker, "delineate_job_queue_wait_seconds_count") == 2
    assert value(worker, "delineate_s3_request_duration_seconds_count", operation="HeadObject") == 3
    assert (
        value(worker, "delineate_s3_request_duration_seconds_count", operation="CompleteMultipartUpload") == 1
    )
    assert value(worker, "delineate_s3_errors_total") == 0  # a 404 HEAD is an answer, not an error
    assert value(worker, "delineate_worker_download_slots") == 32
    assert value(worker, "delineate_worker_downloads_running") == 0


@pytest.mark.slow
def test_s3_errors_are_counted_by_operation(make_stack):
    """A wrong secret: S3 answers 403 to the job's HEAD; the error is counted, the job fails."""
    stack, worker_url = worker_stack(make_stack, JOB_MAX_RETRIES="0", S3_SECRET_ACCESS_KEY="wrong-secret")
    with stack.client() as client:
        body = wait_for(client, initiate(client, [70000]))
    assert body["status"] == "failed" and "403" in body["error"], body
    worker = scrape(worker_url)
    assert value(worker, "delineate_s3_errors_total", operation="HeadObject", reason="403") == 1
    assert value(worker, "delineate_jobs_finished_total", outcome="failed") == 1
    assert value(worker, "delineate_jobs_finished_total", outcome="completed") == 0


def test_the_request_counter_is_the_duration_histogram_s_count():
    """delineate_http_requests_total is read from the histogram at scrape time (one write per
    request instead of two): the same family, labels and values, once in the exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    from service.telemetry import exposition, metrics

    route = "/test-the-request-counter"
    for status in (200, 200, 201, 404, 503):
        metrics.observe_request(route, "GET", status, 0.002)
    metrics.observe_request(route, "BREW", 200, 0.002)
    body, _ = exposition.render(exposition.api_registry(), None)
    parsed = text_string_to_metric_families(body.decode())
    families = [f for f in parsed if f.name == "delineate_http_requests"]
    assert len(families) == 1 and families[0].type == "counter"
    assert families[0].documentation == metrics.RequestCounter.HELP
    ours = {
        (s.name, s.labels["method"], s.labels["status"]): s.value
        for s in families[0].samples
        if s.labels["route"] == route
    }
    assert ours == {
        ("delineate_http_requests_total", "GET", "2xx"): 3,
        ("delineate_http_requests_total", "GET", "4xx"): 1,
        ("delineate_http_requests_total", "GET", "5xx"): 1,
        ("delineate_http_requests_total", "other", "2xx"): 1,
    }
    created = f'delineate_http_requests_created{{method="GET",route="{route}",status="2xx"}}'
    assert created in body.decode()  # as a Counter had it


def test_a_turn_s_observations_are_written_as_histogram_observe_writes_them(monkeypatch):
    """Buffered to the end of the event-loop turn, a route's observations land in the same
    buckets, sum and count as one `observe` each, in one write per bucket and one of the sum."""
    import asyncio

    from prometheus_client import CollectorRegistry, Histogram

    from service.telemetry import metrics

    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 0.3, 59.0, 60.0, 61.0, 1e6]
    reference = Histogram("reference", "", buckets=metrics.HTTP_LATENCY_BUCKETS, registry=CollectorRegistry())
    for seconds in values:
        reference.observe(seconds)
    route = "/test-a-turn-s-observations"

    async def turn() -> int:
        for seconds in values:
            metrics.observe_request(route, "GET", 200, seconds)
        child = metrics.HTTP_LATENCY.labels(route, "GET", "2xx")
        pending = child._sum.get()
        await asyncio.sleep(0)  # the turn's end
        return pending

    assert asyncio.run(turn()) == 0  # nothing written during the turn
    ours = metrics.HTTP_LATENCY.labels(route, "GET", "2xx")
    assert ours._sum.get() == reference._sum.get()
    assert [b.get() for b in ours._buckets] == [b.get() for b in reference._buckets]
