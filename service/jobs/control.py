"""Client-driven changes to a job: cancellation.

The state flips to `cancelled` first, under the same WATCH/MULTI guard the worker uses, so a
worker finishing at that moment cannot overwrite it. Then RQ is told: a queued job is removed
from its queue (it never starts), a running one gets RQ's stop-execution command, which our worker
turns into the download's cancel event (it stops within one wait, well under a second).
"""

from __future__ import annotations

import contextlib

import redis
from rq.command import send_stop_execution_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from service.jobs import state
from service.jobs.tasks import JobGone, finish
from service.settings import Settings
from service.telemetry import metrics


class AlreadyFinished(Exception):
    """The job reached a terminal state before the cancel: 409 for the client."""


def cancel(conn: redis.Redis, settings: Settings, job_id: str) -> None:
    """Cancel `job_id`; raises AlreadyFinished when there is nothing left to cancel."""
    try:
        finish(conn, settings, job_id, status=state.CANCELLED, error=None)
    except JobGone:
        raise AlreadyFinished(job_id) from None
    metrics.JOBS_CANCELLED.inc()
    try:
        rq_job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return
    metrics.job_finished(rq_job.origin, state.CANCELLED, rq_job.enqueued_at)
    if rq_job.get_status() == JobStatus.STARTED:
        # RQ's stop-execution command reaches the worker running each execution; our worker
        # sets the download's cancel event. InvalidJobOperation: it ended meanwhile.
        for execution in rq_job.get_executions():
            with contextlib.suppress(InvalidJobOperation):
                send_stop_execution_command(conn, job_id, execution.id)
    else:
        rq_job.cancel()  # off the queue (and the retry schedule): it never starts
