"""Every change of a job's state after it was queued, and what must happen exactly once with it.

    queued -> processing -> (retrying -> processing)* -> completed | failed | cancelled
    (processing | retrying) -> queued: handed back by a worker shutting down (`hand_back`)

The download (jobs/download.py), a cancel (jobs/cancel.py), RQ's failure callback, the reaper
(jobs/reaper.py) and webhook bookkeeping (webhooks/delivery.py) all change state through this
module. Each change is staged by jobs/state.py on a MULTI (the hash fields, the event on the
job's stream, the pub/sub announcement SSE followers wake on) and committed only while the job
is not terminal, under WATCH: a cancel cannot be overwritten by a worker finishing at that
moment, and no progress event can follow a terminal one.

`finish` is the one door to a terminal state. In the same MULTI it stages the webhook delivery
(`Runtime.announce`) when the job has a callback; after it commits it counts the job finished
and observes its duration on one clock: from the job's own `created_at` (accepted) to now,
whichever process ended it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from service import keys
from service.jobs import state
from service.telemetry import metrics, tracing

if TYPE_CHECKING:
    from service.runtime import Runtime

MAX_GUARD_TRIES = 20


class JobGone(Exception):
    """The job expired, or reached a terminal state elsewhere: whoever was changing it stops."""


def advance(conn: redis.Redis, job_id: str, write: Callable[[Any], None]) -> None:
    """Apply `write` (staging commands on a MULTI pipeline) while the job is not terminal."""
    _guarded(conn, job_id, lambda pipe, _read: write(pipe))


def start(rt: Runtime, job: state.JobRecord, attempt: int) -> None:
    """`processing`: attempt `attempt` runs (a retry keeps the first start time)."""
    started_at = job.started_at or state.now_iso()
    fields = {"status": state.PROCESSING, "attempt": attempt, "started_at": started_at, "error": None}
    advance(rt.redis, job.id, lambda p: state.queue_update(p, job.id, rt.settings.job_ttl_s, **fields))


def hand_back(rt: Runtime, job_id: str) -> None:
    """`queued` again: the worker running it is shutting down and RQ requeues it at the front
    (download.run returns RQ's Retry); its files done and its attempt number are kept, and its
    SSE followers see a `queued` event."""
    advance(
        rt.redis, job_id, lambda p: state.queue_update(p, job_id, rt.settings.job_ttl_s, status=state.QUEUED)
    )


def retrying(rt: Runtime, job_id: str, queue: str, error: str) -> None:
    """`retrying`: an attempt failed and RQ runs the job again (after download.retry_backoff_s)."""
    advance(rt.redis, job_id, lambda p: stage_retrying(p, rt, job_id, error))
    metrics.JOB_RETRIES.labels(queue).inc()


def stage_retrying(pipe: Any, rt: Runtime, job_id: str, error: str) -> None:
    """Stage `retrying` on a MULTI the caller guards itself (the reaper's requeue, which also
    watches RQ's keys)."""
    state.queue_update(pipe, job_id, rt.settings.job_ttl_s, status=state.RETRYING, error=error)


def finish(rt: Runtime, job_id: str, *, also: Callable[[Any], None] | None = None, **fields: Any) -> None:
    """Move the job to its terminal state `fields["status"]`; raises JobGone when it already is.

    `also` stages more writes in the same MULTI (the download's last progress, so SSE
    subscribers get both events in one write).
    """
    outcome = fields["status"]
    if outcome not in state.TERMINAL:
        raise ValueError(f"not a terminal state: {outcome}")
    fields.setdefault("finished_at", state.now_iso())

    def write(pipe: Any, job: dict[str, str | None]) -> None:
        if also is not None:
            also(pipe)
        state.queue_update(pipe, job_id, rt.settings.job_ttl_s, **fields)
        if job["callback_url"] and rt.announce is not None:
            rt.announce(pipe, rt, job_id)

    job = _guarded(rt.redis, job_id, write, ("queue", "created_at", "traceparent", "callback_url"))
    if outcome == state.CANCELLED:
        metrics.JOBS_CANCELLED.inc()
    metrics.job_finished(
        job["queue"] or "", outcome, job["created_at"], tracing.trace_id_of(job["traceparent"])
    )


# -- webhook bookkeeping: the `webhook` field, never the status ---------------------------------


def stage_webhook(pipe: Any, job_id: str, record: dict[str, Any]) -> None:
    """Stage the delivery record shown in the job's status (`webhook`), on the caller's MULTI."""
    pipe.hset(keys.job(job_id), "webhook", json.dumps(record))


# Write only while the job's state exists: a late delivery must not resurrect an expired job.
_RECORD_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'webhook', ARGV[1])
  return 1
end
return 0
"""


def record_webhook(conn: redis.Redis, job_id: str, record: dict[str, Any]) -> None:
    """Record a delivery's progress; the job's status is terminal already and stays as it is."""
    conn.eval(_RECORD_IF_EXISTS, 1, keys.job(job_id), json.dumps(record))


# -- the guard ---------------------------------------------------------------------------------


def _guarded(
    conn: redis.Redis,
    job_id: str,
    write: Callable[[Any, dict[str, str | None]], None],
    read: tuple[str, ...] = (),
) -> dict[str, str | None]:
    """WATCH the job, check it is not terminal, read its `read` fields, MULTI `write(pipe, read
    fields)`, EXEC; again when the job changed meanwhile. Returns the fields read."""
    key = keys.job(job_id)
    for _ in range(MAX_GUARD_TRIES):
        with conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                status, *values = pipe.hmget(key, "status", *read)
                if status is None or state.text(status) in state.TERMINAL:
                    raise JobGone(job_id)
                got = {
                    name: None if v is None else state.text(v) for name, v in zip(read, values, strict=True)
                }
                pipe.multi()
                write(pipe, got)
                pipe.execute()
                return got
            except redis.WatchError:
                continue
    raise RuntimeError(f"job {job_id}: its state kept changing under the writer")
