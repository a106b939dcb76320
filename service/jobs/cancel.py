"""Cancellation: a client's request, and the signal that stops a running download at once.

`request` (DELETE /v1/download/{job_id}) makes the job `cancelled` first, through
lifecycle.finish, so a worker finishing at that moment cannot overwrite it. Then RQ is told: a
queued job is taken off its queue (it never starts); a running one gets RQ's stop-execution
command, which the worker running it turns into `signal(job_id)`.

The signal is a per-job event in the worker process (`Stop`): the download waits on it instead
of sleeping, so it stops within one wait, well under a second. A worker shutting down uses the
same signal to hand its unfinished downloads back (`hand_back_all`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from rq.command import send_stop_execution_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from service.jobs import lifecycle, state

if TYPE_CHECKING:
    from service.runtime import Runtime


class AlreadyFinished(Exception):
    """The job reached a terminal state before the cancel: 409 for the client."""


def request(rt: Runtime, job_id: str) -> None:
    """Cancel `job_id`; raises AlreadyFinished when there is nothing left to cancel."""
    try:
        lifecycle.finish(rt, job_id, status=state.CANCELLED, error=None)
    except lifecycle.JobGone:
        raise AlreadyFinished(job_id) from None
    try:
        rq_job = Job.fetch(job_id, connection=rt.redis)
    except NoSuchJobError:
        return
    if rq_job.get_status() == JobStatus.STARTED:
        # RQ's stop-execution command reaches the worker running each execution, which calls
        # `signal`. By id: an execution may end between the listing and the command (fetching
        # each first raised then, a 500); InvalidJobOperation: it ended meanwhile.
        for execution_id in rq_job.execution_registry.get_execution_ids():
            with contextlib.suppress(InvalidJobOperation):
                send_stop_execution_command(rt.redis, job_id, execution_id)
    else:
        rq_job.cancel()  # off the queue (and the retry schedule): it never starts


# -- in-process signals (worker side) ----------------------------------------------------------


class Stop(threading.Event):
    """Set when the running download must stop: a client's cancel, or `hand_back` (the worker is
    shutting down and the job goes back to its queue, see DownloadWorker.teardown)."""

    hand_back = False


_stops: dict[str, Stop] = {}
_lock = threading.Lock()


def track(job_id: str) -> Stop:
    """The worker starts running `job_id` here: create its signal."""
    with _lock:
        return _stops.setdefault(job_id, Stop())


def forget(job_id: str) -> None:
    with _lock:
        _stops.pop(job_id, None)


def signal(job_id: str) -> bool:
    """Stop the download running `job_id` in this process; False when none runs here."""
    with _lock:
        stop = _stops.get(job_id)
    if stop is None:
        return False
    stop.set()
    return True


def hand_back_all() -> int:
    """Stop every download running in this process so each goes back to its queue; how many."""
    with _lock:
        stops = list(_stops.values())
    for stop in stops:
        stop.hand_back = True
        stop.set()
    return len(stops)


def stop_for(job_id: str) -> Stop:
    """The job's signal, or a fresh one (never set) when the job runs outside a worker."""
    with _lock:
        return _stops.get(job_id) or Stop()
