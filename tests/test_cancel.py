"""Cancellation: a queued job never starts, a running one stops within a second, 409 after the end."""

from __future__ import annotations

import time

import pytest
import redis
from rq.job import Job, JobStatus

from service import keys
from service.harness import wait_until
from service.jobs import cancel
from tests import sse
from tests.jobs import create_job, initiate, plant_execution, runtime_on, wait_for


@pytest.mark.slow
def test_running_job_stops_within_a_second_and_streams_cancelled(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="20000", DOWNLOAD_DELAY_MAX_MS="20000")
    with stack.client() as client:
        job_id = initiate(client, [70000, 70007])
        wait_for(client, job_id, {"processing"})
        with client.stream("GET", f"/v1/download/stream/{job_id}") as response:
            items = sse.read(response)
            assert next(e for e in items if isinstance(e, sse.Event)).event == "snapshot"
            asked = time.monotonic()
            cancelled = client.delete(f"/v1/download/{job_id}")
            assert cancelled.status_code == 200
            assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finishedAt"]
            terminal = next(e for e in items if isinstance(e, sse.Event) and e.event != "status")
            assert terminal.event == "cancelled"
        conn = redis.Redis.from_url(stack.env["REDIS_URL"])
        rq_job = Job.fetch(job_id, connection=conn)
        wait_until(
            lambda: rq_job.get_status(refresh=True) != "started",
            asked + 5 - time.monotonic(),
            "the worker to stop running the download",
            interval_s=0.02,
            retry_on=(),
        )
        stopped_after = time.monotonic() - asked
        assert stopped_after < 1.5, stopped_after
        body = client.get(f"/v1/download/status/{job_id}").json()
        assert body["status"] == "cancelled" and body["progress"]["done"] == 0
        again = client.delete(f"/v1/download/{job_id}")
        assert again.status_code == 409 and again.json()["requestId"]


@pytest.mark.slow
def test_queued_job_never_starts(make_stack):
    stack = make_stack(WORKER_CONCURRENCY="1", DOWNLOAD_DELAY_MIN_MS="2500", DOWNLOAD_DELAY_MAX_MS="2500")
    with stack.client() as client:
        blocker = initiate(client, [70000])
        waiting = initiate(client, [70007])
        wait_for(client, blocker, {"processing"})
        assert client.get(f"/v1/download/status/{waiting}").json()["status"] == "queued"
        response = client.post(f"/v1/download/{waiting}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        assert wait_for(client, blocker)["status"] == "completed"
        time.sleep(0.5)  # the worker is free now: a queued job would have started by this time
        body = client.get(f"/v1/download/status/{waiting}").json()
        assert body["status"] == "cancelled" and body["startedAt"] is None
        assert client.get(f"/v1/download/{waiting}/file").status_code == 409


def test_cancelling_a_finished_or_unknown_job(stack):
    with stack.client() as client:
        job_id = initiate(client, [70000])
        wait_for(client, job_id)
        assert client.delete(f"/v1/download/{job_id}").status_code == 409
        assert client.delete("/v1/download/00000000-0000-4000-8000-000000000000").status_code == 404


def test_a_cancel_racing_the_end_of_an_execution_is_not_a_500(redis_factory):
    """The execution ends between the cancel listing it and stopping it: its record is gone
    while the registry still names it (a 500 once, 2 in 300 immediate cancels)."""
    conn = redis.Redis.from_url(redis_factory().url)
    rt = runtime_on(conn)
    job_id = create_job(rt)
    execution = plant_execution(conn, job_id, 60, "a-worker")
    Job.fetch(job_id, connection=conn).set_status(JobStatus.STARTED)
    conn.delete(execution.key)  # ended, its registry entry not yet removed
    cancel.request(rt, job_id)
    assert conn.hget(keys.job(job_id), "status") == b"cancelled"
