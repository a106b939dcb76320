"""Deploys: a worker told to stop (SIGTERM, as an orchestrator does) takes no new job, lets its
downloads finish for WORKER_DRAIN_S, hands back what still runs without spending a retry, and
exits 0; the next worker picks up where it left off."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import redis
from rq.job import Job

from service import keys
from service.harness import Proc, wait_until
from tests.jobs import initiate, wait_for


def _exit_code_within(worker: Proc, seconds: float) -> int:
    try:
        return worker.process.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{worker.name} still alive {seconds} s after the stop signal") from None


def _done(client, job_id: str) -> int:
    return client.get(f"/v1/download/status/{job_id}").json()["progress"]["done"]


def _events(conn: redis.Redis, job_id: str) -> list[str]:
    return [fields[b"event"].decode() for _, fields in conn.xrange(keys.events(job_id))]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_rolling_deploy_loses_nothing_and_the_old_worker_takes_no_new_job(make_stack, sig):
    drain_s = 10
    stack = make_stack(
        DOWNLOAD_DELAY_MIN_MS="3000", DOWNLOAD_DELAY_MAX_MS="3000", WORKER_DRAIN_S=str(drain_s)
    )
    old = stack.workers[0]
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    with stack.client() as client:
        running = [initiate(client, [70000 + 7 * i]) for i in range(3)]
        for job_id in running:
            wait_for(client, job_id, {"processing"}, timeout_s=15)
        old_name = Job.fetch(running[0], connection=conn).worker_name
        stopped_at = time.monotonic()
        old.process.send_signal(sig)
        time.sleep(0.5)  # the old worker had every chance to take what comes next
        waiting = [initiate(client, [70021 + 7 * i]) for i in range(3)]
        time.sleep(1.0)
        assert {client.get(f"/v1/download/status/{j}").json()["status"] for j in waiting} == {"queued"}
        stack.add_worker()  # the new worker of the rolling deploy
        assert _exit_code_within(old, drain_s + 5 - (time.monotonic() - stopped_at)) == 0, old.output()[
            -2000:
        ]
        for job_id in running:
            done = wait_for(client, job_id, timeout_s=5)
            assert done["status"] == "completed" and done["attempt"] == 1, "finished within the drain"
        for job_id in waiting:
            assert wait_for(client, job_id, timeout_s=30)["status"] == "completed"
            assert Job.fetch(job_id, connection=conn).worker_name != old_name, "taken after SIGTERM"


@pytest.mark.slow
def test_what_outlasts_the_drain_goes_back_to_its_queue_with_its_progress_and_no_retry_spent(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="9000", DOWNLOAD_DELAY_MAX_MS="9000", WORKER_DRAIN_S="1")
    old = stack.workers[0]
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    with stack.client() as client:
        job_id = initiate(client, [70000, 70007, 70014])  # 3 s per file
        wait_for(client, job_id, {"processing"}, timeout_s=15)
        wait_until(lambda: _done(client, job_id) >= 1, 15, "the first file done")
        retries_left = Job.fetch(job_id, connection=conn).retries_left
        old.process.send_signal(signal.SIGTERM)
        assert _exit_code_within(old, 1 + 5) == 0, old.output()[-2000:]
        handed = client.get(f"/v1/download/status/{job_id}").json()
        assert handed["status"] == "queued" and handed["progress"]["done"] >= 1, handed
        assert _events(conn, job_id)[-1] == "queued", "SSE followers are told it was requeued"
        assert conn.lpos(keys.rq_queue(keys.SMALL_QUEUE), job_id) == 0, "at the front of its queue"
        assert Job.fetch(job_id, connection=conn).retries_left == retries_left, "no retry spent"
        stack.add_worker()
        done = wait_for(client, job_id, timeout_s=30)
        assert done["status"] == "completed" and done["attempt"] == 1, done
        assert [f["file_id"] for f in done["files"]] == [70000, 70007, 70014], "resumed, nothing twice"


@pytest.mark.slow
def test_a_second_stop_signal_hands_back_at_once(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="20000", DOWNLOAD_DELAY_MAX_MS="20000", WORKER_DRAIN_S="120")
    old = stack.workers[0]
    with stack.client() as client:
        job_id = initiate(client, [70000])
        wait_for(client, job_id, {"processing"}, timeout_s=15)
        old.process.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # past RQ's one second in which a repeated signal counts as the same
        assert old.process.poll() is None, "still draining"
        old.process.send_signal(signal.SIGTERM)
        assert _exit_code_within(old, 5) == 0, old.output()[-2000:]
        assert client.get(f"/v1/download/status/{job_id}").json()["status"] == "queued"
