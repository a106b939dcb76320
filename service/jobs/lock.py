"""One job, one running execution: the per-job lock, leased by RQ's own execution heartbeats.

The lease is the rule every part that judges a worker alive or dead uses (the worker's
heartbeat TTL, the wait below, the reaper's margins): `lease_s`.

Two executions of one job can overlap: RQ's abandoned-job handling or our reaper requeues a
job whose worker only looked dead (a long pause, a partition), or a worker is killed and its
job retried while its execution record has not expired yet. Each execution RQ starts has a
hash `rq:execution:{job}:{execution}` whose TTL our worker's heartbeat thread renews (three
beats): it exists exactly while its worker is alive. So the lock is "the oldest live
execution of the job". A newer execution waits until every older one is gone (a dead
worker's record expires within three beats) and runs; if an older one is still alive after
that, it is really running the job, and the newer one stands down.
"""

from __future__ import annotations

import threading
import time

import redis
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job

POLL_S = 0.5
LEASE_BEATS = 3  # missed heartbeats before an execution counts as abandoned


def lease_s(heartbeat_s: float) -> float:
    """How long an execution's record outlives its worker's last heartbeat (WORKER_HEARTBEAT_S)."""
    return LEASE_BEATS * heartbeat_s


def wait_for_turn(conn: redis.Redis, job: Job, heartbeat_s: float, stop: threading.Event) -> bool:
    """True once this execution holds the job (no older live execution); False to stand down.

    Waits one lease (and a little): long enough for a dead worker's execution to expire.
    """
    deadline = time.monotonic() + lease_s(heartbeat_s) + 2
    while _older_live_executions(conn, job):
        if time.monotonic() >= deadline or stop.wait(POLL_S):
            return False
    return True


def _older_live_executions(conn: redis.Redis, job: Job) -> list[str]:
    """Ids of live executions of `job` that started before this worker's own execution."""
    ids = [raw.decode() for raw in conn.zrange(ExecutionRegistry(job.id, conn).key, 0, -1)]
    with conn.pipeline(transaction=False) as pipe:
        for execution_id in ids:
            pipe.hmget(Execution(execution_id, job.id, conn).key, "created_at", "worker_name")
        records = pipe.execute()
    live = {
        (float(created), execution_id): (worker or b"").decode()
        for execution_id, (created, worker) in zip(ids, records, strict=True)
        if created is not None  # the hash expired: its worker stopped heartbeating
    }
    mine = [order for order, worker in live.items() if worker == job.worker_name]
    if not mine:
        return []  # not started by a worker (a direct call in a test): nothing to compare with
    me = max(mine)  # this worker's newest execution of the job is the one running now
    return [execution_id for (created, execution_id) in live if (created, execution_id) < me]
