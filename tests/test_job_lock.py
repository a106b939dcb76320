"""The per-job lock: two executions of one job never both run it (service/jobs/lock.py).

A "ghost" execution, as a worker that RQ or the reaper believed dead would leave, is planted
before a real worker picks the job up. While the ghost keeps heartbeating, the real worker
stands down; once the ghost's record expires (its worker really died), the job runs.
"""

from __future__ import annotations

import threading

import pytest
import redis
from rq.job import Job

from service.harness import wait_until
from service.telemetry.logging import job_ref
from tests.jobs import initiate, plant_execution, wait_for


@pytest.mark.slow
def test_a_live_older_execution_keeps_the_job_and_a_dead_one_hands_it_over(make_stack):
    stack = make_stack(workers=0, WORKER_HEARTBEAT_S="1")  # lease: 3 beats + 2 s = 5 s
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    with stack.client() as client:
        held, orphaned = initiate(client, [70000]), initiate(client, [70007])
        alive = plant_execution(conn, held, 3, "ghost-worker")
        plant_execution(conn, orphaned, 2, "ghost-worker")  # never renewed: gone in 2 s, as after kill -9
        beating = threading.Event()

        def heartbeat() -> None:  # what a live worker's heartbeat thread does for its execution
            registry = Job.fetch(held, connection=conn).started_job_registry
            while not beating.wait(0.5):
                with conn.pipeline() as pipe:
                    alive.heartbeat(registry, 3, pipe)
                    pipe.execute()

        threading.Thread(target=heartbeat, daemon=True).start()
        try:
            worker = stack.add_worker()
            assert wait_for(client, orphaned)["status"] == "completed"
            wait_until(
                lambda: "duplicate_execution_stood_down" in worker.output(),
                20,
                "the new worker to stand down",
                interval_s=0.1,
                retry_on=(),
            )
            body = client.get(f"/v1/download/status/{held}").json()
            assert body["status"] == "queued" and body["progress"]["done"] == 0, body
            assert body["startedAt"] is None, "the standing-down execution touched the job"
        finally:
            beating.set()
    stood_down = [line for line in worker.output().splitlines() if "duplicate_execution_stood_down" in line]
    assert len(stood_down) == 1 and job_ref(held) in stood_down[0], stood_down
