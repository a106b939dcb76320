"""The download job: what a worker does between `queued` and a terminal state.

For each file: wait its share of the simulated delay (cancellable), HEAD the source object,
record progress. Then publish the result: the object itself for one file, a zip streamed to
S3 for several. A retried run resumes after the files already recorded.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import redis
import structlog
from rq import get_current_job
from rq.job import Job

from service.jobs import cancellation, context, exclusive, state
from service.settings import Settings
from service.storage.s3 import bundle_key, source_key
from service.telemetry import metrics, tracing
from service.telemetry.logging import get_logger
from service.webhooks import delivery

MAX_GUARD_TRIES = 20
log = get_logger("service.jobs")


class JobGone(Exception):
    """The job's state expired or was cancelled/finished elsewhere: stop quietly."""


def transition(conn: redis.Redis, job_id: str, write: Callable[[Any], None]) -> None:
    """Apply `write` to the job only while it is not terminal (optimistic WATCH/MULTI).

    This is what keeps a cancel from being overwritten by a worker finishing at the same
    moment, and a late progress event from following a terminal one.
    """
    key = state.job_key(job_id)
    for _ in range(MAX_GUARD_TRIES):
        with conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                status = pipe.hget(key, "status")
                if status is None or status.decode() in state.TERMINAL:
                    raise JobGone(job_id)
                pipe.multi()
                write(pipe)
                pipe.execute()
                return
            except redis.WatchError:
                continue
    raise RuntimeError(f"job {job_id}: state kept changing under the worker")


def finish(
    conn: redis.Redis,
    settings: Settings,
    job_id: str,
    *,
    last_progress: Callable[[Any], None] | None = None,
    **fields: Any,
) -> None:
    """Move the job to its terminal state (fields["status"]): the one door every ending uses.

    Worker success or failure, a cancel, the reaper: all come through here, so whatever must
    happen exactly once per ending happens in the same MULTI as the state change.
    `last_progress` writes the last file's progress in that MULTI too, when nothing happens
    between the two (no bundle to write): SSE subscribers then get both events in one write.
    """
    assert fields["status"] in state.TERMINAL
    fields.setdefault("finished_at", state.now_iso())
    announce = settings.webhook_secret is not None and conn.hexists(state.job_key(job_id), "callback_url")

    def write(pipe: Any) -> None:
        if last_progress is not None:
            last_progress(pipe)
        state.queue_update(pipe, job_id, settings.job_ttl_s, fields["status"], **fields)
        if announce:
            delivery.queue(pipe, conn, settings, job_id)

    transition(conn, job_id, write)


def pick_delay_s(settings: Settings) -> float:
    """The whole job's simulated processing time, drawn as the original service drew it."""
    if not settings.download_delay_enabled:
        return 0.0
    return random.randint(settings.download_delay_min_ms, settings.download_delay_max_ms) / 1000


def retry_backoff_s(settings: Settings, attempt: int) -> float:
    """Exponential backoff with ±25 % jitter before attempt 2, 3, ...

    RQ requeues a failed (or abandoned) job at once; the wait happens here, in the job's
    thread and cancellable, so retries never depend on RQ's scheduler process being alive.
    """
    if attempt <= 1:
        return 0.0
    return settings.job_retry_base_s * 2 ** (attempt - 2) * random.uniform(0.75, 1.25)


def process_download(job_id: str) -> dict[str, Any] | None:
    """RQ entry point (the API enqueues it by this name): the job, observed.

    Log lines carry job_id; the job's span continues the trace of the initiate request; the
    attempt and (when the job ends here) its outcome and duration are counted.
    """
    ctx = context.current()
    job = state.load(ctx.redis, job_id)
    if job is None or job.finished:
        return None
    rq_job = get_current_job()
    # the per-job lock: a newer execution waits out an older one whose worker may be dead
    lease_s = 3 * ctx.settings.worker_heartbeat_s + 2
    if rq_job and not exclusive.wait_for_turn(ctx.redis, rq_job, lease_s, cancellation.event_for(job_id)):
        log.warning("duplicate_execution_stood_down", job_id=job_id)
        return None
    attempt = 1 + ctx.settings.job_max_retries - (rq_job.retries_left or 0) if rq_job else 1
    with (
        structlog.contextvars.bound_contextvars(job_id=job_id),
        tracing.job_span(job_id, job.traceparent, job.queue, attempt),
    ):
        metrics.job_started(job.queue, rq_job.enqueued_at if rq_job else None)
        log.info("job_started", queue=job.queue, attempt=attempt, files=job.total)
        result = _run(ctx, job, attempt)
        log.info(
            "job_stopped", status=result["status"] if result else "stopped", error=(result or {}).get("error")
        )
        if result is not None:
            metrics.job_finished(
                job.queue, result["status"], job.created_at, tracing.trace_id_of(job.traceparent)
            )
        return result


def _run(ctx: context.JobContext, job: state.JobRecord, attempt: int) -> dict[str, Any] | None:
    job_id = job.id
    conn, ttl = ctx.redis, ctx.settings.job_ttl_s
    cancelled = cancellation.event_for(job_id)
    if cancelled.wait(retry_backoff_s(ctx.settings, attempt)):  # status stays `retrying` meanwhile
        return None
    try:
        transition(
            conn,
            job_id,
            lambda p: state.queue_update(
                p,
                job_id,
                ttl,
                state.PROCESSING,
                status=state.PROCESSING,
                attempt=attempt,
                started_at=job.started_at or state.now_iso(),
                error=None,
            ),
        )
        remaining = job.file_ids[job.done :]
        per_file = pick_delay_s(ctx.settings) / max(len(job.file_ids), 1)
        results = list(job.files[: job.done])
        last_progress = None
        for file_id in remaining:
            if cancelled.wait(per_file):
                return None
            key = source_key(file_id)
            size = ctx.storage.size_of(key)
            result = {"file_id": file_id, "available": size is not None, "size": size}
            results.append(result)
            done = len(results)

            def progress(pipe: Any, r: dict[str, Any] = result, d: int = done) -> None:
                state.queue_file_done(pipe, job_id, ttl, r, d, job.total)

            if done < job.total:
                transition(conn, job_id, progress)
            else:
                last_progress = progress  # _publish writes it, with the result when it can
        return _publish(ctx, job_id, results, last_progress)
    except JobGone:
        return None


def _publish(
    ctx: context.JobContext,
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
            transition(ctx.redis, job_id, last_progress)
            last_progress = None
        key = bundle_key(job_id)
        members = [(f"{r['file_id']}.zip", source_key(r["file_id"])) for r in found]
        fields = {
            "status": state.COMPLETED,
            "result_key": key,
            "result_size": ctx.storage.write_zip(key, members),
        }
    fields["finished_at"] = state.now_iso()
    finish(ctx.redis, ctx.settings, job_id, last_progress=last_progress, **fields)
    return fields


def on_failure(job: Job, connection: redis.Redis, exc_type: type, exc: BaseException, tb: Any) -> None:
    """RQ failure callback: `retrying` while RQ will run the job again, else `failed`.

    RQ calls it before it decides, so `retries_left > 0` means a retry follows.
    """
    job_id = job.id
    settings = context.current().settings
    retrying = bool(job.retries_left and job.retries_left > 0)
    reason = f"{exc_type.__name__}: {exc}"[:500]
    with contextlib.suppress(JobGone):
        if retrying:
            metrics.JOB_RETRIES.labels(job.origin).inc()
            fields = {"status": state.RETRYING, "error": reason}
            transition(
                connection,
                job_id,
                lambda p: state.queue_update(p, job_id, settings.job_ttl_s, state.RETRYING, **fields),
            )
        else:
            finish(connection, settings, job_id, status=state.FAILED, error=reason)
            metrics.job_finished(job.origin, state.FAILED, job.created_at)
