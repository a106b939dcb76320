"""The download job: what a worker does with a job between `queued` and its end.

For each file: wait its share of the simulated delay (cancellable), HEAD the source object,
record progress. Then publish the result: the object itself for one file, a zip streamed to
S3 for several, and end the job through lifecycle.finish. A retried run resumes after the files
already recorded. `run` is the RQ job function (jobs/enqueue.py queues it by reference);
`on_failure` is RQ's failure callback for it.

Every S3 call and every write of the job's state rides out an outage of its dependency within
the attempt (jobs/outage.py, up to JOB_OUTAGE_ALLOWANCE_S): an outage spends no attempt.

A download stopped because its worker is shutting down (cancel.hand_back_all) goes back to the
front of its queue by returning RQ's `Retry`: RQ requeues it without touching the retries an
exception would spend, so the next worker runs the same attempt, resuming after its files.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import structlog
from rq import Retry, get_current_job
from rq.job import Job

from service import backoff, runtime
from service.jobs import cancel, lifecycle, lock, outage, state
from service.settings import Settings
from service.storage.s3 import bundle_key, source_key
from service.telemetry import metrics, tracing
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from service.runtime import Runtime

log = get_logger("service.jobs")
HAND_BACKS_MAX = 100  # a job handed back this often fails (RQ's Retry.max): no endless loop


def pick_delay_s(settings: Settings) -> float:
    """The whole job's simulated processing time, drawn as the original service drew it."""
    if not settings.download_delay_enabled:
        return 0.0
    return random.randint(settings.download_delay_min_ms, settings.download_delay_max_ms) / 1000


def retry_backoff_s(settings: Settings, attempt: int) -> float:
    """The wait before attempt 2, 3, ... (backoff.delay_s from JOB_RETRY_BASE_S).

    RQ requeues a failed (or abandoned) job at once; the wait happens here, in the job's
    thread and cancellable, so retries never depend on RQ's scheduler process being alive.
    """
    return 0.0 if attempt <= 1 else backoff.delay_s(settings.job_retry_base_s, attempt - 2)


def run(job_id: str) -> dict[str, Any] | Retry | None:
    """RQ entry point: the job, observed.

    Log lines carry the job (as its digest, telemetry.logging.job_ref); the job's span continues
    the trace of the initiate request; the attempt is counted with its queue wait
    (lifecycle.finish counts the ending).
    """
    rt = runtime.current()
    job = state.load(rt.redis, job_id)
    if job is None or job.finished:
        return None
    rq_job = get_current_job()
    stop = cancel.stop_for(job_id)
    # the per-job lock: a newer execution waits out an older one whose worker may be dead
    if rq_job and not lock.wait_for_turn(rt.redis, rq_job, rt.settings.worker_heartbeat_s, stop):
        if stop.hand_back:
            return _stopped(rt, job_id, stop)
        log.warning("duplicate_execution_stood_down", job_id=job_id)
        return None
    attempt = 1 + rt.settings.job_max_retries - (rq_job.retries_left or 0) if rq_job else 1
    with (
        structlog.contextvars.bound_contextvars(job_id=job_id),
        tracing.job_span(job_id, job.traceparent, job.queue, attempt),
    ):
        metrics.job_started(job.queue, rq_job.enqueued_at if rq_job else None)
        log.info("job_started", queue=job.queue, attempt=attempt, files=job.total)
        result = _run(rt, job, attempt, stop)
        outcome = result["status"] if isinstance(result, dict) else "handed_back" if result else "stopped"
        log.info(
            "job_stopped", status=outcome, error=result.get("error") if isinstance(result, dict) else None
        )
        return result


def _run(rt: Runtime, job: state.JobRecord, attempt: int, stop: cancel.Stop) -> dict[str, Any] | Retry | None:
    job_id, ttl = job.id, rt.settings.job_ttl_s
    if stop.wait(retry_backoff_s(rt.settings, attempt)):  # status stays `retrying` meanwhile
        return _stopped(rt, job_id, stop)
    allowance = outage.Allowance(rt.settings.outage_allowance_s, rt.storage, stop)
    try:
        allowance.redis(lifecycle.start, rt, job, attempt)
        per_file = pick_delay_s(rt.settings) / max(len(job.file_ids), 1)
        results = list(job.files[: job.done])
        last_progress = None
        for file_id in job.file_ids[job.done :]:
            if stop.wait(per_file):
                return _stopped(rt, job_id, stop)
            size = allowance.s3(rt.storage.size_of, source_key(file_id))
            result = {"file_id": file_id, "available": size is not None, "size": size}
            results.append(result)
            done = len(results)

            def progress(pipe: Any, r: dict[str, Any] = result, d: int = done) -> None:
                state.queue_file_done(pipe, job_id, ttl, r, d, job.total)

            if done < job.total:
                allowance.redis(lifecycle.advance, rt.redis, job_id, progress)
            else:
                last_progress = progress  # _publish writes it, with the result when it can
        return _publish(rt, allowance, job_id, results, last_progress)
    except outage.Stopped:
        return _stopped(rt, job_id, stop)
    except lifecycle.JobGone:
        return None


def _stopped(rt: Runtime, job_id: str, stop: cancel.Stop) -> Retry | None:
    """What an execution its Stop ended returns. A cancel: None (the canceller wrote the ending).
    A worker shutting down (`stop.hand_back`): back to the front of its queue, its progress kept,
    no retry spent (None if it ended meanwhile)."""
    if not stop.hand_back:
        return None
    try:
        lifecycle.hand_back(rt, job_id)
    except lifecycle.JobGone:
        return None
    return Retry(max=HAND_BACKS_MAX, enqueue_at_front=True)


def _publish(
    rt: Runtime,
    allowance: outage.Allowance,
    job_id: str,
    results: list[dict[str, Any]],
    last_progress: Callable[[Any], None] | None,
) -> dict[str, Any]:
    """Write the result and end the job. The last file's progress goes in the same MULTI as the
    end (one write to SSE subscribers), unless a zip is written in between: then it goes first,
    so clients see every file done while the zip is written."""
    found = [r for r in results if r["available"]]
    if not found:
        error = f"none of the {len(results)} requested files exist"
        fields: dict[str, Any] = {"status": state.FAILED, "error": error}
    elif len(found) == 1:
        fields = {"status": state.COMPLETED, "result_key": source_key(found[0]["file_id"])}
        fields["result_size"] = found[0]["size"]
    else:
        if last_progress is not None:
            allowance.redis(lifecycle.advance, rt.redis, job_id, last_progress)
            last_progress = None
        key = bundle_key(job_id)
        members = [(f"{r['file_id']}.zip", source_key(r["file_id"])) for r in found]
        fields = {
            "status": state.COMPLETED,
            "result_key": key,
            "result_size": allowance.s3(rt.storage.write_zip, key, members),
        }
    fields["finished_at"] = state.now_iso()
    allowance.redis(lifecycle.finish, rt, job_id, also=last_progress, **fields)
    return fields


def on_failure(job: Job, connection: redis.Redis, exc_type: type, exc: BaseException, tb: Any) -> None:
    """RQ failure callback: `retrying` while RQ will run the job again, else `failed`.

    RQ calls it before it decides, so `retries_left > 0` means a retry follows.
    """
    rt = runtime.current()
    reason = f"{exc_type.__name__}: {exc}"[:500]
    with contextlib.suppress(lifecycle.JobGone):
        if job.retries_left and job.retries_left > 0:
            lifecycle.retrying(rt, job.id, job.origin, reason)
        else:
            lifecycle.finish(rt, job.id, status=state.FAILED, error=reason)
