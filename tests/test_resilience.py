"""Dependency outages and concurrency, with real processes."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
import redis
from rq.registry import StartedJobRegistry
from rq.worker import Worker

from service.harness import wait_until
from service.keys import SMALL_QUEUE
from tests.gate import TcpGate
from tests.jobs import initiate, wait_for


@pytest.mark.slow
def test_s3_outage_makes_health_503_ready_degraded_and_the_job_rides_it_out(make_stack, s3_server):
    target = urlparse(s3_server.url)
    gate = TcpGate(target.hostname, target.port)
    stack = make_stack(
        S3_ENDPOINT=f"http://{gate.url_host}",
        DOWNLOAD_DELAY_MIN_MS="0",
        DOWNLOAD_DELAY_MAX_MS="0",
        JOB_MAX_RETRIES="5",
        JOB_RETRY_BASE_S="1",
    )
    try:
        with stack.client() as client:
            assert client.get("/health").status_code == 200
            gate.shut()
            down = client.get("/health")
            assert down.status_code == 503
            assert down.json() == {"status": "unhealthy", "checks": {"storage": "error", "redis": "ok"}}
            ready = client.get("/health/ready")
            assert ready.status_code == 200, "the API still serves everything but S3 reads"
            assert ready.json() == {"status": "degraded", "checks": {"storage": "degraded", "redis": "ok"}}
            assert client.get("/health/live").status_code == 200
            check = client.post("/v1/download/check", json={"file_id": 70000})
            assert check.status_code == 503 and check.headers["retry-after"]
            job_id = initiate(client, [70000])
            assert wait_for(client, job_id, {"processing"}, timeout_s=30)["error"] is None
            worker = stack.workers[0]
            wait_until(
                lambda: '"dependency_unavailable"' in worker.output(), 30, "the worker to log the outage"
            )
            gate.reopen()
            done = wait_for(client, job_id, timeout_s=60)
            assert done["status"] == "completed", done
            assert done["attempt"] == 1, "an outage spends no attempt"
            assert client.get("/health").status_code == 200
    finally:
        gate.shut()


@pytest.mark.slow
def test_one_worker_process_runs_many_downloads_at_once(make_stack):
    stack = make_stack(WORKER_CONCURRENCY="6", DOWNLOAD_DELAY_MIN_MS="3000", DOWNLOAD_DELAY_MAX_MS="3000")
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    with stack.client() as client:
        jobs = [initiate(client, [70000 + 7 * i]) for i in range(6)]
        registry = StartedJobRegistry(SMALL_QUEUE, connection=conn)
        wait_until(lambda: len(registry.get_job_ids()) >= 6, 10, "six jobs started", retry_on=())
        assert sorted(registry.get_job_ids()) == sorted(jobs), "all six should run together"
        workers = Worker.all(connection=conn)
        assert len(workers) == 1 and workers[0].get_state() == "busy"
        for job_id in jobs:
            assert wait_for(client, job_id)["status"] == "completed"
        # RQ drops a job from its started registry after the job function returns, a moment
        # after the job shows `completed` (its last write): every one must leave it
        wait_until(lambda: registry.get_job_ids() == [], 10, "started registry emptied")
